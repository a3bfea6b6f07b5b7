// expect-static-assert: gemma3 config: rms_norm_eps must be positive
#include "valid_config.hpp"

struct Bad : ValidConfig {
    static constexpr double rms_norm_eps = 0;
};
static_assert(gemma3::check_config<Bad>());
