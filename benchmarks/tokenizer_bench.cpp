// Encode throughput of the GPT-2 tokenizer, one thread: best of N runs of encode_ordinary over
// the whole text. benchmarks/tokenizer.sh runs this and tools/bench_tiktoken.py on the same file.
//
//   gemma3-tokenizer-bench --text data/kjv/kjv.txt [--tokenizer data/gpt2.tiktoken] [--runs 7]
//
// Prints "ours_MBps <value>" (MB = 10^6 bytes) and, for context, the speed of pre-tokenisation
// alone with PCRE2 only and with the ASCII fast path.
#include <gemma3/text/tokenizer.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>

namespace {

template <class Work>
double best_seconds(int runs, Work work) {
    double best = 1e300;
    for (int r = 0; r < runs; ++r) {
        const auto start = std::chrono::steady_clock::now();
        work();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"GPT-2 tokenizer encode throughput (one thread)"};
    std::string tokenizer_path = "data/gpt2.tiktoken", text_path;
    int runs = 7;
    app.add_option("--tokenizer", tokenizer_path, "GPT-2 ranks in tiktoken format")->capture_default_str();
    app.add_option("--text", text_path, "file to encode (bytes as they are)")->required();
    app.add_option("--runs", runs, "timed runs; the best is reported")->capture_default_str()->check(CLI::PositiveNumber);
    CLI11_PARSE(app, argc, argv);

    try {
        const auto tokenizer = gemma3::Tokenizer::from_tiktoken_file(tokenizer_path);
        std::ifstream in(text_path, std::ios::binary);
        if (!in) throw std::runtime_error("cannot open " + text_path);
        const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const double megabytes = static_cast<double>(text.size()) / 1e6;

        std::size_t tokens = tokenizer.encode_ordinary(text).size();  // warm-up
        const double encode = best_seconds(runs, [&] { tokens = tokenizer.encode_ordinary(text).size(); });
        std::printf("text %s: %zu bytes, %zu tokens\n", text_path.c_str(), text.size(), tokens);
        std::printf("ours_MBps %.2f\n", megabytes / encode);

        const std::size_t valid = gemma3::detail::bpe::utf8_valid_prefix(text);
        const std::string_view valid_text(text.data(), valid);
        std::size_t pieces = 0;
        const double split_pcre2 = best_seconds(runs, [&] { pieces = tokenizer.split(valid_text, false).size(); });
        const double split_fast = best_seconds(runs, [&] { pieces = tokenizer.split(valid_text, true).size(); });
        std::printf("pre-tokenisation only (%zu pieces%s): PCRE2 alone %.1f MB/s, with ASCII fast path %.1f MB/s\n",
                    pieces, valid == text.size() ? "" : ", valid UTF-8 prefix", static_cast<double>(valid) / 1e6 / split_pcre2,
                    static_cast<double>(valid) / 1e6 / split_fast);
    } catch (const std::exception& e) {
        std::cerr << "gemma3-tokenizer-bench: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
