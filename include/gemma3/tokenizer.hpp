// Forwarding header: gemma3/tokenizer.hpp moved to gemma3/text/tokenizer.hpp (tools/reorganize_headers.sh);
// this path keeps working for code written against it.
#pragma once

#include <gemma3/text/tokenizer.hpp>
