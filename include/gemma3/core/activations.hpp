// The intermediate tensors of one forward pass over `batch` sequences of `seq` tokens, kept for the
// backward pass. Rows are tokens, batch-major (row b*seq + t).
#pragma once

#include <gemma3/core/blas.hpp>  // bf16
#include <gemma3/core/config.hpp>
#include <gemma3/core/tensor.hpp>

#include <cstdint>
#include <vector>

namespace gemma3 {

template <class T>
struct BlockActivations {
    Buffer<T> input;                // [N, D] residual stream entering the block
    Buffer<T> input_rstd;           // [N]
    Buffer<T> attn_in;              // [N, D] input_layernorm(input)
    Buffer<T> qkv;                  // [N, (H + 2 Hk) Dh] the q, k and v projections side by side
    Buffer<T> q_rstd, k_rstd;       // [H*N], [Hk*N] q/k norm statistics, head-major
    Buffer<T> q_rot, k_rot;         // normalised and rotated q, k
    Buffer<T> lse;                  // [B, H, T] attention log-sum-exp per query row (empty for inference)
    Buffer<T> attn;                 // [N, H*Dh] attention output, heads concatenated
    Buffer<T> attn_proj;            // [N, D] o_proj(attn)
    Buffer<T> attn_proj_rstd;       // [N]
    Buffer<T> mid;                  // [N, D] input + post_attention_norm(attn_proj)
    Buffer<T> mid_rstd;             // [N]
    Buffer<T> mlp_in;               // [N, D] pre_feedforward_norm(mid)
    Buffer<T> gate_up;              // [N, 2F] gate and up projections side by side
    Buffer<T> act;                  // [N, F] gelu_tanh(gate) * up
    Buffer<bf16> act_bf16;          // [N, F] act rounded to bf16, kept instead of act (Activations::bf16_act)
    Buffer<T> mlp_out;              // [N, D] down_proj(act)
    Buffer<T> mlp_out_rstd;         // [N]
};

// Sizes one block's buffers for n tokens, with `lse` elements of kept attention log-sum-exps.
template <ModelConfig C, class T>
void resize_block_activations(BlockActivations<T>& b, Index tokens, std::size_t lse) {
    using D = Dims<C>;
    const auto n = static_cast<std::size_t>(tokens);
    const auto d = static_cast<std::size_t>(D::model), f = static_cast<std::size_t>(D::ffn);
    const auto q = static_cast<std::size_t>(D::q), kv = static_cast<std::size_t>(D::kv);
    b.input.resize(n * d);
    b.input_rstd.resize(n);
    b.attn_in.resize(n * d);
    b.qkv.resize(n * (q + 2 * kv));
    b.q_rstd.resize(n * static_cast<std::size_t>(D::heads));
    b.k_rstd.resize(n * static_cast<std::size_t>(D::kv_heads));
    b.q_rot.resize(n * q);
    b.k_rot.resize(n * kv);
    b.lse.resize(lse);
    b.attn.resize(n * q);
    b.attn_proj.resize(n * d);
    b.attn_proj_rstd.resize(n);
    b.mid.resize(n * d);
    b.mid_rstd.resize(n);
    b.mlp_in.resize(n * d);
    b.gate_up.resize(n * 2 * f);
    b.act.resize(n * f);
    b.mlp_out.resize(n * d);
    b.mlp_out_rstd.resize(n);
}

template <ModelConfig C, class T>
struct Activations {
    using D = Dims<C>;
    Index batch = 0, seq = 0;
    bool keep_lse = false;
    std::vector<std::int32_t> tokens;     // [N]
    std::vector<std::int32_t> positions;  // [N] position of each row within its sequence
    std::vector<BlockActivations<T>> blocks;
    Buffer<T> final_in;    // [N, D] output of the last block
    Buffer<T> final_rstd;  // [N]
    Buffer<T> final_out;   // [N, D] final norm output, the input of the head
    // Mixed precision (Cpu<bf16>): act only ever enters products, which round it to bf16, so each
    // block keeps it in bf16 (act_bf16) and the blocks write their fp32 act into this one buffer in
    // turn (forward_to_final_norm). The seed at batch 4 x 128 holds 34 MB less, and its bf16
    // training peak fell below fp32's (3,091 against 3,109 MiB).
    bool bf16_act = false;
    Buffer<T> act_scratch;  // [N, F] when bf16_act

    Index tokens_count() const { return batch * seq; }

    // Sizes every buffer for batch x seq (no-op when unchanged). keep_lse: store the attention's
    // per-row log-sum-exps for the backward pass (B*H*T per layer; no T x T probabilities).
    void resize(Index batch_, Index seq_, bool keep_lse_, bool bf16_act_ = false) {
        if (batch_ == batch && seq_ == seq && keep_lse_ == keep_lse && bf16_act_ == bf16_act && !blocks.empty()) return;
        batch = batch_;
        seq = seq_;
        keep_lse = keep_lse_;
        bf16_act = bf16_act_;
        const auto n = static_cast<std::size_t>(batch * seq);
        const auto d = static_cast<std::size_t>(D::model);
        tokens.assign(n, 0);
        positions.resize(n);
        for (std::size_t i = 0; i < n; ++i) positions[i] = static_cast<std::int32_t>(i % static_cast<std::size_t>(seq));
        blocks.resize(static_cast<std::size_t>(D::layers));
        const auto lse = keep_lse ? static_cast<std::size_t>(batch * seq * D::heads) : 0;
        for (auto& b : blocks) {
            resize_block_activations<C, T>(b, batch * seq, lse);
            if (bf16_act) {
                Buffer<T>().swap(b.act);
                b.act_bf16.resize(n * static_cast<std::size_t>(D::ffn));
            } else {
                Buffer<bf16>().swap(b.act_bf16);
            }
        }
        act_scratch.resize(bf16_act ? n * static_cast<std::size_t>(D::ffn) : 0);
        final_in.resize(n * d);
        final_rstd.resize(n);
        final_out.resize(n * d);
    }
};

}  // namespace gemma3
