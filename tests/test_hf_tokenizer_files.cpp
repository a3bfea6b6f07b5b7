// The tokenizer files a checkpoint carries (hf_tokenizer_files.hpp), made from data/gpt2.tiktoken,
// against GPT-2's own Hugging Face files (data/gpt2-hf, from openai-whisper; an independent copy):
// the same vocabulary and the same merges in the same order. That transformers itself loads them
// and encodes like gemma3-tokenize is checked by tools/check_hf_tokenizer.py in scripts/test.sh.
// Also the places the programs look for the ranks file (examples/find_tokenizer.hpp).
#include <doctest/doctest.h>

#include <gemma3/text/hf_tokenizer_files.hpp>
#include <gemma3/text/tokenizer.hpp>

#include "../examples/find_tokenizer.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using namespace gemma3;
namespace fs = std::filesystem;

namespace {

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "cannot open " << path << " (scripts/fetch_tokenizer.sh fetches it)");
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<std::string> lines_after_header(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    std::string line;
    std::getline(in, line);  // "#version: ..." (the header's wording differs between writers)
    CHECK(line.rfind("#version", 0) == 0);
    while (std::getline(in, line)) {
        if (!line.empty()) lines.push_back(line);
    }
    return lines;
}

const std::string& find(const std::vector<NamedText>& files, const std::string& name) {
    for (const auto& f : files) {
        if (f.name == name) return f.contents;
    }
    FAIL("no file " << name);
    static const std::string none;
    return none;
}

std::vector<std::string> gpt2_tokens(const Tokenizer& tokenizer) {
    std::vector<std::string> tokens;
    for (std::int32_t id = 0; id < tokenizer.eot_token(); ++id) tokens.emplace_back(tokenizer.token_bytes(id));
    return tokens;
}

}  // namespace

TEST_CASE("GPT-2's tokenizer files made from the tiktoken ranks equal GPT-2's published vocab.json and merges.txt") {
    const fs::path source = GEMMA3_SOURCE_DIR;
    const auto tokenizer = Tokenizer::from_tiktoken_file(source / "data" / "gpt2.tiktoken");
    const auto files = hf_tokenizer_files(gpt2_tokens(tokenizer), Tokenizer::eot_text, 32768);

    const auto vocab = nlohmann::json::parse(find(files, "vocab.json"));
    const auto published_vocab = nlohmann::json::parse(read_bytes(source / "data" / "gpt2-hf" / "vocab.json"));
    CHECK(vocab.size() == 50257);
    CHECK(vocab == published_vocab);

    const auto merges = lines_after_header(find(files, "merges.txt"));
    const auto published_merges = lines_after_header(read_bytes(source / "data" / "gpt2-hf" / "merges.txt"));
    CHECK(merges.size() == 50000);
    CHECK(merges == published_merges);

    // tokenizer.json holds the same vocabulary and merges, and <|endoftext|> as a special token.
    const auto tokenizer_json = nlohmann::json::parse(find(files, "tokenizer.json"));
    CHECK(tokenizer_json.at("model").at("type") == "BPE");
    CHECK(tokenizer_json.at("model").at("vocab") == vocab);
    const auto& pairs = tokenizer_json.at("model").at("merges");
    REQUIRE(pairs.size() == merges.size());
    for (std::size_t i = 0; i < merges.size(); i += 997) {
        CHECK(pairs[i][0].get<std::string>() + " " + pairs[i][1].get<std::string>() == merges[i]);
    }
    CHECK(tokenizer_json.at("added_tokens").at(0).at("id") == 50256);
    CHECK(tokenizer_json.at("added_tokens").at(0).at("content") == "<|endoftext|>");
    CHECK(tokenizer_json.at("pre_tokenizer").at("type") == "ByteLevel");

    const auto config = nlohmann::json::parse(find(files, "tokenizer_config.json"));
    CHECK(config.at("bos_token") == "<|endoftext|>");
    CHECK(config.at("eos_token") == "<|endoftext|>");
    CHECK(config.at("model_max_length") == 32768);
    const auto generation = nlohmann::json::parse(hf_generation_config(50256).contents);
    CHECK(generation.at("bos_token_id") == 50256);
    CHECK(generation.at("eos_token_id") == 50256);
}

TEST_CASE("ranks that are not a byte-level BPE vocabulary are refused") {
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
    tokens.push_back("ab");
    tokens.push_back("abc");  // "ab" + "c": fine
    CHECK(hf_tokenizer_files(tokens, "<|endoftext|>", 64).size() == 4);

    auto unreachable = tokens;
    unreachable.push_back("xyz");  // no "xy" or "yz" below it: no single merge makes it
    CHECK_THROWS_WITH_AS(hf_tokenizer_files(unreachable, "<|endoftext|>", 64),
                         "BPE ranks: the token of rank 258 is not a merge of two tokens of lower rank",
                         std::invalid_argument);
    auto missing_byte = tokens;
    missing_byte[7] = "qq";
    CHECK_THROWS_AS(hf_tokenizer_files(missing_byte, "<|endoftext|>", 64), std::invalid_argument);
}

TEST_CASE("the programs look for the ranks file at --tokenizer, else $GEMMA3_TOKENIZER, else beside their install or checkout") {
    ::unsetenv("GEMMA3_TOKENIZER");
    CHECK(programs::tokenizer_candidates("mine.tiktoken") == std::vector<fs::path>{"mine.tiktoken"});
    const auto places = programs::tokenizer_candidates("");
    // This test binary lives in <build>/tests: the install layout, then the checkout layout.
    const auto bin = fs::read_symlink("/proc/self/exe").parent_path();
    REQUIRE(places.size() == 3);
    CHECK(places[0] == bin.parent_path() / "share" / "gemma3" / "gpt2.tiktoken");
    CHECK(places[1] == bin.parent_path().parent_path() / "data" / "gpt2.tiktoken");
    CHECK(places[2] == fs::path(GEMMA3_SOURCE_DATA_DIR) / "gpt2.tiktoken");
    const auto found = programs::find_tokenizer("");  // the first of them that exists
    CHECK((found == places[1] || found == places[2]));
    CHECK_THROWS_WITH(programs::find_tokenizer("/nonexistent/ranks"), "--tokenizer /nonexistent/ranks: no such file");

    ::setenv("GEMMA3_TOKENIZER", "/nonexistent/env.tiktoken", 1);
    CHECK(programs::tokenizer_candidates("") == std::vector<fs::path>{"/nonexistent/env.tiktoken"});
    CHECK_THROWS_WITH(programs::find_tokenizer(""), "GEMMA3_TOKENIZER=/nonexistent/env.tiktoken: no such file");
    CHECK_THROWS_WITH(programs::find_tokenizer("/nonexistent/flag"), "--tokenizer /nonexistent/flag: no such file");
    ::unsetenv("GEMMA3_TOKENIZER");
}
