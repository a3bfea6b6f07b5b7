// gemma3-tokenize: GPT-2 BPE from the command line.
//
//   gemma3-tokenize encode [--tokenizer data/gpt2.tiktoken] [--allow-special] < text
//       prints the token ids of stdin (all of it, bytes as they are), space-separated on one line
//   gemma3-tokenize decode [--tokenizer data/gpt2.tiktoken] < ids
//       reads whitespace-separated ids and writes the bytes they stand for
//
// `--hf-vocab`/`--hf-merges` load Hugging Face's vocab.json + merges.txt instead.
#include <gemma3/text/tokenizer.hpp>

#include "find_tokenizer.hpp"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

std::string read_stdin() {
    std::ios::sync_with_stdio(false);
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

// Parses whitespace-separated decimal ids; a bad one is reported with its position.
std::vector<std::int32_t> parse_ids(const std::string& text, int vocab_size) {
    std::vector<std::int32_t> ids;
    std::size_t pos = 0;
    while (true) {
        pos = text.find_first_not_of(" \t\r\n\f\v", pos);
        if (pos == std::string::npos) break;
        std::size_t end = text.find_first_of(" \t\r\n\f\v", pos);
        if (end == std::string::npos) end = text.size();
        const std::string word = text.substr(pos, end - pos);
        const std::string where = "id number " + std::to_string(ids.size() + 1) + " ('" + word + "')";
        const bool digits = word.size() <= 10 && word.find_first_not_of("0123456789") == std::string::npos;
        if (!digits) throw gemma3::TokenizerError(where + " is not a non-negative integer");
        const long long value = std::stoll(word);
        if (value >= vocab_size) {
            throw gemma3::TokenizerError(where + " is out of range: valid ids are 0.." + std::to_string(vocab_size - 1));
        }
        ids.push_back(static_cast<std::int32_t>(value));
        pos = end;
    }
    return ids;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"GPT-2 byte-level BPE (tiktoken-compatible): text <-> token ids"};
    app.require_subcommand(1);
    app.fallthrough();  // options may follow the subcommand: `encode --tokenizer PATH`
    std::string tiktoken_path, hf_vocab, hf_merges;
    bool allow_special = false;
    app.add_option("--tokenizer", tiktoken_path,
                   "GPT-2 ranks in tiktoken format (default: $GEMMA3_TOKENIZER, else gpt2.tiktoken in the data folder "
                   "of this program's install or checkout)");
    auto* vocab_option = app.add_option("--hf-vocab", hf_vocab, "Hugging Face vocab.json (with --hf-merges)");
    auto* merges_option = app.add_option("--hf-merges", hf_merges, "Hugging Face merges.txt (with --hf-vocab)");
    vocab_option->needs(merges_option);
    merges_option->needs(vocab_option);
    auto* encode = app.add_subcommand("encode", "text on stdin -> ids on stdout (one line)");
    encode->add_flag("--allow-special", allow_special, "turn '<|endoftext|>' in the text into its id 50256");
    app.add_subcommand("decode", "ids on stdin -> text on stdout");
    CLI11_PARSE(app, argc, argv);

    try {
        const gemma3::Tokenizer tokenizer = hf_vocab.empty() ? gemma3::Tokenizer::from_tiktoken_file(gemma3::programs::find_tokenizer(tiktoken_path))
                                                             : gemma3::Tokenizer::from_hf_files(hf_vocab, hf_merges);
        const std::string input = read_stdin();
        if (encode->parsed()) {
            const auto ids = tokenizer.encode(input, allow_special);
            std::string line;
            line.reserve(ids.size() * 6 + 1);
            for (std::size_t i = 0; i < ids.size(); ++i) {
                if (i > 0) line.push_back(' ');
                line += std::to_string(ids[i]);
            }
            line.push_back('\n');
            std::fwrite(line.data(), 1, line.size(), stdout);
        } else {
            const std::string bytes = tokenizer.decode(parse_ids(input, tokenizer.vocab_size()));
            std::fwrite(bytes.data(), 1, bytes.size(), stdout);
        }
        if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
            std::cerr << "gemma3-tokenize: error writing to stdout\n";
            return 1;
        }
    } catch (const std::exception& e) {
        std::cerr << "gemma3-tokenize: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
