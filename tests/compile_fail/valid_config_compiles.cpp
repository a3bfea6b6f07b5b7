// expect-compiles: the harness itself works on a valid config
#include "valid_config.hpp"

static_assert(gemma3::check_config<ValidConfig>());
static_assert(gemma3::Dims<ValidConfig>::heads_per_kv == 2);
