// expect-error: rms_norm_eps
// A type without rms_norm_eps is not a ModelConfig; the concept names what is missing.
#include <gemma3/core/config.hpp>

struct Incomplete {
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
    using layer_types = gemma3::RepeatingPattern<6, 3>;
};
static_assert(gemma3::check_config<Incomplete>());
