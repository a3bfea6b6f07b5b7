// gemma3-prepare: text files or directories -> train.bin + validation.bin (the seed's token files).
//
//   gemma3-prepare data/kjv/kjv.txt --out-dir data/kjv
//   gemma3-prepare corpus/ more.txt --out-dir data/mine --val-fraction 0.05 --threads 2
//
// All the work is in include/gemma3/prepare.hpp; this file parses options and draws the progress
// bar (stderr) and the summary (stdout).
#include <gemma3/prepare.hpp>

#include "find_tokenizer.hpp"

#include <CLI/CLI.hpp>

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

namespace {

// 1234567 -> "1,234,567".
std::string grouped(std::uint64_t value) {
    std::string digits = std::to_string(value), out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
        out.push_back(digits[i]);
    }
    return out;
}

std::string format(const char* pattern, double value) {
    char text[64];
    std::snprintf(text, sizeof text, pattern, value);
    return text;
}

std::string clock_time(double seconds) {
    const auto s = static_cast<long long>(seconds + 0.5);
    char text[32];
    std::snprintf(text, sizeof text, "%lld:%02lld", s / 60, s % 60);
    return text;
}

// A bar redrawn in place on a terminal; on anything else (a log file, CI) a plain line at every
// 10% so logs stay short.
class ProgressBar {
public:
    ProgressBar() : terminal_(::isatty(STDERR_FILENO) != 0) {}

    void update(const gemma3::PrepareProgress& p) {
        const double fraction = p.bytes_total ? static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total) : 1;
        const double rate = p.seconds > 0 ? static_cast<double>(p.bytes_done) / p.seconds : 0;
        const std::string numbers =
            format("%5.1f%%", 100 * fraction) + "  " + format("%.1f", static_cast<double>(p.bytes_done) / 1e6) + "/" +
            format("%.1f MB", static_cast<double>(p.bytes_total) / 1e6) + "  " + format("%.1f MB/s", rate / 1e6) +
            "  " + grouped(p.tokens) + " tokens" +
            (rate > 0 && fraction < 1
                 ? "  ETA " + clock_time(static_cast<double>(p.bytes_total - p.bytes_done) / rate)
                 : "");
        if (terminal_) {
            constexpr int width = 30;
            const int filled = static_cast<int>(fraction * width);
            std::string bar = "\r[" + std::string(static_cast<std::size_t>(filled), '#') +
                              std::string(static_cast<std::size_t>(width - filled), ' ') + "] " + numbers + "\x1b[K";
            std::fputs(bar.c_str(), stderr);
            drawn_ = true;
        } else {
            const int step = static_cast<int>(fraction * 10);
            if (step > last_step_) {
                last_step_ = step;
                std::fprintf(stderr, "prepare: %s\n", numbers.c_str());
            }
        }
        std::fflush(stderr);
    }

    void finish() {
        if (drawn_) std::fputc('\n', stderr);
        drawn_ = false;
    }

private:
    bool terminal_;
    bool drawn_ = false;
    int last_step_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
    // Past a file-size limit (ulimit -f) write() then fails with EFBIG and the run ends with an
    // error naming the file, its previous outputs intact; SIGXFSZ's default would kill it mid-write.
    std::signal(SIGXFSZ, SIG_IGN);
    CLI::App app{
        "Tokenize text files (GPT-2 BPE, tiktoken-compatible) into train.bin and validation.bin: flat little-endian "
        "uint16 token ids, the seed's format, read by gemma3-train --data-dir.\n"
        "Each file is one document; directories are walked recursively (sorted paths, hidden names skipped). "
        "Documents are encoded like the seed's encode_ordinary: a literal '<|endoftext|>' in the text stays text.\n"
        "Re-running with unchanged inputs and options does nothing (OUT_DIR/prepare.json records them)."};
    gemma3::PrepareOptions options;
    std::vector<std::string> inputs;
    std::string out_dir, tokenizer;
    bool replace_invalid = false, quiet = false;
    app.add_option("inputs", inputs, "text files and directories")->required();
    app.add_option("--out-dir", out_dir, "where train.bin, validation.bin and prepare.json go (created if missing)")
        ->required();
    app.add_option("--tokenizer", tokenizer,
                   "GPT-2 ranks in tiktoken format (scripts/fetch_tokenizer.sh; default: $GEMMA3_TOKENIZER, else "
                   "gpt2.tiktoken in the data folder of this program's install or checkout)");
    app.add_option("--val-fraction", options.val_fraction,
                   "share of the tokens that goes to validation.bin, strictly between 0 and 1 (gemma3-train needs "
                   "both files). The token stream is cut into chunks of --chunk-tokens tokens and chunk i is "
                   "validation iff round((i+1)f) > round(i f): evenly spread over the whole corpus (f = 0.1: chunks "
                   "4, 14, 24, ...), not just its end; deterministic")
        ->capture_default_str();
    app.add_option("--chunk-tokens", options.chunk_tokens,
                   "granularity of the validation split; much longer than a training window so few windows straddle "
                   "a seam, short enough that validation samples the whole corpus")
        ->capture_default_str();
    app.add_flag("--eot-between-documents,!--no-eot-between-documents", options.eot_between_documents,
                 "put one <|endoftext|> token (50256) between consecutive documents (default: on). The seed "
                 "concatenates stories with no separator, which teaches the model spurious continuations from one "
                 "document into the next and gives generation no natural stop; the cost is one token per document");
    app.add_flag("--replace-invalid-utf8", replace_invalid,
                 "replace invalid UTF-8 sequences with U+FFFD (default: stop with an error naming the file and byte "
                 "offset; left alone, the tokenizer would stop splitting words at the first bad byte)");
    app.add_option("--block-size", options.block_size,
                   "training block size, only to check that each file holds at least one window of block-size + 1 "
                   "tokens")
        ->capture_default_str();
    app.add_option("--threads", options.threads, "tokenizer threads; 0 = all cores")->capture_default_str();
    app.add_flag("--force", options.force, "prepare again even when prepare.json says the outputs are up to date");
    app.add_flag("--quiet", quiet, "no progress bar");
    CLI11_PARSE(app, argc, argv);

    for (const auto& input : inputs) options.inputs.emplace_back(input);
    options.out_dir = out_dir;
    options.invalid_utf8 = replace_invalid ? gemma3::InvalidUtf8::replace : gemma3::InvalidUtf8::error;
    ProgressBar bar;
    if (!quiet) options.on_progress = [&](const gemma3::PrepareProgress& p) { bar.update(p); };

    try {
        options.tokenizer_path = gemma3::programs::find_tokenizer(tokenizer);
        const gemma3::PrepareResult r = gemma3::prepare_corpus(options);
        bar.finish();
        const double tokens = static_cast<double>(r.tokens());
        if (r.up_to_date) {
            std::printf("%s is up to date (prepare.json matches the inputs, options and tokenizer; --force prepares "
                        "again): train.bin %s tokens, validation.bin %s tokens\n",
                        out_dir.c_str(), grouped(r.train_tokens).c_str(), grouped(r.validation_tokens).c_str());
            return 0;
        }
        std::printf("wrote %s (%s tokens) and %s (%s tokens, %.2f%%)\n", r.train_path.string().c_str(),
                    grouped(r.train_tokens).c_str(), r.validation_path.string().c_str(),
                    grouped(r.validation_tokens).c_str(), 100.0 * static_cast<double>(r.validation_tokens) / tokens);
        std::printf("  documents    %s", grouped(r.documents).c_str());
        if (r.empty_files_skipped > 0) std::printf(" (%s empty files skipped)", grouped(r.empty_files_skipped).c_str());
        std::printf("\n  input        %s bytes\n", grouped(r.input_bytes).c_str());
        std::printf("  tokens       %s, of which %s <|endoftext|> separators\n", grouped(r.tokens()).c_str(),
                    grouped(r.eot_tokens).c_str());
        std::printf("  compression  %.3f bytes/token\n", static_cast<double>(r.input_bytes) / tokens);
        std::printf("  time         %.2f s, %.2f MB/s with %d thread%s\n", r.seconds,
                    static_cast<double>(r.input_bytes) / 1e6 / std::max(r.seconds, 1e-9), r.threads,
                    r.threads == 1 ? "" : "s");
        if (r.replaced_invalid_sequences > 0) {
            std::printf("  replaced     %s invalid UTF-8 sequences with U+FFFD\n",
                        grouped(r.replaced_invalid_sequences).c_str());
        }
        if (r.literal_eot_texts > 0) {
            std::printf("  note: the text contains '<|endoftext|>' %s times; it was encoded as ordinary text, not as "
                        "the separator token\n",
                        grouped(r.literal_eot_texts).c_str());
        }
    } catch (const std::exception& e) {
        bar.finish();
        std::cerr << "gemma3-prepare: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
