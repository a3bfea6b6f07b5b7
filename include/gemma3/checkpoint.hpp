// Forwarding header: gemma3/checkpoint.hpp moved to gemma3/io/checkpoint.hpp (tools/reorganize_headers.sh);
// this path keeps working for code written against it.
#pragma once

#include <gemma3/io/checkpoint.hpp>
