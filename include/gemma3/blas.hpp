// Forwarding header: gemma3/blas.hpp moved to gemma3/core/blas.hpp (tools/reorganize_headers.sh);
// this path keeps working for code written against it.
#pragma once

#include <gemma3/core/blas.hpp>
