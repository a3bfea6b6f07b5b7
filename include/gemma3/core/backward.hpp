// The backward pass on the CPU: forward.hpp read in reverse (docs/model.md §9).
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

#include <gemma3/core/activations.hpp>
#include <gemma3/core/forward.hpp>
#include <gemma3/ops/cross_entropy.hpp>

#include <cmath>
#include <span>
#include <type_traits>

namespace gemma3 {

// Scratch for one block's backward pass, reused across blocks.
template <ModelConfig C, class T>
struct BackwardScratch {
    using D = Dims<C>;
    Buffer<T> d_x, d_x_next;  // [N, D] gradient w.r.t. the residual stream (ping-pong)
    Buffer<T> d_mlp_out, d_mlp_in, d_attn_proj, d_attn_in;  // [N, D]
    Buffer<T> d_act;                                        // [N, F]
    Buffer<T> d_gate_up;                                    // [N, 2F]
    Buffer<T> d_attn, d_q;                                  // [N, H*Dh]
    Buffer<T> d_k;                                          // [N, Hk*Dh]
    Buffer<T> d_qkv;                                        // [N, (H + 2 Hk) Dh]
    Buffer<T> logits_chunk;

    void resize(Index n) {
        const auto nn = static_cast<std::size_t>(n);
        for (auto* b : {&d_x, &d_x_next, &d_mlp_out, &d_mlp_in, &d_attn_proj, &d_attn_in}) b->resize(nn * D::model);
        d_act.resize(nn * D::ffn);
        d_gate_up.resize(nn * 2 * D::ffn);
        for (auto* b : {&d_attn, &d_q}) b->resize(nn * D::q);
        d_k.resize(nn * D::kv);
        d_qkv.resize(nn * D::qkv);
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
    const auto down_backward = [&](const auto& act) {
        linear_backward<T>(act, const_view(w.down_proj, D::model, D::ffn), cview_nd(s.d_mlp_out.data()),
                           matrix_view(s.d_act.data(), n, D::ffn), matrix_view(g.down_proj, D::model, D::ffn));
    };
    if constexpr (std::is_same_v<T, float>) {
        if (acts.bf16_act) {  // mixed precision kept act in bf16 (Activations::bf16_act)
            down_backward(const_view(a.act_bf16.data(), n, D::ffn));
        } else {
            down_backward(const_view(a.act.data(), n, D::ffn));
        }
    } else {
        down_backward(const_view(a.act.data(), n, D::ffn));
    }
    const auto gate_up = const_view(a.gate_up.data(), n, 2 * D::ffn);
    const auto d_gate_up = matrix_view(s.d_gate_up.data(), n, 2 * D::ffn);
    geglu_backward<T>(column_block(gate_up, 0, D::ffn), column_block(gate_up, D::ffn, D::ffn),
                      const_view(s.d_act.data(), n, D::ffn), column_block(d_gate_up, 0, D::ffn),
                      column_block(d_gate_up, D::ffn, D::ffn));
    linear_backward<T>(cview_nd(a.mlp_in.data()), const_view(w.gate_proj, 2 * D::ffn, D::model), as_const(d_gate_up),
                       view_nd(s.d_mlp_in.data()), matrix_view(g.gate_proj, 2 * D::ffn, D::model));
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
    // d v goes straight into its columns of d_qkv; d q and d k first undo RoPE and the q/k norms.
    const auto qkv = const_view(a.qkv.data(), n, D::qkv);
    const auto d_qkv = matrix_view(s.d_qkv.data(), n, D::qkv);
    const auto d_q = matrix_view(s.d_q.data(), n, D::q), d_k = matrix_view(s.d_k.data(), n, D::kv);
    flash_attention_backward<T>(const_view(a.q_rot.data(), n, D::q), const_view(a.k_rot.data(), n, D::kv),
                                column_block(qkv, D::q + D::kv, D::kv), const_view(a.attn.data(), n, D::q),
                                a.lse.data(), const_view(s.d_attn.data(), n, D::q),
                                attention_shape<C, T>(layer, acts.batch, acts.seq), d_q, d_k,
                                column_block(d_qkv, D::q + D::kv, D::kv));
    const auto& table = rope.for_kind(D::kind(layer));
    rope_backward<T>(d_q, D::head, positions, table);
    rope_backward<T>(d_k, D::head, positions, table);
    if constexpr (C::qk_norm) {
        for (Index h = 0; h < D::heads; ++h) {
            rmsnorm_backward<T>(column_block(qkv, h * D::head, D::head), w.q_norm, a.q_rstd.data() + h * n,
                                column_block(as_const(d_q), h * D::head, D::head),
                                column_block(d_qkv, h * D::head, D::head), g.q_norm);
        }
        for (Index h = 0; h < D::kv_heads; ++h) {
            rmsnorm_backward<T>(column_block(qkv, D::q + h * D::head, D::head), w.k_norm, a.k_rstd.data() + h * n,
                                column_block(as_const(d_k), h * D::head, D::head),
                                column_block(d_qkv, D::q + h * D::head, D::head), g.k_norm);
        }
    } else {
        column_block(d_qkv, 0, D::q) = d_q;
        column_block(d_qkv, D::q, D::kv) = d_k;
    }
    linear_backward<T>(cview_nd(a.attn_in.data()), const_view(w.q_proj, D::qkv, D::model), as_const(d_qkv),
                       view_nd(s.d_attn_in.data()), matrix_view(g.q_proj, D::qkv, D::model));
    // d x_in = d mid + input_norm'(d attn_in)
    rmsnorm_backward<T>(cview_nd(a.input.data()), w.input_norm, a.input_rstd.data(), cview_nd(s.d_attn_in.data()),
                        view_nd(s.d_attn_proj.data()), g.input_norm);
    view_nd(d_in) += cview_nd(s.d_attn_proj.data());
}

// Head, loss and the whole backward pass, after forward_to_final_norm over the same activations
// (kept with keep_lse). Returns the summed loss over the N positions; gradients of
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
