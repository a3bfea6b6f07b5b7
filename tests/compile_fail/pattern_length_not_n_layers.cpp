// expect-static-assert: gemma3 config: layer_types must have exactly n_layers entries
#include "valid_config.hpp"

struct Bad : ValidConfig {
    using layer_types = gemma3::RepeatingPattern<5, 3>;  // 5 kinds for 6 layers
};
static_assert(gemma3::check_config<Bad>());
