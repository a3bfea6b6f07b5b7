// Forwarding header: gemma3/optimizer.hpp moved to gemma3/train/optimizer.hpp (tools/reorganize_headers.sh);
// this path keeps working for code written against it.
#pragma once

#include <gemma3/train/optimizer.hpp>
