// expect-static-assert: gemma3 config: vocab_size must be positive
#include "valid_config.hpp"

struct Bad : ValidConfig {
    static constexpr int vocab_size = 0;
};
static_assert(gemma3::check_config<Bad>());
