// expect-static-assert: gemma3 config: n_heads must be a multiple of n_kv_groups
#include "valid_config.hpp"

struct Bad : ValidConfig {
    static constexpr int n_kv_groups = 3;  // 4 query heads cannot share 3 key/value heads evenly
};
static_assert(gemma3::check_config<Bad>());
