// Shared pieces of the fuzz harnesses (tests/fuzz/fuzz_*.cpp).
//
// Each harness defines LLVMFuzzerTestOneInput (libFuzzer's entry point) and
// gemma3::fuzz::generated_seeds() (inputs too large, or too binary, to commit). It is built twice:
//   - with clang and -fsanitize=fuzzer (scripts/fuzz.sh, GEMMA3_LIBFUZZER defined): libFuzzer's
//     own main mutates the inputs; LLVMFuzzerInitialize below writes the generated seeds into
//     $GEMMA3_FUZZ_SEED_DIR when that is set, so they join the corpus;
//   - with any compiler, linked to corpus_driver.cpp: a plain main() that feeds every file of the
//     committed corpus and every generated seed once. That is how the corpora run in ctest.
//
// A harness checks the library's promises, not only "no crash": a loader either succeeds or
// throws one of its documented error types (anything else escapes and ends the run), a failed load
// leaves the caller's objects unchanged, and what loads round-trips. A broken promise calls
// fuzz::fail, which prints the reason and aborts, so libFuzzer saves the input.
#pragma once

#include <gemma3/core/config.hpp>

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace gemma3::fuzz {

// (name, bytes) of each generated seed; defined by every harness.
std::vector<std::pair<std::string, std::string>> generated_seeds();

[[noreturn]] inline void fail(const std::string& why) {
    std::fprintf(stderr, "fuzz harness: broken promise: %s\n", why.c_str());
    std::fflush(stderr);
    std::abort();
}

inline void check(bool condition, const std::string& why) {
    if (!condition) fail(why);
}

// A per-process scratch directory, in memory when /dev/shm is there (libFuzzer runs thousands of
// inputs a second; each one is written to a file because the loaders read files). Removed at exit.
inline const std::filesystem::path& scratch_dir() {
    static const std::filesystem::path dir = [] {
        std::error_code ec;
        std::filesystem::path base = "/dev/shm";
        if (!std::filesystem::is_directory(base, ec) || ::access(base.c_str(), W_OK) != 0) {
            base = std::filesystem::temp_directory_path();
        }
        auto path = base / ("gemma3-fuzz-" + std::to_string(::getpid()));
        std::filesystem::remove_all(path, ec);
        std::filesystem::create_directories(path);
        std::atexit([] {
            std::error_code ignored;
            std::filesystem::remove_all(scratch_dir(), ignored);
        });
        return path;
    }();
    return dir;
}

inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) fail("cannot write the scratch file " + path.string());
}

// Writes `bytes` to <scratch>/<name> and returns the path.
inline std::filesystem::path input_file(const std::string& name, std::string_view bytes) {
    auto path = scratch_dir() / name;
    write_file(path, bytes);
    return path;
}

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// A model small enough that a whole checkpoint of it is a few kilobytes: the safetensors and
// checkpoint harnesses load it thousands of times a second.
struct Micro {
    static constexpr std::string_view name = "gemma3::fuzz::Micro";
    static constexpr int vocab_size = 8;
    static constexpr int context_length = 16;
    static constexpr int emb_dim = 4;
    static constexpr int n_heads = 2;
    static constexpr int n_layers = 2;
    static constexpr int hidden_dim = 6;
    static constexpr int head_dim = 2;
    static constexpr bool qk_norm = true;
    static constexpr int n_kv_groups = 1;
    static constexpr double query_pre_attn_scalar = 2;
    static constexpr double rope_local_base = 10000;
    static constexpr double rope_base = 1000000;
    static constexpr int sliding_window = 4;
    static constexpr bool tie_word_embeddings = false;
    static constexpr double rms_norm_eps = 1e-6;
    using layer_types = RepeatingPattern<2, 2>;
};

}  // namespace gemma3::fuzz

#ifdef GEMMA3_LIBFUZZER
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    if (const char* dir = std::getenv("GEMMA3_FUZZ_SEED_DIR")) {
        std::filesystem::create_directories(dir);
        for (const auto& [name, bytes] : gemma3::fuzz::generated_seeds()) {
            gemma3::fuzz::write_file(std::filesystem::path(dir) / name, bytes);
        }
    }
    return 0;
}
#endif
