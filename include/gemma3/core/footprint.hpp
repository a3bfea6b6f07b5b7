// Parameter counts, FLOPs and memory of a model described by a run-time config (any config, not
// only compiled ones): what gemma3-info prints. The activation and KV-cache formulas follow this
// library's buffers (activations.hpp, backward.hpp); tests check them against the real sizes.
#pragma once

#include <gemma3/io/config_file.hpp>

#include <cstdint>

namespace gemma3 {

struct ParameterCounts {
    std::int64_t embedding = 0;   // vocab x emb_dim
    std::int64_t per_block = 0;   // one decoder block, norms included
    std::int64_t blocks = 0;      // all blocks
    std::int64_t final_norm = 0;  // emb_dim
    std::int64_t head = 0;        // untied output head (0 when tied)
    std::int64_t total = 0;       // unique parameters
    std::int64_t matrices = 0;    // parameters used in matrix products per token: block matrices and the head
};

inline ParameterCounts count_parameters(const ModelConfigFile& c) {
    const std::int64_t d = c.emb_dim, q = std::int64_t{c.n_heads} * c.head_dim, kv = std::int64_t{c.n_kv_groups} * c.head_dim;
    const std::int64_t f = c.hidden_dim, v = c.vocab_size;
    ParameterCounts p;
    p.embedding = v * d;
    const std::int64_t block_matrices = q * d + 2 * kv * d + d * q + 3 * f * d;
    p.per_block = block_matrices + 4 * d + (c.qk_norm ? 2 * std::int64_t{c.head_dim} : 0);
    p.blocks = p.per_block * c.n_layers;
    p.final_norm = d;
    p.head = c.tie_word_embeddings ? 0 : v * d;
    p.total = p.embedding + p.blocks + p.final_norm + p.head;
    p.matrices = block_matrices * c.n_layers + v * d;
    return p;
}

// Training FLOPs per token: 6 x matrix parameters, plus attention's QK^T and PV (forward 4 * H * Dh
// per visible key, times 3 for training) averaged over a block of `seq` tokens.
inline double training_flops_per_token(const ModelConfigFile& c, std::int64_t seq) {
    double attention = 0;
    for (AttentionKind kind : c.layer_types) {
        const std::int64_t window = kind == AttentionKind::sliding ? c.sliding_window : seq;
        double keys = 0;  // mean number of visible keys per query
        for (std::int64_t i = 0; i < seq; ++i) keys += static_cast<double>(std::min<std::int64_t>(i + 1, window));
        keys /= static_cast<double>(seq);
        attention += 3.0 * 4.0 * c.n_heads * c.head_dim * keys;
    }
    return 6.0 * static_cast<double>(count_parameters(c).matrices) + attention;
}

// Elements of the CPU back end's training buffers for a batch x seq micro-batch: the activations
// kept for the backward pass (activations.hpp), one block's backward scratch and the classifier's
// logits chunk (backward.hpp, cross_entropy.hpp). Attention is tiled (ops/attention.hpp): it keeps
// one log-sum-exp per query row and head, and its backward a row term of the same size, so every
// term is linear in seq, sliding and full layers alike. (Its per-thread tiles, a few hundred
// kilobytes, are left out.)
inline std::int64_t activation_elements(const ModelConfigFile& c, std::int64_t batch, std::int64_t seq) {
    const std::int64_t n = batch * seq, d = c.emb_dim, f = c.hidden_dim;
    const std::int64_t q = std::int64_t{c.n_heads} * c.head_dim, kv = std::int64_t{c.n_kv_groups} * c.head_dim;
    const std::int64_t per_block = n * (6 * d + 3 * q + 3 * kv + 3 * f + 4 + c.n_heads + c.n_kv_groups) +
                                   n * c.n_heads;  // attention log-sum-exps
    const std::int64_t final_norm = n * (2 * d + 1);
    const std::int64_t scratch = n * (6 * d + 3 * f + 3 * q + 3 * kv) + n * c.n_heads;  // + attention's row term
    const std::int64_t logits_chunk = std::min<std::int64_t>(256, n) * c.vocab_size;
    return per_block * c.n_layers + final_norm + scratch + logits_chunk;
}

// What the exact attention would keep instead: [batch, heads, seq, seq] probabilities per layer
// (for comparison in gemma3-info; the training path no longer stores them).
inline std::int64_t exact_attention_probability_elements(const ModelConfigFile& c, std::int64_t batch, std::int64_t seq) {
    return std::int64_t{c.n_layers} * batch * c.n_heads * seq * seq;
}

// Elements of a KV cache for `batch` sequences of up to `context` tokens: one K and one V per kv
// head; a sliding layer keeps only its window (a ring buffer), a full layer every position.
inline std::int64_t kv_cache_elements(const ModelConfigFile& c, std::int64_t batch, std::int64_t context) {
    std::int64_t positions = 0;
    for (AttentionKind kind : c.layer_types) {
        positions += kind == AttentionKind::sliding ? std::min<std::int64_t>(c.sliding_window, context) : context;
    }
    return 2 * batch * positions * c.n_kv_groups * c.head_dim;
}

}  // namespace gemma3
