// GPT-2 tokenizer tests. Expected ids come from tiktoken (tools/make_tokenizer_fixtures.py, which
// loads the same data/gpt2.tiktoken); the data files come from scripts/fetch_tokenizer.sh and
// scripts/fetch_corpus.sh, and the tests fail (not skip) when they are missing.
#include <doctest/doctest.h>

#include <gemma3/text/tokenizer.hpp>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using gemma3::Tokenizer;
using gemma3::TokenizerError;
namespace fs = std::filesystem;

namespace {

const fs::path source_dir = GEMMA3_SOURCE_DIR;
const fs::path fixture_dir = fs::path(GEMMA3_TEST_DATA_DIR) / "tokenizer";

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "cannot open " << path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A data file that a fetch script provides: missing means the test fails, with what to run.
fs::path data_file(const char* relative, const char* script) {
    const fs::path path = source_dir / relative;
    REQUIRE_MESSAGE(fs::exists(path), path.string() << " is missing: run " << std::string(script)
                                                    << " (it obtains the file; nothing downloads at test time)");
    return path;
}

const Tokenizer& gpt2() {
    static const Tokenizer tokenizer =
        Tokenizer::from_tiktoken_file(data_file("data/gpt2.tiktoken", "scripts/fetch_tokenizer.sh"));
    return tokenizer;
}

const nlohmann::json& hard_case_expectations() {
    static const nlohmann::json expected = nlohmann::json::parse(read_bytes(fixture_dir / "hard_cases.expected.json"));
    return expected;
}

std::vector<std::int32_t> ids_of(const nlohmann::json& array) { return array.get<std::vector<std::int32_t>>(); }

// Tokens around `at`, each shown as id:'bytes'.
std::string context(const Tokenizer& tokenizer, const std::vector<std::int32_t>& ids, std::size_t at) {
    std::ostringstream out;
    const std::size_t begin = at >= 5 ? at - 5 : 0, end = std::min(ids.size(), at + 6);
    for (std::size_t i = begin; i < end; ++i) {
        out << (i == at ? " >>" : " ") << ids[i] << ":'"
            << gemma3::detail::bpe::printable_bytes(tokenizer.token_bytes(ids[i])) << "'";
    }
    return out.str();
}

// Checks got == want; on a mismatch reports the first differing position with context.
void check_same_ids(const std::vector<std::int32_t>& got, const std::vector<std::int32_t>& want,
                    const std::string& what) {
    if (got == want) {
        CHECK(got == want);
        return;
    }
    const auto mismatch = std::mismatch(got.begin(), got.end(), want.begin(), want.end());
    const auto at = static_cast<std::size_t>(mismatch.first - got.begin());
    FAIL_CHECK(what << ": ids differ from tiktoken's at index " << at << " (we have " << got.size()
                    << " ids, tiktoken " << want.size() << ")\n  ours:    " << context(gpt2(), got, at)
                    << "\n  tiktoken:" << context(gpt2(), want, at));
}

std::vector<std::string> split_lines_keep_newline(const std::string& data) {
    std::vector<std::string> lines;
    std::size_t start = 0;
    while (start < data.size()) {
        const std::size_t newline = data.find('\n', start);
        const std::size_t end = newline == std::string::npos ? data.size() : newline + 1;
        lines.push_back(data.substr(start, end - start));
        start = end;
    }
    return lines;
}

// A scratch directory for malformed files, removed afterwards.
struct ScratchDir {
    fs::path path;
    ScratchDir() {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() /
               ("gemma3_tokenizer_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::create_directories(path);
    }
    ~ScratchDir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
    fs::path write(const std::string& name, const std::string& contents) const {
        std::ofstream(path / name, std::ios::binary) << contents;
        return path / name;
    }
};

// The error message of `load()`, or "" if it did not throw TokenizerError.
template <class Load>
std::string error_of(Load load) {
    try {
        load();
    } catch (const TokenizerError& e) {
        return e.what();
    }
    return "";
}

// First lines of gpt2.tiktoken, for building malformed variants.
std::string first_ranks_lines(std::size_t count) {
    const std::string all = read_bytes(data_file("data/gpt2.tiktoken", "scripts/fetch_tokenizer.sh"));
    std::size_t pos = 0;
    for (std::size_t i = 0; i < count; ++i) pos = all.find('\n', pos) + 1;
    return all.substr(0, pos);
}

}  // namespace

TEST_CASE("the hard cases encode to tiktoken's ids, as a whole file and line by line") {
    const std::string data = read_bytes(fixture_dir / "hard_cases.txt");
    const auto& expected = hard_case_expectations();
    REQUIRE(expected["input_sha256"].get<std::string>().size() == 64);
    CHECK(gemma3::detail::bpe::utf8_valid_prefix(data) == expected["first_invalid_byte"].get<std::size_t>());

    check_same_ids(gpt2().encode_ordinary(data), ids_of(expected["whole_file"]), "hard_cases.txt as one text");

    const auto lines = split_lines_keep_newline(data);
    REQUIRE(lines.size() == expected["lines"].size());
    for (std::size_t i = 0; i < lines.size(); ++i) {
        check_same_ids(gpt2().encode_ordinary(lines[i]), ids_of(expected["lines"][i]),
                       "hard_cases.txt line " + std::to_string(i + 1) + " '" +
                           gemma3::detail::bpe::printable_bytes(lines[i]) + "'");
    }
}

TEST_CASE("the KJV corpus encodes to tiktoken's ids, every one of them") {
    const fs::path corpus_path = data_file("data/kjv/kjv.txt", "scripts/fetch_corpus.sh");
    const auto meta = nlohmann::json::parse(read_bytes(fixture_dir / "kjv.meta.json"));
    const std::string corpus = read_bytes(corpus_path);
    REQUIRE_MESSAGE(corpus.size() == meta["corpus_bytes"].get<std::size_t>(),
                    "corpus differs: " << corpus_path << " has " << corpus.size() << " bytes, the fixture was made from "
                                       << meta["corpus_bytes"] << " (sha256 " << meta["corpus_sha256"]
                                       << "); rerun scripts/fetch_corpus.sh or regenerate the fixture");

    const std::string ids_bytes = read_bytes(fixture_dir / meta["ids_file"].get<std::string>());
    REQUIRE(ids_bytes.size() == 2 * meta["token_count"].get<std::size_t>());
    std::vector<std::int32_t> expected(ids_bytes.size() / 2);
    for (std::size_t i = 0; i < expected.size(); ++i) {
        expected[i] = static_cast<unsigned char>(ids_bytes[2 * i]) | (static_cast<unsigned char>(ids_bytes[2 * i + 1]) << 8);
    }

    const auto ids = gpt2().encode_ordinary(corpus);
    if (ids != expected) {
        // Tell a changed corpus apart from a tokenizer bug: same size is not same text.
        INFO("if the corpus text itself differs, its SHA-256 will not be " << meta["corpus_sha256"]
                                                                           << " (check with sha256sum)");
    }
    check_same_ids(ids, expected, "data/kjv/kjv.txt");
    CHECK(gpt2().encode(corpus, true) == ids);  // no special tokens in the corpus
    CHECK(gpt2().decode(ids) == corpus);
}

TEST_CASE("<|endoftext|> is ordinary text for encode_ordinary and 50256 only when allowed") {
    const Tokenizer& t = gpt2();
    CHECK(t.eot_token() == 50256);
    CHECK(t.vocab_size() == 50257);
    CHECK(t.encode("<|endoftext|>", true) == std::vector<std::int32_t>{50256});
    const auto plain = t.encode_ordinary("<|endoftext|>");
    CHECK(plain.size() > 1);
    CHECK(std::find(plain.begin(), plain.end(), 50256) == plain.end());
    CHECK(t.encode("<|endoftext|>", false) == plain);
    CHECK(t.decode(std::vector<std::int32_t>{50256}) == "<|endoftext|>");

    // tiktoken's encode(text, allowed_special={"<|endoftext|>"}) on every valid line and on the
    // file's valid UTF-8 prefix.
    const std::string data = read_bytes(fixture_dir / "hard_cases.txt");
    const auto& expected = hard_case_expectations();
    const auto lines = split_lines_keep_newline(data);
    int compared = 0;
    for (std::size_t i = 0; i < lines.size(); ++i) {
        if (expected["lines_allow_special"][i].is_null()) continue;
        check_same_ids(t.encode(lines[i], true), ids_of(expected["lines_allow_special"][i]),
                       "allow_special, hard_cases.txt line " + std::to_string(i + 1));
        ++compared;
    }
    CHECK(compared > 40);
    const std::string prefix = data.substr(0, expected["first_invalid_byte"].get<std::size_t>());
    const auto with_special = t.encode(prefix, true);
    check_same_ids(with_special, ids_of(expected["valid_prefix_allow_special"]), "allow_special, valid prefix");
    CHECK(std::count(with_special.begin(), with_special.end(), 50256) == 6);
}

TEST_CASE("decode(encode(x)) gives back x for the hard cases and for random bytes") {
    const Tokenizer& t = gpt2();
    const std::string data = read_bytes(fixture_dir / "hard_cases.txt");
    CHECK(t.decode(t.encode_ordinary(data)) == data);
    CHECK(t.decode(t.encode(data, true)) == data);
    for (const auto& line : split_lines_keep_newline(data)) CHECK(t.decode(t.encode_ordinary(line)) == line);

    // Random strings: raw bytes (mostly invalid UTF-8), and mixes of tricky fragments.
    const std::vector<std::string> fragments = {
        "a", "Z", " ", "  ", "\t", "\n", "\r\n", "'s", "'", "'ll", "1", "42", "!", "...", "\xc3\xa9",
        "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xc2\xa0", "\xe3\x80\x80", "\xc2\x85", "<|endoftext|>", "\xff",
        "\x80", "\xe2\x82", "\xed\xa0\x80", "\xcc\x81", "\x00"};
    std::mt19937 rng(12345);
    for (int round = 0; round < 3000; ++round) {
        std::string text;
        const int length = std::uniform_int_distribution<int>(0, round % 10 == 0 ? 400 : 40)(rng);
        if (round % 2 == 0) {
            for (int i = 0; i < length; ++i) text.push_back(static_cast<char>(rng() & 0xFF));
        } else {
            for (int i = 0; i < length; ++i) {
                text += fragments[std::uniform_int_distribution<std::size_t>(0, fragments.size() - 1)(rng)];
            }
        }
        const auto ids = t.encode_ordinary(text);
        REQUIRE_MESSAGE(t.decode(ids) == text, "round trip failed for '" << gemma3::detail::bpe::printable_bytes(text, 500) << "'");
        REQUIRE(t.decode(t.encode(text, true)) == text);
        for (auto id : ids) REQUIRE((id >= 0 && id < 50256));
    }
}

TEST_CASE("the ASCII fast path cuts the same pieces as PCRE2 alone") {
    const Tokenizer& t = gpt2();
    const std::string corpus = read_bytes(data_file("data/kjv/kjv.txt", "scripts/fetch_corpus.sh"));
    CHECK(t.split(corpus, true) == t.split(corpus, false));
    const std::string data = read_bytes(fixture_dir / "hard_cases.txt");
    const std::string valid = data.substr(0, gemma3::detail::bpe::utf8_valid_prefix(data));
    CHECK(t.split(valid, true) == t.split(valid, false));

    // Random text where ASCII meets non-ASCII letters, digits and (Unicode) spaces.
    const std::vector<std::string> fragments = {
        "a", "B", "z", " ", " ", "  ", "\t", "\n", "\r", "\x0b", "\x0c", "'", "s", "t", "l", "v", "e", "r", "d", "m",
        "0", "9", "!", "-", "_", "\xc3\xa9", "\xd9\xa3", "\xc2\xa0", "\xe3\x80\x80", "\xc2\x85", "\xe2\x80\xa8",
        "\xf0\x9f\x98\x80", "\xcc\x81", "\xe2\x85\xab"};
    std::mt19937 rng(777);
    for (int round = 0; round < 20000; ++round) {
        std::string text;
        const int length = std::uniform_int_distribution<int>(1, 12)(rng);
        for (int i = 0; i < length; ++i) {
            text += fragments[std::uniform_int_distribution<std::size_t>(0, fragments.size() - 1)(rng)];
        }
        REQUIRE_MESSAGE(t.split(text, true) == t.split(text, false),
                        "pieces differ for '" << gemma3::detail::bpe::printable_bytes(text) << "'");
    }
}

TEST_CASE("every Unicode code point falls in the class tiktoken's pattern gives it") {
    // Fixture lines: "first last class" (hex), class L letter, N number, W whitespace, O other.
    // A class is read from the pieces: "a"+c is one piece iff c is a letter, "1"+c iff a number,
    // c+"!" iff "other" (for c != ' '), as the fixture script reads tiktoken.
    const Tokenizer& t = gpt2();
    auto utf8 = [](char32_t c) {
        std::string s;
        if (c < 0x80) {
            s += static_cast<char>(c);
        } else if (c < 0x800) {
            s += static_cast<char>(0xC0 | (c >> 6));
            s += static_cast<char>(0x80 | (c & 63));
        } else if (c < 0x10000) {
            s += static_cast<char>(0xE0 | (c >> 12));
            s += static_cast<char>(0x80 | ((c >> 6) & 63));
            s += static_cast<char>(0x80 | (c & 63));
        } else {
            s += static_cast<char>(0xF0 | (c >> 18));
            s += static_cast<char>(0x80 | ((c >> 12) & 63));
            s += static_cast<char>(0x80 | ((c >> 6) & 63));
            s += static_cast<char>(0x80 | (c & 63));
        }
        return s;
    };
    auto class_of = [&](char32_t cp) {
        if (cp == ' ') return 'W';
        const std::string c = utf8(cp);
        if (t.split("a" + c).size() == 1) return 'L';
        if (t.split("1" + c).size() == 1) return 'N';
        if (t.split(c + "!").size() == 1) return 'O';
        return 'W';
    };
    std::istringstream table(read_bytes(fixture_dir / "unicode_classes.txt"));
    std::string line;
    std::size_t covered = 0, wrong = 0;
    while (std::getline(table, line)) {
        if (line.empty() || line[0] == '#') continue;
        std::istringstream fields(line);
        unsigned long first = 0, last = 0;
        char expected = 0;
        fields >> std::hex >> first >> last >> expected;
        REQUIRE_MESSAGE(!fields.fail(), "bad line in unicode_classes.txt: " << line);
        for (unsigned long cp = first; cp <= last; ++cp) {
            const char got = class_of(static_cast<char32_t>(cp));
            if (got != expected && wrong++ < 10) {
                char name[16];
                std::snprintf(name, sizeof name, "U+%04lX", cp);
                FAIL_CHECK(name << ": class " << std::string(1, got) << ", tiktoken says " << std::string(1, expected));
            }
        }
        covered += last - first + 1;
    }
    CHECK(covered == 0x110000 - 0x800);  // every code point except the surrogates
    CHECK(wrong == 0);
}

TEST_CASE("Hugging Face vocab.json + merges.txt load into the same tokenizer as gpt2.tiktoken") {
    const Tokenizer hf = Tokenizer::from_hf_files(data_file("data/gpt2-hf/vocab.json", "scripts/fetch_tokenizer.sh"),
                                                  data_file("data/gpt2-hf/merges.txt", "scripts/fetch_tokenizer.sh"));
    const Tokenizer& tk = gpt2();
    REQUIRE(hf.vocab_size() == tk.vocab_size());
    REQUIRE(hf.eot_token() == tk.eot_token());
    std::size_t differing = 0;
    for (std::int32_t id = 0; id < tk.vocab_size(); ++id) differing += hf.token_bytes(id) != tk.token_bytes(id);
    CHECK(differing == 0);
    const std::string data = read_bytes(fixture_dir / "hard_cases.txt");
    check_same_ids(hf.encode_ordinary(data), ids_of(hard_case_expectations()["whole_file"]), "HF loader, hard cases");
    CHECK(hf.encode(data, true) == tk.encode(data, true));
}

TEST_CASE("malformed tiktoken files give errors that name the file and the line") {
    ScratchDir dir;
    const std::string good = first_ranks_lines(300);  // ranks 0..299, all 256 bytes included

    const fs::path missing = dir.path / "no_such.tiktoken";
    auto message = error_of([&] { Tokenizer::from_tiktoken_file(missing); });
    CHECK(message.find(missing.string()) != std::string::npos);
    CHECK(message.find("cannot open") != std::string::npos);

    struct Case {
        const char* name;
        std::string contents;
        const char* location;  // "file:line" suffix expected in the message
        const char* words;     // expected explanation
    };
    const std::vector<Case> cases = {
        {"bad_base64", good + "IGdh*mVk 300\n", ":301:", "invalid base64"},
        {"bad_padding", good + "IGdhemV 300\n", ":301:", "invalid base64"},
        {"duplicate_rank", good + "IGdhemVk 17\n", ":301:", "duplicate rank 17 (also on line 18)"},
        {"non_numeric_rank", good + "IGdhemVk 3x0\n", ":301:", "rank must be a non-negative integer"},
        {"negative_rank", good + "IGdhemVk -300\n", ":301:", "rank must be a non-negative integer"},
        {"no_rank", good + "IGdhemVk\n", ":301:", "expected '<base64 token> <rank>'"},
        {"truncated_mid_line", good + "IGdhem", ":301:", "expected '<base64 token> <rank>'"},
        {"gap_in_ranks", good + "IGdhemVk 400\n", ":301:", "out of range"},
        {"duplicate_token", good + "IQ== 300\n", ":301:", "duplicate of"},
        {"three_fields", good + "IGdhemVk 300 7\n", ":301:", "expected '<base64 token> <rank>'"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.name);
        const fs::path path = dir.write(std::string(c.name) + ".tiktoken", c.contents);
        message = error_of([&] { Tokenizer::from_tiktoken_file(path, 0); });
        CHECK_MESSAGE(message.find(path.string() + c.location) != std::string::npos, message);
        CHECK_MESSAGE(message.find(c.words) != std::string::npos, message);
    }

    // A file cut at a line boundary is only detectable by its length: GPT-2 has 50,256 ranks.
    const fs::path truncated = dir.write("truncated.tiktoken", good);
    message = error_of([&] { Tokenizer::from_tiktoken_file(truncated); });
    CHECK_MESSAGE(message.find("expected 50256 ranks") != std::string::npos, message);
    CHECK_MESSAGE(message.find("found 300") != std::string::npos, message);
    CHECK(Tokenizer::from_tiktoken_file(truncated, 0).vocab_size() == 301);

    // Without every single byte as a token, byte-level BPE cannot encode arbitrary bytes.
    const fs::path few = dir.write("few.tiktoken", first_ranks_lines(100));
    message = error_of([&] { Tokenizer::from_tiktoken_file(few, 0); });
    CHECK_MESSAGE(message.find("no token for the single byte") != std::string::npos, message);

    const fs::path empty = dir.write("empty.tiktoken", "");
    message = error_of([&] { Tokenizer::from_tiktoken_file(empty, 0); });
    CHECK_MESSAGE(message.find("no tokens") != std::string::npos, message);
}

TEST_CASE("malformed Hugging Face files give clear errors") {
    ScratchDir dir;
    const std::string vocab = read_bytes(data_file("data/gpt2-hf/vocab.json", "scripts/fetch_tokenizer.sh"));
    const std::string merges = read_bytes(data_file("data/gpt2-hf/merges.txt", "scripts/fetch_tokenizer.sh"));
    const fs::path good_vocab = dir.write("vocab.json", vocab), good_merges = dir.write("merges.txt", merges);
    CHECK(Tokenizer::from_hf_files(good_vocab, good_merges).vocab_size() == 50257);

    auto message = error_of([&] { Tokenizer::from_hf_files(dir.path / "nope.json", good_merges); });
    CHECK_MESSAGE(message.find("nope.json") != std::string::npos, message);

    const fs::path bad_json = dir.write("bad.json", vocab.substr(0, 1000));
    message = error_of([&] { Tokenizer::from_hf_files(bad_json, good_merges); });
    CHECK_MESSAGE(message.find(bad_json.string() + ": not valid JSON") != std::string::npos, message);
    // A number beyond double's range is nlohmann's out_of_range, not a parse error: still ours.
    for (const char* text : {"[1e999]", "{\"!\": 1e999}"}) {
        const fs::path huge = dir.write("huge.json", text);
        message = error_of([&] { Tokenizer::from_hf_files(huge, good_merges); });
        CHECK_MESSAGE(message.find(huge.string()) != std::string::npos, message);
    }
    // Ids that are not whole numbers in range are refused, naming the token and the value
    // (4294967296 used to pass the integer check and be compared as an int64).
    for (const char* id : {"1.5", "-1", "4294967296", "1e300", "\"0\""}) {
        const fs::path odd_id = dir.write("odd_id.json", std::string("{\"!\": ") + id + "}");
        message = error_of([&] { Tokenizer::from_hf_files(odd_id, good_merges); });
        CHECK_MESSAGE(message.find("id of '!': value") != std::string::npos, message);
    }

    // Line 3 of merges.txt ("Ġ a", the 2nd merge) with a third field.
    std::string bad = merges;
    const std::size_t line3 = bad.find('\n', bad.find('\n') + 1) + 1;
    bad.insert(bad.find('\n', line3), " extra");
    const fs::path bad_merges = dir.write("bad_merges.txt", bad);
    message = error_of([&] { Tokenizer::from_hf_files(good_vocab, bad_merges); });
    CHECK_MESSAGE(message.find(bad_merges.string() + ":3:") != std::string::npos, message);

    // Two merges swapped: vocab.json no longer agrees with the ranks the merges imply.
    std::string swapped = merges;
    const std::size_t line2 = swapped.find('\n') + 1, end2 = swapped.find('\n', line2), end3 = swapped.find('\n', end2 + 1);
    const std::string first = swapped.substr(line2, end2 - line2), second = swapped.substr(end2 + 1, end3 - end2 - 1);
    swapped.replace(line2, end3 - line2, second + "\n" + first);
    const fs::path swapped_merges = dir.write("swapped_merges.txt", swapped);
    message = error_of([&] { Tokenizer::from_hf_files(good_vocab, swapped_merges); });
    CHECK_MESSAGE(message.find("has id") != std::string::npos, message);

    // Merges cut short (a truncated file).
    const fs::path short_merges = dir.write("short_merges.txt", merges.substr(0, merges.rfind('\n', merges.size() / 2) + 1));
    message = error_of([&] { Tokenizer::from_hf_files(good_vocab, short_merges); });
    CHECK_MESSAGE(message.find("no rank") != std::string::npos, message);

    // A character outside GPT-2's byte alphabet: line 2 "\u0120 t" becomes "\u4e2d t".
    std::string odd = merges;
    odd.replace(line2, 2, "\xe4\xb8\xad");
    const fs::path odd_merges = dir.write("odd_merges.txt", odd);
    message = error_of([&] { Tokenizer::from_hf_files(good_vocab, odd_merges); });
    CHECK_MESSAGE(message.find(odd_merges.string() + ":2:") != std::string::npos, message);
    CHECK_MESSAGE(message.find("outside GPT-2's byte-to-unicode alphabet") != std::string::npos, message);
}

TEST_CASE("decode rejects ids outside the vocabulary, naming the id and its position") {
    const Tokenizer& t = gpt2();
    auto message = error_of([&] { t.decode(std::vector<std::int32_t>{31373, 50257}); });
    CHECK_MESSAGE(message.find("token id 50257 at position 1 is out of range") != std::string::npos, message);
    message = error_of([&] { t.decode(std::vector<std::int32_t>{-1}); });
    CHECK_MESSAGE(message.find("token id -1") != std::string::npos, message);
    CHECK(t.decode(std::vector<std::int32_t>{}).empty());
    CHECK(t.decode(std::vector<std::int32_t>{31373, 995}) == "hello world");
}

TEST_CASE("extreme inputs finish and round-trip: huge runs, one giant piece, invalid bytes") {
    const Tokenizer& t = gpt2();
    std::string ideographic_spaces, accented_letters;  // long runs that only PCRE2 can split
    for (int i = 0; i < (1 << 18); ++i) {
        ideographic_spaces += "\xe3\x80\x80";
        accented_letters += "\xc3\xa9";
    }
    const std::vector<std::string> texts = {
        ideographic_spaces + "x",
        accented_letters,
        std::string(1 << 20, ' ') + "x",      // \s+(?!\S) over a 1 MiB run
        std::string(1 << 20, '\n'),            // \s++$
        std::string(1 << 20, 'a'),             // one 1 MiB piece: the heap merge
        std::string(1, '\xff').append(200000, 'b').append(" c"),  // invalid first byte: one piece
        std::string(100000, '!'),
    };
    for (const auto& text : texts) {
        const auto ids = t.encode_ordinary(text);
        CHECK(t.decode(ids) == text);
        CHECK(ids.size() < text.size());
    }
}

TEST_CASE("one Tokenizer can encode from several threads at once") {
    const Tokenizer& t = gpt2();
    const std::string data = read_bytes(fixture_dir / "hard_cases.txt");
    const auto expected = t.encode_ordinary(data);
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    const Tokenizer copy = t;  // copies share the tables
    for (int k = 0; k < 4; ++k) {
        threads.emplace_back([&, k] {
            const Tokenizer& use = k % 2 ? copy : t;
            for (int i = 0; i < 50; ++i) failures += use.encode_ordinary(data) != expected;
        });
    }
    for (auto& thread : threads) thread.join();
    CHECK(failures == 0);
}
