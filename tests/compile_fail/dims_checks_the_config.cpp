// expect-static-assert: gemma3 config: n_heads must be a multiple of n_kv_groups
#include "valid_config.hpp"

// Using a config through Dims (as every model type does) runs the same checks.
struct Bad : ValidConfig {
    static constexpr int n_heads = 6;
    static constexpr int n_kv_groups = 4;
    static constexpr int emb_dim = 96;
};
constexpr int heads = gemma3::Dims<Bad>::heads;
