// Forwarding header: gemma3/weights_io.hpp moved to gemma3/io/weights_io.hpp (tools/reorganize_headers.sh);
// this path keeps working for code written against it.
#pragma once

#include <gemma3/io/weights_io.hpp>
