// A valid configuration that each compile-fail case breaks in exactly one way (a derived struct
// hides one constant, as configs::Gemma3_270M_Tied does).
#pragma once

#include <gemma3/core/config.hpp>

struct ValidConfig {
    static constexpr int vocab_size = 512;
    static constexpr int context_length = 1024;
    static constexpr int emb_dim = 64;
    static constexpr int n_heads = 4;
    static constexpr int n_layers = 6;
    static constexpr int hidden_dim = 192;
    static constexpr int head_dim = 16;
    static constexpr bool qk_norm = true;
    static constexpr int n_kv_groups = 2;
    static constexpr double query_pre_attn_scalar = 16;
    static constexpr double rope_local_base = 10000;
    static constexpr double rope_base = 1000000;
    static constexpr int sliding_window = 8;
    static constexpr bool tie_word_embeddings = false;
    static constexpr double rms_norm_eps = 1e-6;
    using layer_types = gemma3::RepeatingPattern<6, 3>;
};
