// Forwarding header: gemma3/file_io.hpp moved to gemma3/io/file_io.hpp (tools/reorganize_headers.sh);
// this path keeps working for code written against it.
#pragma once

#include <gemma3/io/file_io.hpp>
