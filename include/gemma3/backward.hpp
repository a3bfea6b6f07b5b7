// The backward pass on the CPU: forward.hpp read in reverse (spec §9).
//
//   head + loss  -> d final_out           (classifier_forward_backward, chunked)
//   final norm   -> d x_L
//   each block, last to first:
//     x_out = mid + post_ff_norm(mlp_out):   d mid = g + pre_ff_norm'(d mlp_in), d mlp_out = post_ff_norm'(g)
//     mid = x_in + post_attn_norm(attn_proj): d x_in = d mid + input_norm'(d attn_in)
//     q/k: norm, then RoPE -> RoPE backward (rotate by -angle), then the norm's backward
//   embedding    -> scatter-add, times sqrt(D)
// Weight gradients accumulate (+=) into `grads`, so micro-batches of one optimizer step add up.
#pragma once

#include "activations.hpp"
#include "forward.hpp"
#include "ops/cross_entropy.hpp"

#include <cmath>
#include <span>

namespace gemma3 {

// Scratch for one block's backward pass, reused across blocks.
template <ModelConfig C, class T>
struct BackwardScratch {
    using D = Dims<C>;
    Buffer<T> d_x, d_x_next;  // [N, D] gradient w.r.t. the residual stream (ping-pong)
    Buffer<T> d_mlp_out, d_mlp_in, d_attn_proj, d_attn_in;  // [N, D]
    Buffer<T> d_act, d_gate, d_up;                          // [N, F]
    Buffer<T> d_attn, d_q, d_q_pre;                         // [N, H*Dh]
    Buffer<T> d_k, d_v, d_k_pre;                            // [N, Hk*Dh]
    Buffer<T> logits_chunk;

    void resize(Index n) {
        const auto nn = static_cast<std::size_t>(n);
        for (auto* b : {&d_x, &d_x_next, &d_mlp_out, &d_mlp_in, &d_attn_proj, &d_attn_in}) b->resize(nn * D::model);
        for (auto* b : {&d_act, &d_gate, &d_up}) b->resize(nn * D::ffn);
        for (auto* b : {&d_attn, &d_q, &d_q_pre}) b->resize(nn * D::q);
        for (auto* b : {&d_k, &d_v, &d_k_pre}) b->resize(nn * D::kv);
    }
};

// d_out: gradient w.r.t. the block's output; d_in (overwritten): w.r.t. its input. d_out and d_in
// must be different buffers.
template <ModelConfig C, class T>
void block_backward(int layer, const BlockWeights<const T>& w, const BlockWeights<T>& g, const RopeTables<T>& rope,
                    const Activations<C, T>& acts, const BlockActivations<T>& a, const T* d_out, T* d_in,
                    BackwardScratch<C, T>& s) {
    using D = Dims<C>;
    const Index n = acts.tokens_count();
    const auto positions = std::span<const std::int32_t>(acts.positions);
    const auto view_nd = [n](T* p) { return matrix_view(p, n, D::model); };
    const auto cview_nd = [n](const T* p) { return const_view(p, n, D::model); };

    // x_out = mid + post_feedforward_norm(mlp_out)
    rmsnorm_backward<T>(cview_nd(a.mlp_out.data()), w.post_feedforward_norm, a.mlp_out_rstd.data(), cview_nd(d_out),
                        view_nd(s.d_mlp_out.data()), g.post_feedforward_norm);
    linear_backward<T>(const_view(a.act.data(), n, D::ffn), const_view(w.down_proj, D::model, D::ffn),
                       cview_nd(s.d_mlp_out.data()), matrix_view(s.d_act.data(), n, D::ffn),
                       matrix_view(g.down_proj, D::model, D::ffn));
    geglu_backward<T>(const_view(a.gate.data(), n, D::ffn), const_view(a.up.data(), n, D::ffn),
                      const_view(s.d_act.data(), n, D::ffn), matrix_view(s.d_gate.data(), n, D::ffn),
                      matrix_view(s.d_up.data(), n, D::ffn));
    linear_backward<T>(cview_nd(a.mlp_in.data()), const_view(w.gate_proj, D::ffn, D::model),
                       const_view(s.d_gate.data(), n, D::ffn), view_nd(s.d_mlp_in.data()),
                       matrix_view(g.gate_proj, D::ffn, D::model));
    linear_backward<T>(cview_nd(a.mlp_in.data()), const_view(w.up_proj, D::ffn, D::model),
                       const_view(s.d_up.data(), n, D::ffn), view_nd(s.d_mlp_in.data()),
                       matrix_view(g.up_proj, D::ffn, D::model), /*accumulate_dx=*/true);
    // d mid = d_out (residual) + pre_feedforward_norm'(d mlp_in); computed in d_in.
    rmsnorm_backward<T>(cview_nd(a.mid.data()), w.pre_feedforward_norm, a.mid_rstd.data(), cview_nd(s.d_mlp_in.data()),
                        view_nd(d_in), g.pre_feedforward_norm);
    view_nd(d_in) += cview_nd(d_out);

    // mid = x_in + post_attention_norm(attn_proj); d_in holds d mid.
    rmsnorm_backward<T>(cview_nd(a.attn_proj.data()), w.post_attention_norm, a.attn_proj_rstd.data(), cview_nd(d_in),
                        view_nd(s.d_attn_proj.data()), g.post_attention_norm);
    linear_backward<T>(const_view(a.attn.data(), n, D::q), const_view(w.o_proj, D::model, D::q),
                       cview_nd(s.d_attn_proj.data()), matrix_view(s.d_attn.data(), n, D::q),
                       matrix_view(g.o_proj, D::model, D::q));
    attention_backward<T>(const_view(a.q_rot.data(), n, D::q), const_view(a.k_rot.data(), n, D::kv),
                          const_view(a.v.data(), n, D::kv), a.probs.data(), const_view(s.d_attn.data(), n, D::q),
                          attention_shape<C, T>(layer, acts.batch, acts.seq), matrix_view(s.d_q.data(), n, D::q),
                          matrix_view(s.d_k.data(), n, D::kv), matrix_view(s.d_v.data(), n, D::kv));
    const auto& table = rope.for_kind(D::kind(layer));
    rope_backward<T>(matrix_view(s.d_q.data(), n, D::q), D::head, positions, table);
    rope_backward<T>(matrix_view(s.d_k.data(), n, D::kv), D::head, positions, table);
    T* d_q_pre = s.d_q.data();
    T* d_k_pre = s.d_k.data();
    if constexpr (C::qk_norm) {
        rmsnorm_backward<T>(const_view(a.q.data(), n * D::heads, D::head), w.q_norm, a.q_rstd.data(),
                            const_view(s.d_q.data(), n * D::heads, D::head),
                            matrix_view(s.d_q_pre.data(), n * D::heads, D::head), g.q_norm);
        rmsnorm_backward<T>(const_view(a.k.data(), n * D::kv_heads, D::head), w.k_norm, a.k_rstd.data(),
                            const_view(s.d_k.data(), n * D::kv_heads, D::head),
                            matrix_view(s.d_k_pre.data(), n * D::kv_heads, D::head), g.k_norm);
        d_q_pre = s.d_q_pre.data();
        d_k_pre = s.d_k_pre.data();
    }
    const auto attn_in = cview_nd(a.attn_in.data());
    linear_backward<T>(attn_in, const_view(w.q_proj, D::q, D::model), const_view(d_q_pre, n, D::q),
                       view_nd(s.d_attn_in.data()), matrix_view(g.q_proj, D::q, D::model));
    linear_backward<T>(attn_in, const_view(w.k_proj, D::kv, D::model), const_view(d_k_pre, n, D::kv),
                       view_nd(s.d_attn_in.data()), matrix_view(g.k_proj, D::kv, D::model), true);
    linear_backward<T>(attn_in, const_view(w.v_proj, D::kv, D::model), const_view(s.d_v.data(), n, D::kv),
                       view_nd(s.d_attn_in.data()), matrix_view(g.v_proj, D::kv, D::model), true);
    // d x_in = d mid + input_norm'(d attn_in)
    rmsnorm_backward<T>(cview_nd(a.input.data()), w.input_norm, a.input_rstd.data(), cview_nd(s.d_attn_in.data()),
                        view_nd(s.d_attn_proj.data()), g.input_norm);
    view_nd(d_in) += cview_nd(s.d_attn_proj.data());
}

// Head, loss and the whole backward pass, after forward_to_final_norm over the same activations
// (kept with keep_probs). Returns the summed loss over the N positions; gradients of
// grad_scale * loss_sum accumulate into `grads`.
template <ModelConfig C, class T>
double backward(const Weights<C, const T>& w, const Weights<C, T>& grads, std::span<const std::int32_t> targets,
                T grad_scale, const RopeTables<T>& rope, const Activations<C, T>& acts, BackwardScratch<C, T>& s) {
    using D = Dims<C>;
    const Index n = acts.tokens_count();
    s.resize(n);
    const auto result = classifier_forward_backward<T>(
        const_view(acts.final_out.data(), n, D::model), const_view(w.lm_head, D::vocab, D::model), targets, grad_scale,
        s.d_mlp_in.data(), grads.lm_head, s.logits_chunk);
    rmsnorm_backward<T>(const_view(acts.final_in.data(), n, D::model), w.final_norm, acts.final_rstd.data(),
                        const_view(s.d_mlp_in.data(), n, D::model), matrix_view(s.d_x.data(), n, D::model),
                        grads.final_norm);
    for (int l = D::layers - 1; l >= 0; --l) {
        const auto li = static_cast<std::size_t>(l);
        block_backward<C, T>(l, w.blocks[li], grads.blocks[li], rope, acts, acts.blocks[li], s.d_x.data(),
                             s.d_x_next.data(), s);
        std::swap(s.d_x, s.d_x_next);
    }
    embedding_backward<T>(acts.tokens, static_cast<T>(std::sqrt(double(D::model))), const_view(s.d_x.data(), n, D::model),
                          matrix_view(grads.embed, D::vocab, D::model));
    return result.loss_sum;
}

// The summed loss over N positions without gradients (evaluation), after forward_to_final_norm.
template <ModelConfig C, class T>
double loss_only(const Weights<C, const T>& w, std::span<const std::int32_t> targets, const Activations<C, T>& acts,
                 Buffer<T>& logits_chunk) {
    using D = Dims<C>;
    const Index n = acts.tokens_count();
    return classifier_forward_backward<T>(const_view(acts.final_out.data(), n, D::model),
                                          const_view(w.lm_head, D::vocab, D::model), targets, T(0), nullptr, nullptr,
                                          logits_chunk)
        .loss_sum;
}

}  // namespace gemma3
