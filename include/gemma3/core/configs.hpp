// The configurations shipped with the library. Defining another takes a struct like these, or
// `gemma3_generate_config()` in CMake, which writes one from a model_config.json.
#pragma once

#include <gemma3/core/config.hpp>

namespace gemma3::configs {

// The seed's Gemma 3 270M with the GPT-2 vocabulary (config/model_config.json). Its output head
// is a separate matrix: 164,654,976 parameters.
struct Gemma3_270M {
    static constexpr std::string_view name = "gemma3::configs::Gemma3_270M";
    static constexpr int vocab_size = 50257;
    static constexpr int context_length = 32768;
    static constexpr int emb_dim = 640;
    static constexpr int n_heads = 4;
    static constexpr int n_layers = 18;
    static constexpr int hidden_dim = 2048;
    static constexpr int head_dim = 256;
    static constexpr bool qk_norm = true;
    static constexpr int n_kv_groups = 1;
    static constexpr double query_pre_attn_scalar = 256;
    static constexpr double rope_local_base = 10000;
    static constexpr double rope_base = 1000000;
    static constexpr int sliding_window = 512;
    static constexpr bool tie_word_embeddings = false;
    static constexpr double rms_norm_eps = 1e-6;
    using layer_types = RepeatingPattern<18, 6>;  // full attention at layers 6, 12 and 18
};

// The same architecture with the output head tied to the embedding, as in Google's release:
// 132,490,496 parameters.
struct Gemma3_270M_Tied : Gemma3_270M {
    static constexpr std::string_view name = "gemma3::configs::Gemma3_270M_Tied";
    static constexpr bool tie_word_embeddings = true;
};

// A small model with every feature of the big one (MQA, both layer kinds, a sliding window that is
// active at short lengths, untied head). For tests and quick experiments (config/tiny_model_config.json).
struct Gemma3Tiny {
    static constexpr std::string_view name = "gemma3::configs::Gemma3Tiny";
    static constexpr int vocab_size = 512;
    static constexpr int context_length = 1024;
    static constexpr int emb_dim = 64;
    static constexpr int n_heads = 4;
    static constexpr int n_layers = 6;
    static constexpr int hidden_dim = 192;
    static constexpr int head_dim = 16;
    static constexpr bool qk_norm = true;
    static constexpr int n_kv_groups = 1;
    static constexpr double query_pre_attn_scalar = 16;
    static constexpr double rope_local_base = 10000;
    static constexpr double rope_base = 1000000;
    static constexpr int sliding_window = 8;
    static constexpr bool tie_word_embeddings = false;
    static constexpr double rms_norm_eps = 1e-6;
    using layer_types = RepeatingPattern<6, 3>;
};

}  // namespace gemma3::configs
