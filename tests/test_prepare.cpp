// Corpus preparation tests (gemma3/prepare.hpp, gemma3-prepare).
//
// References: tiktoken's ids of the whole KJV corpus (tests/data/tokenizer/kjv.ids.u16le, made by
// tools/make_tokenizer_fixtures.py), tiktoken's ids for the cut counterexamples and Python's
// bytes.decode("utf-8", "replace") for U+FFFD substitution (both pasted below), and, for other
// texts, the tokenizer's own whole-document encode_ordinary (itself tested equal to tiktoken in
// test_tokenizer.cpp). Split positions are derived by hand from the documented rule.
// Data files come from scripts/fetch_tokenizer.sh and scripts/fetch_corpus.sh; missing ones fail.
#include <doctest/doctest.h>

#include <gemma3/prepare.hpp>

#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace fs = std::filesystem;
using gemma3::PrepareError;
using gemma3::PrepareOptions;
using gemma3::PrepareResult;
using gemma3::Tokenizer;

namespace {

const fs::path source_dir = GEMMA3_SOURCE_DIR;

fs::path data_file(const char* relative, const char* script) {
    const fs::path path = source_dir / relative;
    REQUIRE_MESSAGE(fs::exists(path), path.string() << " is missing: run " << std::string(script));
    return path;
}

fs::path tokenizer_path() { return data_file("data/gpt2.tiktoken", "scripts/fetch_tokenizer.sh"); }

const Tokenizer& gpt2() {
    static const Tokenizer tokenizer = Tokenizer::from_tiktoken_file(tokenizer_path());
    return tokenizer;
}

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "cannot open " << path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<std::int32_t> read_u16(const fs::path& path) {
    const std::string bytes = read_bytes(path);
    REQUIRE(bytes.size() % 2 == 0);
    std::vector<std::int32_t> ids(bytes.size() / 2);
    for (std::size_t i = 0; i < ids.size(); ++i) {
        ids[i] = static_cast<unsigned char>(bytes[2 * i]) | (static_cast<unsigned char>(bytes[2 * i + 1]) << 8);
    }
    return ids;
}

struct ScratchDir {
    fs::path path;
    ScratchDir() {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() /
               ("gemma3_prepare_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~ScratchDir() {
        std::error_code ignored;
        fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ignored);
        fs::remove_all(path, ignored);
    }
    fs::path write(const fs::path& relative, const std::string& contents) const {
        const fs::path file = path / relative;
        fs::create_directories(file.parent_path());
        std::ofstream(file, std::ios::binary) << contents;
        return file;
    }
};

PrepareOptions options_for(std::vector<fs::path> inputs, const fs::path& out_dir) {
    PrepareOptions options;
    options.inputs = std::move(inputs);
    options.out_dir = out_dir;
    options.tokenizer_path = tokenizer_path();
    return options;
}

// Train and validation back in stream order: chunk i (of `chunk` tokens) came from validation
// iff is_validation(i). Fails if the files do not fit that pattern exactly.
std::vector<std::int32_t> reassemble(const fs::path& out_dir, std::size_t chunk,
                                     const std::function<bool(std::size_t)>& is_validation) {
    const auto train = read_u16(out_dir / "train.bin"), validation = read_u16(out_dir / "validation.bin");
    std::vector<std::int32_t> stream;
    std::size_t t = 0, v = 0;
    for (std::size_t i = 0; t < train.size() || v < validation.size(); ++i) {
        const auto& from = is_validation(i) ? validation : train;
        std::size_t& at = is_validation(i) ? v : t;
        // Only the very last chunk of the stream may be short.
        REQUIRE_MESSAGE(at < from.size(), "chunk " << i << " is missing from " << (&from == &train ? "train" : "validation"));
        const std::size_t take = std::min(chunk, from.size() - at);
        stream.insert(stream.end(), from.begin() + static_cast<std::ptrdiff_t>(at),
                      from.begin() + static_cast<std::ptrdiff_t>(at + take));
        at += take;
        if (take < chunk) REQUIRE_MESSAGE((t == train.size() && v == validation.size()), "short chunk " << i << " mid-stream");
    }
    return stream;
}

// f = 0.1 -> round((i+1)/10) > round(i/10) -> i = 4, 14, 24, ... (worked out by hand).
bool tenth(std::size_t i) { return i % 10 == 4; }

// The ids of `documents` encoded one by one (the reference), with 50256 between them if asked.
std::vector<std::int32_t> reference_stream(const std::vector<std::string>& documents, bool eot) {
    std::vector<std::int32_t> ids;
    for (std::size_t d = 0; d < documents.size(); ++d) {
        if (eot && d > 0) ids.push_back(50256);
        const auto part = gpt2().encode_ordinary(documents[d]);
        ids.insert(ids.end(), part.begin(), part.end());
    }
    return ids;
}

// Encodes `text` cut at every position next_safe_cut allows.
std::vector<std::int32_t> encode_cut_everywhere(std::string_view text, std::size_t* cuts = nullptr) {
    std::vector<std::int32_t> ids;
    std::size_t begin = 0, count = 0;
    while (begin < text.size()) {
        std::size_t end = gemma3::next_safe_cut(text, begin + 1);
        if (end == std::string_view::npos) end = text.size();
        REQUIRE(end > begin);
        gpt2().encode_ordinary_into(text.substr(begin, end - begin), ids);
        begin = end;
        ++count;
    }
    if (cuts) *cuts = count - 1;
    return ids;
}

// A long, varied text of several documents' worth, with line breaks, blank lines, CRLF,
// contractions, digits, Unicode letters and spaces.
std::string varied_text(unsigned seed, std::size_t words) {
    static const std::vector<std::string> vocabulary = {
        "the", "LORD", "said", "don't", "we'll", "they're", "I'm", " ", "  ", "\n", "\n\n", "\r\n", "\t", "42",
        "3.14", "café", "naïve", "日本語", "😀", "\xc2\xa0", "\xe3\x80\x80", "-", "--", "!", "?", "'", "'s", "x"};
    std::mt19937 rng(seed);
    std::string text;
    for (std::size_t i = 0; i < words; ++i) {
        text += vocabulary[rng() % vocabulary.size()];
        if (rng() % 3 != 0) text += ' ';
    }
    return text;
}

// The message of the PrepareError `run` throws, or "" if it throws none.
std::string error_of(const std::function<void()>& run) {
    try {
        run();
    } catch (const PrepareError& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("cutting text at every safe position gives exactly the ids of the whole text") {
    SUBCASE("random strings of tricky pieces") {
        // Whitespace of every kind next to line breaks, contractions across cuts, Unicode spaces.
        const std::vector<std::string> alphabet = {"a",  "b",  "Z",  " ",    "  ", "\n", "\n\n", "\t", "\r", "'",
                                                   "s",  "ll", "re", "1",    "23", ".",  "!",    "é",  "-",  " '",
                                                   "漢", "😀", "\x1c", "\xc2\xa0", "\xc2\x85", "\xe3\x80\x80"};
        std::mt19937 rng(7);
        std::size_t cuts = 0;
        for (int n = 0; n < 20000; ++n) {
            std::string text;
            const std::size_t length = 1 + rng() % 30;
            for (std::size_t i = 0; i < length; ++i) text += alphabet[rng() % alphabet.size()];
            std::size_t here = 0;
            const auto got = encode_cut_everywhere(text, &here);
            cuts += here;
            if (got != gpt2().encode_ordinary(text)) {
                FAIL_CHECK("cut encoding differs for '" << gemma3::detail::bpe::printable_bytes(text, 200) << "'");
            }
        }
        CHECK(cuts > 5000);  // the rules do fire
    }
    SUBCASE("the tokenizer's hard cases") {
        const std::string all = read_bytes(fs::path(GEMMA3_TEST_DATA_DIR) / "tokenizer" / "hard_cases.txt");
        const std::string text = all.substr(0, gemma3::detail::bpe::utf8_valid_prefix(all));
        std::size_t cuts = 0;
        CHECK(encode_cut_everywhere(text, &cuts) == gpt2().encode_ordinary(text));
        CHECK(cuts > 10);
    }
    SUBCASE("the KJV corpus, against tiktoken's ids") {
        const std::string corpus = read_bytes(data_file("data/kjv/kjv.txt", "scripts/fetch_corpus.sh"));
        const auto tiktoken_ids = read_u16(fs::path(GEMMA3_TEST_DATA_DIR) / "tokenizer" / "kjv.ids.u16le");
        std::size_t cuts = 0;
        CHECK(encode_cut_everywhere(corpus, &cuts) == tiktoken_ids);
        MESSAGE("KJV cut at " << cuts << " places");
        CHECK(cuts > 600000);
    }
}

TEST_CASE("no cut after a newline that follows whitespace: there the pieces would change") {
    // tiktoken: "a\n\nb" -> [64, 198, 198, 65], but "a\n\n" + "b" -> [64, 628] + [65]. A cut after
    // every newline followed by non-whitespace would get this wrong; KJV has such blank lines.
    CHECK(gpt2().encode_ordinary("a\n\nb") == std::vector<std::int32_t>{64, 198, 198, 65});
    CHECK(gpt2().encode_ordinary("a\n\n") == std::vector<std::int32_t>{64, 628});
    CHECK(gemma3::next_safe_cut("a\n\nb", 0) == std::string_view::npos);
    CHECK(gemma3::next_safe_cut("a\r\nb", 0) == std::string_view::npos);
    CHECK(gemma3::next_safe_cut("a \nb", 2) == std::string_view::npos);
    CHECK(gemma3::next_safe_cut("a\nb", 0) == 2);   // rule A
    CHECK(gemma3::next_safe_cut("ab cd", 0) == 2);  // rule B: before the space
    CHECK(gemma3::next_safe_cut("1 2", 0) == std::string_view::npos);
}

TEST_CASE("invalid UTF-8 is replaced like Python's decode(errors='replace')") {
    struct Case {
        std::string in, want;
        std::uint64_t replaced;
    };
    // Expected values from CPython 3: b.decode("utf-8", "replace").encode() and its U+FFFD count.
    const std::vector<Case> cases = {
        {"a\xff" "b", "a\xef\xbf\xbd" "b", 1},
        {"\xe2\x82" "c", "\xef\xbf\xbd" "c", 1},
        {"\xf0\x9f\x98", "\xef\xbf\xbd", 1},
        {"\xed\xa0\x80z", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz", 3},
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd", 2},
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 4},
        {"ok\xe2\x82\xac\xf0\x9f\x98\x80", "ok\xe2\x82\xac\xf0\x9f\x98\x80", 0},
        {"\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 3},
        {"\xf0\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 3},
        {"\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd", 2},
        {"x\xf5y", "x\xef\xbf\xbdy", 1},
        {"\xe1\x80\xe1\x80\x80", "\xef\xbf\xbd\xe1\x80\x80", 1},
        {"\xc3", "\xef\xbf\xbd", 1},
        {"line\n\xfe\xfftail", "line\n\xef\xbf\xbd\xef\xbf\xbdtail", 2},
    };
    for (const auto& c : cases) {
        CAPTURE(gemma3::detail::bpe::printable_bytes(c.in));
        std::string out;
        CHECK(gemma3::replace_invalid_utf8(c.in, out) == c.replaced);
        CHECK(out == c.want);
    }
}

TEST_CASE("validation chunks are spread evenly and number round(n f) among the first n") {
    using gemma3::is_validation_chunk;
    const std::uint32_t tenth_ppm = gemma3::validation_fraction_ppm(0.1);
    CHECK(tenth_ppm == 100000);
    for (std::uint64_t i = 0; i < 1000; ++i) CHECK(is_validation_chunk(i, tenth_ppm) == (i % 10 == 4));
    // f = 1/4: round((i+1)/4) > round(i/4) at i = 1, 5, 9, ...; f = 1/2: at i = 0, 2, 4, ...
    for (std::uint64_t i = 0; i < 1000; ++i) CHECK(is_validation_chunk(i, 250000) == (i % 4 == 1));
    for (std::uint64_t i = 0; i < 1000; ++i) CHECK(is_validation_chunk(i, 500000) == (i % 2 == 0));
    for (const double f : {0.01, 0.05, 0.123456, 0.3, 0.9}) {
        const std::uint32_t ppm = gemma3::validation_fraction_ppm(f);
        std::uint64_t count = 0;
        for (std::uint64_t n = 1; n <= 5000; ++n) {
            count += is_validation_chunk(n - 1, ppm) ? 1 : 0;
            if (count != static_cast<std::uint64_t>(std::floor(static_cast<double>(n) * f + 0.5))) {
                FAIL_CHECK("f = " << f << ": " << count << " validation chunks among the first " << n);
                break;
            }
        }
    }
    for (const double bad : {0.0, 1.0, -0.1, 1.5, 1e-9, std::nan("")}) {
        CAPTURE(bad);
        CHECK_THROWS_AS(gemma3::validation_fraction_ppm(bad), PrepareError);
    }
}

TEST_CASE("KJV end to end: train and validation, put back in the documented order, are tiktoken's ids") {
    const fs::path corpus = data_file("data/kjv/kjv.txt", "scripts/fetch_corpus.sh");
    const auto tiktoken_ids = read_u16(fs::path(GEMMA3_TEST_DATA_DIR) / "tokenizer" / "kjv.ids.u16le");
    ScratchDir scratch;
    auto options = options_for({corpus}, scratch.path / "out");
    options.unit_bytes = 4096;  // ~1,000 units, so the document is cut ~1,000 times
    options.batch_bytes = 64 * 1024;
    options.threads = 2;
    std::vector<gemma3::PrepareProgress> progress;
    options.on_progress = [&](const gemma3::PrepareProgress& p) { progress.push_back(p); };
    const PrepareResult result = gemma3::prepare_corpus(options);
    CHECK_FALSE(result.up_to_date);
    CHECK(result.documents == 1);
    CHECK(result.input_bytes == 4137915);
    CHECK(result.eot_tokens == 0);  // one document, no separator
    CHECK(result.tokens() == tiktoken_ids.size());
    CHECK(reassemble(options.out_dir, 4096, tenth) == tiktoken_ids);
    // Within one chunk of 10%.
    CHECK(std::abs(static_cast<double>(result.validation_tokens) - 0.1 * static_cast<double>(result.tokens())) <= 4096);
    REQUIRE_FALSE(progress.empty());
    CHECK(progress.back().bytes_done == 4137915);
    CHECK(progress.back().bytes_total == 4137915);
    CHECK(progress.back().tokens == tiktoken_ids.size());
    // The trainer's reader accepts both files.
    CHECK(gemma3::TokenFile(options.out_dir / "train.bin", 50257, 129).size() ==
          static_cast<std::int64_t>(result.train_tokens));
    CHECK(gemma3::TokenFile(options.out_dir / "validation.bin", 50257, 129).size() ==
          static_cast<std::int64_t>(result.validation_tokens));
}

TEST_CASE("documents from files and directories decode back to the text, joined by <|endoftext|> when enabled") {
    ScratchDir scratch;
    // Directory order is sorted by path; hidden files and directories and empty files are skipped.
    const std::string a = varied_text(1, 3000), b = varied_text(2, 50), c = varied_text(3, 4000),
                      d = "last document, given as a file\n";
    scratch.write("corpus/b/one.txt", b);
    scratch.write("corpus/a.txt", a);
    scratch.write("corpus/b/two.txt", c);
    scratch.write("corpus/.hidden.txt", "never read");
    scratch.write("corpus/.git/config", "never read");
    scratch.write("corpus/empty.txt", "");
    const fs::path extra = scratch.write("extra.txt", d);
    const std::vector<std::string> documents = {a, b, c, d};

    for (const bool eot : {true, false}) {
        CAPTURE(eot);
        auto options = options_for({scratch.path / "corpus", extra}, scratch.path / (eot ? "with" : "without"));
        options.eot_between_documents = eot;
        options.chunk_tokens = 512;
        options.block_size = 16;
        options.unit_bytes = 1000;
        options.batch_bytes = 5000;
        const PrepareResult result = gemma3::prepare_corpus(options);
        CHECK(result.documents == 4);
        CHECK(result.empty_files_skipped == 1);
        CHECK(result.eot_tokens == (eot ? 3u : 0u));
        CHECK(result.input_bytes == a.size() + b.size() + c.size() + d.size());
        const auto stream = reassemble(options.out_dir, 512, tenth);
        CHECK(stream == reference_stream(documents, eot));
        const std::string joined = eot ? a + "<|endoftext|>" + b + "<|endoftext|>" + c + "<|endoftext|>" + d : a + b + c + d;
        CHECK(gpt2().decode(stream) == joined);
    }
}

TEST_CASE("the output does not depend on threads or batch sizes, and two runs give identical bytes") {
    ScratchDir scratch;
    std::vector<std::string> documents;
    for (unsigned i = 0; i < 30; ++i) {
        documents.push_back(varied_text(100 + i, 50 + 97 * i));
        scratch.write("docs/doc" + std::to_string(100 + i) + ".txt", documents.back());
    }
    std::string first_train, first_validation;
    int run = 0;
    for (const int threads : {1, 2, 4}) {
        for (const std::size_t unit : {std::size_t{1}, std::size_t{300}, std::size_t{1} << 20}) {
            CAPTURE(threads);
            CAPTURE(unit);
            auto options = options_for({scratch.path / "docs"}, scratch.path / ("out" + std::to_string(run++)));
            options.threads = threads;
            options.unit_bytes = unit;
            options.batch_bytes = unit * 7;
            options.chunk_tokens = 256;
            options.block_size = 8;
            gemma3::prepare_corpus(options);
            const std::string train = read_bytes(options.out_dir / "train.bin");
            const std::string validation = read_bytes(options.out_dir / "validation.bin");
            if (first_train.empty()) {
                first_train = train;
                first_validation = validation;
                CHECK(reassemble(options.out_dir, 256, tenth) == reference_stream(documents, true));
            } else {
                CHECK(train == first_train);
                CHECK(validation == first_validation);
            }
        }
    }
}

TEST_CASE("the validation share is the requested fraction, within one chunk") {
    ScratchDir scratch;
    const fs::path text = scratch.write("text.txt", varied_text(5, 40000));
    const auto reference = reference_stream({read_bytes(text)}, false);
    for (const double f : {0.05, 0.1, 0.25, 0.5}) {
        CAPTURE(f);
        // append, not "f" + ...: GCC 12 reports a false -Wrestrict for that once inlined (PR 105329).
        auto options = options_for({text}, scratch.path / std::string("f").append(std::to_string(f)));
        options.val_fraction = f;
        options.chunk_tokens = 300;
        const PrepareResult result = gemma3::prepare_corpus(options);
        CHECK(result.tokens() == reference.size());
        CHECK(std::abs(static_cast<double>(result.validation_tokens) - f * static_cast<double>(reference.size())) <= 300);
        if (f == 0.25) CHECK(reassemble(options.out_dir, 300, [](std::size_t i) { return i % 4 == 1; }) == reference);
        if (f == 0.5) CHECK(reassemble(options.out_dir, 300, [](std::size_t i) { return i % 2 == 0; }) == reference);
    }
}

TEST_CASE("a manifest with out-of-range or mistyped counts counts as missing: the corpus is prepared again") {
    ScratchDir scratch;
    scratch.write("corpus/text.txt", varied_text(19, 3000));
    auto options = options_for({scratch.path / "corpus"}, scratch.path / "out");
    options.chunk_tokens = 256;
    REQUIRE_FALSE(gemma3::prepare_corpus(options).up_to_date);
    const fs::path manifest = scratch.path / "out" / "prepare.json";
    const auto good = nlohmann::json::parse(read_bytes(manifest));
    // 1e300 read with get<std::uint64_t>() was undefined behaviour, reported as "up to date".
    for (const auto& [section, key, value] : {std::tuple<const char*, const char*, nlohmann::json>{"summary", "train_tokens", 1e300},
                                             {"summary", "eot_tokens", -1},
                                             {"summary", "input_bytes", "12"},
                                             {"summary", "train_tokens", 7.5}}) {
        CAPTURE(key);
        auto bad = good;
        bad[section][key] = value;
        std::ofstream(manifest) << bad.dump();
        PrepareResult result;
        CHECK_NOTHROW(result = gemma3::prepare_corpus(options));
        CHECK_FALSE(result.up_to_date);
        CHECK(gemma3::prepare_corpus(options).up_to_date);  // the rewritten manifest is good again
    }
    std::ofstream(manifest) << std::string(100000, '[') + std::string(100000, ']');
    CHECK_FALSE(gemma3::prepare_corpus(options).up_to_date);
}

TEST_CASE("re-running is a no-op until inputs, options, tokenizer or outputs change; force always prepares") {
    ScratchDir scratch;
    const fs::path text = scratch.write("corpus/text.txt", varied_text(9, 5000));
    const fs::path tokenizer_copy = scratch.path / "gpt2.tiktoken";
    fs::copy_file(tokenizer_path(), tokenizer_copy);
    auto options = options_for({scratch.path / "corpus"}, scratch.path / "out");
    options.tokenizer_path = tokenizer_copy;
    options.chunk_tokens = 256;

    const PrepareResult first = gemma3::prepare_corpus(options);
    REQUIRE_FALSE(first.up_to_date);
    const PrepareResult second = gemma3::prepare_corpus(options);
    CHECK(second.up_to_date);
    CHECK(second.train_tokens == first.train_tokens);
    CHECK(second.validation_tokens == first.validation_tokens);
    CHECK(second.input_bytes == first.input_bytes);

    auto force = options;
    force.force = true;
    CHECK_FALSE(gemma3::prepare_corpus(force).up_to_date);
    CHECK(gemma3::prepare_corpus(options).up_to_date);

    auto changed = options;
    changed.eot_between_documents = false;
    CHECK_FALSE(gemma3::prepare_corpus(changed).up_to_date);
    CHECK_FALSE(gemma3::prepare_corpus(options).up_to_date);  // back again: the manifest now says "no EOT"
    changed = options;
    changed.val_fraction = 0.2;
    CHECK_FALSE(gemma3::prepare_corpus(changed).up_to_date);
    CHECK_FALSE(gemma3::prepare_corpus(options).up_to_date);
    CHECK(gemma3::prepare_corpus(options).up_to_date);

    SUBCASE("an input's content and time change") {
        std::string edited = read_bytes(text);  // same size, one ASCII letter changed
        const std::size_t at = edited.find_first_of("abcdefghijklmnopqrstuvwxyz");
        REQUIRE(at != std::string::npos);
        edited[at] = static_cast<char>(edited[at] - 'a' + 'A');
        std::ofstream(text, std::ios::binary) << edited;
        fs::last_write_time(text, fs::last_write_time(text) + std::chrono::seconds(5));
        const PrepareResult again = gemma3::prepare_corpus(options);
        CHECK_FALSE(again.up_to_date);
        CHECK(reassemble(options.out_dir, 256, tenth) == reference_stream({edited}, false));
    }
    SUBCASE("a new file in an input directory") {
        scratch.write("corpus/new.txt", "more text\n");
        CHECK_FALSE(gemma3::prepare_corpus(options).up_to_date);
    }
    SUBCASE("an output removed or replaced") {
        fs::remove(options.out_dir / "validation.bin");
        CHECK_FALSE(gemma3::prepare_corpus(options).up_to_date);
        std::ofstream(options.out_dir / "train.bin", std::ios::binary) << "xx";
        CHECK_FALSE(gemma3::prepare_corpus(options).up_to_date);
        CHECK(gemma3::prepare_corpus(options).up_to_date);
    }
    SUBCASE("a different tokenizer file") {
        std::ofstream(tokenizer_copy, std::ios::binary | std::ios::app) << "\n";  // same ranks, other bytes
        CHECK_FALSE(gemma3::prepare_corpus(options).up_to_date);
    }
    SUBCASE("a damaged manifest") {
        std::ofstream(options.out_dir / "prepare.json", std::ios::binary) << "{ not json";
        CHECK_FALSE(gemma3::prepare_corpus(options).up_to_date);
        CHECK(gemma3::prepare_corpus(options).up_to_date);
        // Valid JSON of the wrong shape: also "prepare again", not a crash.
        auto manifest = nlohmann::json::parse(read_bytes(options.out_dir / "prepare.json"));
        manifest["outputs"] = nlohmann::json::array({1, 2});
        manifest["summary"] = "none";
        std::ofstream(options.out_dir / "prepare.json", std::ios::binary) << manifest.dump();
        CHECK_FALSE(gemma3::prepare_corpus(options).up_to_date);
        CHECK(gemma3::prepare_corpus(options).up_to_date);
    }
}

TEST_CASE("invalid UTF-8 stops with the file, byte offset and line named, or becomes U+FFFD when asked") {
    ScratchDir scratch;
    const std::string good = varied_text(11, 2000);
    const std::string bad_text = good + "\nsecond line \xff\xfe here\n" + good;
    const fs::path bad = scratch.write("bad.txt", bad_text);
    auto options = options_for({bad}, scratch.path / "out");
    options.unit_bytes = 500;  // the bad byte is in a later unit: the offset must still be the file's
    options.chunk_tokens = 256;
    const std::size_t offset = good.size() + 13;
    const std::string message = error_of([&] { gemma3::prepare_corpus(options); });
    CHECK(message.find(bad.string()) != std::string::npos);
    CHECK(message.find("byte offset " + std::to_string(offset)) != std::string::npos);
    const auto line = 2 + std::count(good.begin(), good.end(), '\n');
    CHECK(message.find("(line " + std::to_string(line) + ")") != std::string::npos);
    CHECK(message.find("--replace-invalid-utf8") != std::string::npos);
    CHECK_FALSE(fs::exists(options.out_dir / "train.bin"));
    CHECK_FALSE(fs::exists(options.out_dir / "validation.bin"));

    options.invalid_utf8 = gemma3::InvalidUtf8::replace;
    const PrepareResult result = gemma3::prepare_corpus(options);
    CHECK(result.replaced_invalid_sequences == 2);
    const std::string repaired = good + "\nsecond line \xef\xbf\xbd\xef\xbf\xbd here\n" + good;
    CHECK(reassemble(options.out_dir, 256, tenth) == reference_stream({repaired}, false));
}

TEST_CASE("a literal <|endoftext|> in the text stays text, as in the seed, and is counted") {
    ScratchDir scratch;
    const std::string text = varied_text(12, 3000) + "<|endoftext|>" + varied_text(13, 3000) + "<|endoftext|>";
    auto options = options_for({scratch.write("t.txt", text)}, scratch.path / "out");
    options.chunk_tokens = 256;
    const PrepareResult result = gemma3::prepare_corpus(options);
    CHECK(result.literal_eot_texts == 2);
    const auto stream = reassemble(options.out_dir, 256, tenth);
    CHECK(std::count(stream.begin(), stream.end(), 50256) == 0);
    CHECK(gpt2().decode(stream) == text);
}

TEST_CASE("bad inputs, options and outputs give clear errors and leave existing outputs alone") {
    ScratchDir scratch;
    const fs::path text = scratch.write("text.txt", varied_text(21, 3000));
    const fs::path out = scratch.path / "out";
    auto error_for = [&](PrepareOptions options) { return error_of([&] { gemma3::prepare_corpus(options); }); };
    auto contains = [](const std::string& message, const std::string& part) {
        INFO("message: " << message);
        CHECK(message.find(part) != std::string::npos);
    };

    contains(error_for(options_for({}, out)), "no inputs");
    contains(error_for(options_for({text, scratch.path / "missing.txt"}, out)), "missing.txt' does not exist");
    scratch.write("empty/a.txt", "");
    scratch.write("empty/.b.txt", "hidden");
    contains(error_for(options_for({scratch.path / "empty"}, out)), "empty corpus");
    contains(error_for(options_for({text, text}, out)), "listed twice");
    contains(error_for(options_for({scratch.path, text}, out)), "listed twice");
    auto bad = options_for({text}, out);
    bad.val_fraction = 0;
    contains(error_for(bad), "--val-fraction");
    bad = options_for({text}, out);
    bad.tokenizer_path = scratch.path / "no.tiktoken";
    contains(error_for(bad), "no.tiktoken");
    contains(error_for(options_for({text}, text / "sub")), "cannot create output directory");
    contains(error_for(options_for({text}, text)), "is not a directory");

    // Too small: 3000 words are ~ 4,000 tokens; one chunk of 4096 gives validation nothing.
    const std::string small = error_for(options_for({text}, out));
    contains(small, "corpus too small");
    contains(small, "129");
    contains(small, "--chunk-tokens");
    CHECK_FALSE(fs::exists(out / "train.bin"));
    // Existing outputs survive a failed run, and the advice in the message works.
    auto ok = options_for({text}, out);
    ok.chunk_tokens = 400;
    gemma3::prepare_corpus(ok);
    const std::string before = read_bytes(out / "train.bin");
    CHECK_FALSE(error_for(options_for({text}, out)).empty());
    CHECK(read_bytes(out / "train.bin") == before);
    CHECK(fs::exists(out / "validation.bin"));
    // The outputs inside an input directory are not inputs.
    auto inside = options_for({scratch.path}, scratch.path / "nested_out");
    inside.chunk_tokens = 200;
    inside.force = true;
    fs::remove_all(scratch.path / "out");
    const PrepareResult once = gemma3::prepare_corpus(inside);
    const PrepareResult twice = gemma3::prepare_corpus(inside);
    CHECK(once.documents == twice.documents);
    CHECK(once.tokens() == twice.tokens());
    contains(error_for(options_for({scratch.path / "nested_out" / "train.bin"}, scratch.path / "nested_out")),
             "is an output of this run");

    if (::geteuid() != 0) {
        const fs::path locked = scratch.write("locked.txt", "secret");
        fs::permissions(locked, fs::perms::none);
        contains(error_for(options_for({locked}, out)), "cannot read input file");
        fs::create_directories(scratch.path / "readonly");
        fs::permissions(scratch.path / "readonly", fs::perms::owner_read | fs::perms::owner_exec);
        contains(error_for(options_for({text}, scratch.path / "readonly")), "not writable");
    } else {
        MESSAGE("running as root: permission bits do not stop root, so the unreadable-file and read-only-directory "
                "checks are not exercised here");
    }
}

#ifdef GEMMA3_PREPARE_EXE
TEST_CASE("gemma3-prepare: summary, up-to-date message, --no-eot-between-documents, and errors on stderr") {
    ScratchDir scratch;
    const fs::path a = scratch.write("in/a.txt", varied_text(31, 3000)), b = scratch.write("in/b.txt", varied_text(32, 3000));
    const fs::path out = scratch.path / "out", log = scratch.path / "log.txt";
    auto run = [&](const std::string& arguments) {
        const std::string command = "exec " GEMMA3_PREPARE_EXE " " + arguments + " --tokenizer " +
                                    tokenizer_path().string() + " > " + log.string() + " 2>&1";
        const int status = std::system(command.c_str());
        REQUIRE(WIFEXITED(status));
        return std::make_pair(WEXITSTATUS(status), read_bytes(log));
    };
    const std::string common = (scratch.path / "in").string() + " --out-dir " + out.string() + " --chunk-tokens 500";
    auto [code, text] = run(common + " --no-eot-between-documents --threads 2");
    INFO(text);
    CHECK(code == 0);
    CHECK(text.find("documents    2") != std::string::npos);
    CHECK(text.find("of which 0 <|endoftext|> separators") != std::string::npos);
    CHECK(text.find("bytes/token") != std::string::npos);
    CHECK(text.find("MB/s") != std::string::npos);
    CHECK(text.find("prepare: 100.0%") != std::string::npos);  // not a terminal: plain progress lines
    CHECK(reassemble(out, 500, tenth) == reference_stream({read_bytes(a), read_bytes(b)}, false));

    std::tie(code, text) = run(common + " --no-eot-between-documents");
    CHECK(code == 0);
    CHECK(text.find("up to date") != std::string::npos);
    std::tie(code, text) = run(common);  // the default puts EOT between the two documents
    CHECK(text.find("of which 1 <|endoftext|> separators") != std::string::npos);
    CHECK(reassemble(out, 500, tenth) == reference_stream({read_bytes(a), read_bytes(b)}, true));

    std::tie(code, text) = run((scratch.path / "nope").string() + " --out-dir " + out.string());
    CHECK(code == 1);
    CHECK(text.find("gemma3-prepare: input '" + (scratch.path / "nope").string() + "' does not exist") != std::string::npos);
    std::tie(code, text) = run(common + " --val-fraction 0");
    CHECK(code == 1);
    CHECK(text.find("--val-fraction must be between 0 and 1") != std::string::npos);
}

TEST_CASE("gemma3-prepare past a file-size limit: a clear error, the previous outputs intact") {
    ScratchDir scratch;
    scratch.write("in/a.txt", varied_text(41, 2000));
    const fs::path out = scratch.path / "out", log = scratch.path / "log.txt";
    const std::string arguments = (scratch.path / "in").string() + " --out-dir " + out.string() + " --chunk-tokens 500" +
                                  " --tokenizer " + tokenizer_path().string() + " > " + log.string() + " 2>&1";
    REQUIRE(std::system(("exec " GEMMA3_PREPARE_EXE " " + arguments).c_str()) == 0);
    const std::string train = read_bytes(out / "train.bin"), validation = read_bytes(out / "validation.bin");
    REQUIRE(train.size() < 16384);
    // Much more text, and a limit of 32 blocks (16 KiB in dash's 512-byte blocks, 32 KiB in
    // bash's): the new train.bin cannot be written.
    scratch.write("in/a.txt", varied_text(42, 200000));
    const int status = std::system(("ulimit -f 32; exec " GEMMA3_PREPARE_EXE " " + arguments).c_str());
    const std::string text = read_bytes(log);
    INFO(text);
    REQUIRE(WIFEXITED(status));  // not killed by SIGXFSZ
    CHECK(WEXITSTATUS(status) == 1);
    CHECK(text.find("File too large") != std::string::npos);
    CHECK(text.find("train") != std::string::npos);
    CHECK(read_bytes(out / "train.bin") == train);
    CHECK(read_bytes(out / "validation.bin") == validation);
    for (const auto& entry : fs::directory_iterator(out)) {  // no temporary file left behind
        CHECK_MESSAGE(entry.path().filename().string().find(".tmp.") == std::string::npos, entry.path());
    }
}
#endif
