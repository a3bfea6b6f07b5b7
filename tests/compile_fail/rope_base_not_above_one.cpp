// expect-static-assert: gemma3 config: rope_base and rope_local_base must be greater than 1
#include "valid_config.hpp"

struct Bad : ValidConfig {
    static constexpr double rope_local_base = 1.0;
};
static_assert(gemma3::check_config<Bad>());
