// Forwarding header: gemma3/config_file.hpp moved to gemma3/io/config_file.hpp (tools/reorganize_headers.sh);
// this path keeps working for code written against it.
#pragma once

#include <gemma3/io/config_file.hpp>
