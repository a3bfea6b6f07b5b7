// expect-static-assert: gemma3 config: sliding_window must be smaller than context_length
#include "valid_config.hpp"

struct Bad : ValidConfig {
    static constexpr int sliding_window = 1024;  // equal to context_length
};
static_assert(gemma3::check_config<Bad>());
