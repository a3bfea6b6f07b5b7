// Fuzz harness: the tokenizer's file loaders. Each input is tried as a tiktoken ranks file, as
// Hugging Face's vocab.json (with a small consistent merges.txt) and as merges.txt (with the
// matching vocab.json). Promises checked:
//   - each load either succeeds or throws TokenizerError (before issue 13, a vocab.json number
//     beyond double's range escaped as nlohmann's out_of_range);
//   - a tokenizer that loads round-trips: decode(encode(x)) == x for the input itself and for a
//     fixed text, and every id it produces is below its vocabulary size.
// The small HF pair is the first 256 + 40 tokens of GPT-2's files (data/gpt2-hf, from
// scripts/fetch_tokenizer.sh), cut down at start-up.
#include "fuzz_support.hpp"

#include <gemma3/text/tokenizer.hpp>

#include <nlohmann/json.hpp>

#include <optional>

namespace {

namespace fs = std::filesystem;
constexpr int small_merges = 40;

std::string read_data_file(const char* relative) {
    std::ifstream in(fs::path(GEMMA3_SOURCE_DIR) / relative, std::ios::binary);
    if (!in) gemma3::fuzz::fail(std::string(relative) + " is missing: run scripts/fetch_tokenizer.sh");
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct SmallHfFiles {
    std::string vocab, merges;
};

const SmallHfFiles& small_hf_files() {
    static const SmallHfFiles files = [] {
        SmallHfFiles f;
        const std::string merges = read_data_file("data/gpt2-hf/merges.txt");
        std::size_t pos = 0;
        for (int line = 0; line <= small_merges; ++line) pos = merges.find('\n', pos) + 1;  // "#version" + merges
        f.merges = merges.substr(0, pos);
        const auto vocab = nlohmann::json::parse(read_data_file("data/gpt2-hf/vocab.json"));
        nlohmann::json small = nlohmann::json::object();
        for (const auto& [key, id] : vocab.items()) {
            if (id.get<int>() < 256 + small_merges) small[key] = id;
        }
        small["<|endoftext|>"] = 256 + small_merges;
        f.vocab = small.dump();
        return f;
    }();
    return files;
}

void check_round_trip(const gemma3::Tokenizer& t, std::string_view input) {
    for (const std::string_view text : {input.substr(0, 4096), std::string_view("Hello, world! 123 \xe2\x82\xac \xff")}) {
        const auto ids = t.encode(text, true);
        for (const auto id : ids) {
            gemma3::fuzz::check(id >= 0 && id < t.vocab_size(), "a loaded tokenizer gave id " + std::to_string(id));
        }
        gemma3::fuzz::check(t.decode(ids) == text, "a loaded tokenizer does not round-trip");
    }
}

template <class Load>
void try_load(Load load, std::string_view input) {
    std::optional<gemma3::Tokenizer> t;
    try {
        t.emplace(load());
    } catch (const gemma3::TokenizerError&) {
        return;
    }
    check_round_trip(*t, input);
}

}  // namespace

std::vector<std::pair<std::string, std::string>> gemma3::fuzz::generated_seeds() {
    const std::string tiktoken = read_data_file("data/gpt2.tiktoken");
    std::size_t pos = 0;
    for (int line = 0; line < 300; ++line) pos = tiktoken.find('\n', pos) + 1;
    return {{"ranks_300.tiktoken", tiktoken.substr(0, pos)},
            {"small_vocab.json", small_hf_files().vocab},
            {"small_merges.txt", small_hf_files().merges}};
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using gemma3::Tokenizer;
    const std::string_view input = gemma3::fuzz::as_text(data, size);
    const auto& small = small_hf_files();
    const auto path = gemma3::fuzz::input_file("input", input);
    static const auto vocab = gemma3::fuzz::input_file("vocab.json", small.vocab);
    static const auto merges = gemma3::fuzz::input_file("merges.txt", small.merges);
    try_load([&] { return Tokenizer::from_tiktoken_file(path, 0); }, input);
    try_load([&] { return Tokenizer::from_hf_files(path, merges, 0); }, input);
    try_load([&] { return Tokenizer::from_hf_files(vocab, path, 0); }, input);
    return 0;
}
