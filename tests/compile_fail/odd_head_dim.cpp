// expect-static-assert: gemma3 config: head_dim must be positive and even
#include "valid_config.hpp"

struct Bad : ValidConfig {
    static constexpr int head_dim = 15;
};
static_assert(gemma3::check_config<Bad>());
