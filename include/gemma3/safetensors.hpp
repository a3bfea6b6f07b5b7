// Forwarding header: gemma3/safetensors.hpp moved to gemma3/io/safetensors.hpp (tools/reorganize_headers.sh);
// this path keeps working for code written against it.
#pragma once

#include <gemma3/io/safetensors.hpp>
