// Where the programs find GPT-2's ranks file (data/gpt2.tiktoken, from scripts/fetch_tokenizer.sh)
// when --tokenizer is not given: the environment variable GEMMA3_TOKENIZER (only it, when set), then the data folder of
// the install or checkout the program belongs to, found from the program's own path (not from the
// current directory), then the checkout it was built from.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace gemma3::programs {

// The places looked at, in order, for a program whose --tokenizer flag holds `flag` (empty: not given).
inline std::vector<std::filesystem::path> tokenizer_candidates(const std::string& flag) {
    if (!flag.empty()) return {flag};
    if (const char* variable = std::getenv("GEMMA3_TOKENIZER"); variable && *variable) return {variable};
    std::vector<std::filesystem::path> places;
    std::error_code ec;
    const auto executable = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        const auto bin = executable.parent_path();
        places.push_back(bin.parent_path() / "share" / "gemma3" / "gpt2.tiktoken");  // <prefix>/bin -> <prefix>/share/gemma3
        places.push_back(bin.parent_path().parent_path() / "data" / "gpt2.tiktoken");  // <checkout>/build/bin -> <checkout>/data
    }
#ifdef GEMMA3_SOURCE_DATA_DIR
    places.push_back(std::filesystem::path(GEMMA3_SOURCE_DATA_DIR) / "gpt2.tiktoken");  // a build tree elsewhere
#endif
    return places;
}

// The first of those places that holds a file; the error names them all.
inline std::filesystem::path find_tokenizer(const std::string& flag) {
    const auto places = tokenizer_candidates(flag);
    std::string looked;
    for (const auto& place : places) {
        std::error_code ec;
        if (std::filesystem::is_regular_file(place, ec)) return place;
        looked += "\n  " + place.string();
    }
    if (!flag.empty()) throw std::runtime_error("--tokenizer " + flag + ": no such file");
    if (const char* variable = std::getenv("GEMMA3_TOKENIZER"); variable && *variable) {
        throw std::runtime_error(std::string("GEMMA3_TOKENIZER=") + variable + ": no such file");
    }
    throw std::runtime_error(
        "GPT-2's ranks file gpt2.tiktoken was not found (get it with scripts/fetch_tokenizer.sh, or pass "
        "--tokenizer PATH, or set GEMMA3_TOKENIZER); looked at:" + looked);
}

}  // namespace gemma3::programs
