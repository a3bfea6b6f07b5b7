// The Gemma 3 forward pass on the CPU, top to bottom (docs/model.md §3).
//
//   x = embed(tokens) * sqrt(D)
//   for each block l:
//     a   = input_norm(x)
//     q, k, v = a Wq^T, a Wk^T, a Wv^T ; q, k = rope_l(qk_norm(q, k))
//     x   = x + post_attention_norm(attention_l(q, k, v) Wo^T)
//     m   = pre_feedforward_norm(x)
//     x   = x + post_feedforward_norm((gelu_tanh(m Wg^T) * m Wu^T) Wd^T)
//   h = final_norm(x) ; logits = h W_head^T
//
// Every intermediate lands in Activations, which the backward pass reads.
#pragma once

#include <gemma3/core/activations.hpp>
#include <gemma3/core/config.hpp>
#include <gemma3/ops/attention.hpp>
#include <gemma3/ops/embedding.hpp>
#include <gemma3/ops/geglu.hpp>
#include <gemma3/ops/linear.hpp>
#include <gemma3/ops/rmsnorm.hpp>
#include <gemma3/ops/rope.hpp>
#include <gemma3/core/parameters.hpp>

#include <algorithm>
#include <cmath>
#include <span>
#include <type_traits>

namespace gemma3 {

// The RoPE tables of the two layer kinds, covering positions [0, positions).
template <class T>
struct RopeTables {
    RopeTable<T> local, global;

    const RopeTable<T>& for_kind(AttentionKind kind) const { return kind == AttentionKind::sliding ? local : global; }

    // Covers at least [0, positions). A table that must grow at least doubles (up to the context),
    // so a decoder asking for one more position per token rebuilds it O(log T) times, not T times
    // (rebuilding per token cost more than the rest of a decode step at a few thousand tokens).
    template <ModelConfig C>
    void ensure(Index positions) {
        if (local.positions >= positions) return;
        const Index grown = std::max(positions, std::min<Index>(2 * local.positions, Dims<C>::context));
        local = RopeTable<T>(C::rope_local_base, C::head_dim, grown);
        global = RopeTable<T>(C::rope_base, C::head_dim, grown);
    }
};

template <ModelConfig C, class T>
AttentionShape attention_shape(int layer, Index batch, Index seq) {
    using D = Dims<C>;
    return AttentionShape{batch, seq, D::heads, D::kv_heads, D::head, D::kind(layer) == AttentionKind::sliding ? D::window : 0,
                          1.0 / std::sqrt(C::query_pre_attn_scalar)};
}

// A block's weight matrices as operands of linear_forward: the parameter layout's plain rows here;
// packed (bf16, int8) matrices for inference pass through as they are (ops/packed_linear.hpp).
template <class T>
ConstMatrixView<T> weight_operand(const T* w, Index rows, Index cols) {
    return const_view(w, rows, cols);
}

// One decoder block: a.input -> `out` ([N, D]; the next block's input; may be a.input itself).
// The block is the same for training and for cached decoding; only where attention finds its keys
// and values differs, so that part is the caller's `attend(q, k, v, out)`: q [N, H*Dh] and k
// [N, Hk*Dh] normalised and rotated, v [N, Hk*Dh], out [N, H*Dh]. Training attends over the whole
// sequence (flash_attention_forward); decoding over its KV cache plus the new tokens (generation.hpp).
// `w` is BlockWeights<const T> or a block of packed inference weights with the same member names.
template <ModelConfig C, class T, class BlockW, class Attend>
void block_forward(const BlockW& w, const RopeTable<T>& table, std::span<const std::int32_t> positions,
                   BlockActivations<T>& a, T* out, Attend&& attend) {
    using D = Dims<C>;
    const Index n = static_cast<Index>(positions.size());
    const T eps = static_cast<T>(C::rms_norm_eps);

    // Attention branch. Wq, Wk and Wv are adjacent rows of one [q + 2 kv, D] matrix in the
    // parameter layout, so one product computes all three projections side by side.
    rmsnorm_forward<T>(const_view<T>(a.input.data(), n, D::model), w.input_norm, eps,
                       matrix_view(a.attn_in.data(), n, D::model), a.input_rstd.data());
    linear_forward<T>(const_view<T>(a.attn_in.data(), n, D::model), weight_operand(w.q_proj, D::qkv, D::model),
                      matrix_view(a.qkv.data(), n, D::qkv));
    const auto qkv = const_view<T>(a.qkv.data(), n, D::qkv);
    const auto q = column_block(qkv, 0, D::q), k = column_block(qkv, D::q, D::kv), v = column_block(qkv, D::q + D::kv, D::kv);
    auto q_rot = matrix_view(a.q_rot.data(), n, D::q), k_rot = matrix_view(a.k_rot.data(), n, D::kv);
    if constexpr (C::qk_norm) {  // one weight for every head: rows of head_dim, head by head
        for (Index h = 0; h < D::heads; ++h) {
            rmsnorm_forward<T>(column_block(q, h * D::head, D::head), w.q_norm, eps,
                               column_block(q_rot, h * D::head, D::head), a.q_rstd.data() + h * n);
        }
        for (Index h = 0; h < D::kv_heads; ++h) {
            rmsnorm_forward<T>(column_block(k, h * D::head, D::head), w.k_norm, eps,
                               column_block(k_rot, h * D::head, D::head), a.k_rstd.data() + h * n);
        }
    } else {
        q_rot = q;
        k_rot = k;
    }
    rope_forward<T>(q_rot, D::head, positions, table);
    rope_forward<T>(k_rot, D::head, positions, table);
    attend(as_const(q_rot), as_const(k_rot), v, matrix_view(a.attn.data(), n, D::q));
    linear_forward<T>(const_view<T>(a.attn.data(), n, D::q), weight_operand(w.o_proj, D::model, D::q),
                      matrix_view(a.attn_proj.data(), n, D::model));
    // mid = input + post_attention_norm(attn_proj), computed in the mid buffer.
    rmsnorm_forward<T>(const_view<T>(a.attn_proj.data(), n, D::model), w.post_attention_norm, eps,
                       matrix_view(a.mid.data(), n, D::model), a.attn_proj_rstd.data());
    matrix_view(a.mid.data(), n, D::model) += const_view<T>(a.input.data(), n, D::model);

    // Feed-forward branch.
    rmsnorm_forward<T>(const_view<T>(a.mid.data(), n, D::model), w.pre_feedforward_norm, eps,
                       matrix_view(a.mlp_in.data(), n, D::model), a.mid_rstd.data());
    // Wg and Wu are adjacent too: one product gives [gate | up].
    linear_forward<T>(const_view<T>(a.mlp_in.data(), n, D::model), weight_operand(w.gate_proj, 2 * D::ffn, D::model),
                      matrix_view(a.gate_up.data(), n, 2 * D::ffn));
    const auto gate_up = const_view<T>(a.gate_up.data(), n, 2 * D::ffn);
    geglu_forward<T>(column_block(gate_up, 0, D::ffn), column_block(gate_up, D::ffn, D::ffn),
                     matrix_view(a.act.data(), n, D::ffn));
    // act enters only the down product. Mixed precision (Activations::bf16_act, with the training
    // weights) keeps it in bf16 for the backward pass: rounded once, here, and this product reads
    // those values.
    const auto act = const_view<T>(a.act.data(), n, D::ffn);
    const auto down = [&](const auto& x) {
        linear_forward<T>(x, weight_operand(w.down_proj, D::model, D::ffn), matrix_view(a.mlp_out.data(), n, D::model));
    };
    if constexpr (std::is_same_v<BlockW, BlockWeights<const float>>) {
        if (!a.act_bf16.empty()) {
            down(detail::as_bf16(act, a.act_bf16));
        } else {
            down(act);
        }
    } else {
        down(act);
    }
    rmsnorm_forward<T>(const_view<T>(a.mlp_out.data(), n, D::model), w.post_feedforward_norm, eps,
                       matrix_view(out, n, D::model), a.mlp_out_rstd.data());
    matrix_view(out, n, D::model) += const_view<T>(a.mid.data(), n, D::model);
}

// Runs embedding, all blocks and the final norm; the head is separate (full logits for inference,
// a chunked loss for training). `acts` must have been resized for (batch, seq) and `rope` must cover
// seq positions.
template <ModelConfig C, class T>
void forward_to_final_norm(const Weights<C, const T>& w, std::span<const std::int32_t> tokens,
                           const RopeTables<T>& rope, Activations<C, T>& acts) {
    using D = Dims<C>;
    const Index n = acts.tokens_count();
    acts.tokens.assign(tokens.begin(), tokens.end());
    embedding_forward<T>(matrix_view(w.embed, D::vocab, D::model), tokens, static_cast<T>(std::sqrt(double(D::model))),
                         matrix_view(acts.blocks[0].input.data(), n, D::model));
    for (int l = 0; l < D::layers; ++l) {
        const auto li = static_cast<std::size_t>(l);
        T* out = l + 1 < D::layers ? acts.blocks[li + 1].input.data() : acts.final_in.data();
        auto& a = acts.blocks[li];
        const auto shape = attention_shape<C, T>(l, acts.batch, acts.seq);
        if (acts.bf16_act) a.act.swap(acts.act_scratch);  // the block writes fp32 act into the shared buffer
        block_forward<C, T>(w.blocks[li], rope.for_kind(D::kind(l)), std::span<const std::int32_t>(acts.positions), a, out,
                            [&](ConstMatrixView<T> q, ConstMatrixView<T> k, ConstMatrixView<T> v, MatrixView<T> attn) {
                                flash_attention_forward<T>(q, k, v, shape, attn, acts.keep_lse ? a.lse.data() : nullptr);
                            });
        if (acts.bf16_act) a.act.swap(acts.act_scratch);  // and gives it back; act_bf16 stays
    }
    rmsnorm_forward<T>(const_view<T>(acts.final_in.data(), n, D::model), w.final_norm, static_cast<T>(C::rms_norm_eps),
                       matrix_view(acts.final_out.data(), n, D::model), acts.final_rstd.data());
}

// logits [N, vocab] = final_out W_head^T.
template <ModelConfig C, class T>
void head_forward(const Weights<C, const T>& w, const Activations<C, T>& acts, MatrixView<T> logits) {
    using D = Dims<C>;
    linear_forward<T>(const_view<T>(acts.final_out.data(), acts.tokens_count(), D::model),
                      matrix_view(w.lm_head, D::vocab, D::model), logits);
}

}  // namespace gemma3
