// Corpus preparation: text files -> `train.bin` + `validation.bin` in the seed's token-file
// format (data.hpp: flat little-endian uint16 ids for GPT-2's 50,257-token vocabulary), plus a
// small `prepare.json` manifest that makes re-running with unchanged inputs a no-op.
//
// The pipeline, and why each step is the way it is:
//
//  1. Discovery. Inputs are files and directories, taken in command-line order; directories are
//     walked recursively and their regular files taken in sorted (byte-wise path) order, skipping
//     hidden names (a leading '.') and not following directory symlinks. Each file is one
//     document. Empty files are skipped (counted). A file reached twice is an error, as is naming
//     one of this run's own outputs as an input.
//
//  2. Tokenization, in parallel, streaming. Every document is memory-mapped (never copied) and
//     cut into units of about `unit_bytes` at positions where GPT-2's pre-tokenizer provably
//     cannot join text across the cut (see `next_safe_cut`), so the ids of a document are the
//     concatenation of the ids of its units: exactly what encoding the whole document gives.
//     Units are tokenized by `threads` threads, a batch of about `batch_bytes` of text at a time,
//     and written in order, so memory stays bounded by the batch however large the corpus is
//     (unless a long stretch of a document has no safe cut, which then becomes one unit), and
//     the output does not depend on the number of threads. Cuts fall between ASCII bytes, which
//     are never part of a multi-byte UTF-8 sequence, so the UTF-8 check and repair (point 5) can
//     also work unit by unit and reach the same result as on the whole document.
//     Documents are encoded with `encode_ordinary`, like the seed: a literal "<|endoftext|>" in
//     the text stays text (it is counted and reported, never turned into the separator).
//
//  3. Document separators. With `eot_between_documents` (the default) one `<|endoftext|>` token
//     goes between consecutive documents. The seed concatenates TinyStories with no separator,
//     which teaches the model that one story continues into an unrelated next one and gives
//     generation no natural place to stop; the separator costs one token per document. A single
//     document (the KJV demo corpus) gets no separator at all.
//
//  4. Validation split. The token stream is cut into chunks of `chunk_tokens` tokens; chunk i
//     goes to validation exactly when round((i + 1) f) > round(i f), f = the validation fraction
//     (rounded to a millionth). So the first n chunks hold round(n f) validation chunks, spread
//     evenly over the whole corpus (f = 0.1: chunks 4, 14, 24, ...), instead of validation being
//     only the corpus's last pages (a different book of the Bible, say). Both files keep stream
//     order. Chunks are much longer than a training window (block_size + 1 = 129 tokens in the
//     seed), so only a few percent of training windows straddle a seam, no more harmful than the
//     document boundaries they already straddle. Deterministic: no random numbers.
//
//  5. Invalid UTF-8. GPT-2's pattern is defined on characters; given bytes that are not UTF-8 the
//     tokenizer (like tiktoken) stops splitting words at the first bad byte, which would quietly
//     turn the rest of a document into one giant piece. So by default a bad byte is an error
//     naming the file, byte offset and line; with `InvalidUtf8::replace` each maximal invalid
//     subsequence becomes U+FFFD (Unicode's recommended practice, what Python's
//     `bytes.decode("utf-8", "replace")` does) and the count is reported.
//
//  6. Writing. Both files are written through write_file_atomically (temp file, fsync, rename);
//     every id is checked to be below the vocabulary size. If the corpus is too small for each
//     file to hold one training window (block_size + 1 tokens) nothing is replaced and the error
//     says what to change. The manifest (inputs with sizes and modification times, options,
//     tokenizer hash, output sizes and times, counts) is written last; it is deleted before the
//     outputs are touched, so an interrupted run is never mistaken for a finished one. (Should
//     the run fail between the two renames, validation.bin is new and train.bin old; without a
//     manifest the next run prepares both again.)
//
// Up-to-date check: like make, a file counts as unchanged when its size and modification time
// (nanoseconds) are; `force` re-prepares regardless.
#pragma once

#include <gemma3/train/data.hpp>
#include <gemma3/io/file_io.hpp>
#include <gemma3/io/json_read.hpp>
#include <gemma3/text/tokenizer.hpp>

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace gemma3 {

// Bad inputs, options or outputs of corpus preparation; the message names the file or option.
class PrepareError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

inline constexpr std::string_view prepare_train_file = "train.bin";
inline constexpr std::string_view prepare_validation_file = "validation.bin";
inline constexpr std::string_view prepare_manifest_file = "prepare.json";

enum class InvalidUtf8 { error, replace };

struct PrepareProgress {
    std::uint64_t bytes_done = 0, bytes_total = 0;
    std::uint64_t tokens = 0;
    double seconds = 0;
};

struct PrepareOptions {
    std::vector<std::filesystem::path> inputs;  // files and directories
    std::filesystem::path out_dir;
    std::filesystem::path tokenizer_path = "data/gpt2.tiktoken";
    double val_fraction = 0.1;          // 0 < f < 1: the trainer needs both files
    bool eot_between_documents = true;  // see point 3 above
    std::int64_t chunk_tokens = 4096;   // validation split granularity (point 4)
    std::int64_t block_size = 128;      // only to check that each file holds one training window
    InvalidUtf8 invalid_utf8 = InvalidUtf8::error;
    int threads = 0;  // 0: all hardware threads
    bool force = false;
    // Tuning; the output does not depend on these.
    std::size_t unit_bytes = std::size_t{256} << 10;   // text per tokenization task
    std::size_t batch_bytes = std::size_t{32} << 20;   // text in flight at once
    // Called on the calling thread, about ten times a second and once at the end.
    std::function<void(const PrepareProgress&)> on_progress;
};

struct PrepareResult {
    bool up_to_date = false;  // nothing was done: the manifest matched
    std::size_t documents = 0;
    std::size_t empty_files_skipped = 0;
    std::uint64_t input_bytes = 0;
    std::uint64_t train_tokens = 0, validation_tokens = 0;
    std::uint64_t eot_tokens = 0;                  // separators written
    std::uint64_t replaced_invalid_sequences = 0;  // with InvalidUtf8::replace
    std::uint64_t literal_eot_texts = 0;           // "<|endoftext|>" found in the text, kept as text
    double seconds = 0;
    int threads = 0;
    std::filesystem::path train_path, validation_path, manifest_path;

    std::uint64_t tokens() const { return train_tokens + validation_tokens; }
};

// ---- building blocks (public so that tests can check them on their own) -----------------------

// The first position p >= from (1 <= p < text.size()) at which `text` can be cut so that encoding
// text[0, p) and text[p, end) separately gives exactly the ids of encoding the whole text, found
// by two rules; npos if there is none. `text` is assumed to be UTF-8; all bytes examined are ASCII,
// which in UTF-8 are whole characters, so a cut never splits a character either.
//
// GPT-2's pattern: 's|'t|'re|'ve|'m|'ll|'d | ?\p{L}++ | ?\p{N}++ | ?[^\s\p{L}\p{N}]++ | \s++$ |
// \s+(?!\S) | \s. Matching is left to right, each match starting where the last ended, and the
// pattern has no look-behind, so the pieces from a piece boundary on depend only on the text from
// there on. A cut at p is therefore exact when (i) p is a piece boundary in the whole text and
// (ii) the pieces before p come out the same when the text ends at p (where `$` now matches and
// look-ahead sees nothing).
//
// Rule A: text[p-1] == '\n' and text[p-2], text[p] are ASCII non-whitespace.
//   Only the three whitespace alternatives can match '\n', and they match whitespace only, so the
//   piece holding '\n' is exactly [p-1, p): (i) holds. For (ii): letter/number/other runs before
//   p-1 stop at '\n' either way; a contraction at p-2 fails on '\n' without looking further; a
//   whitespace run starting before p-2 ends before p-2 (not at the end, its look-ahead inside the
//   prefix); and at p-1 the whole text gives `\s` = "\n" while the prefix gives `\s++$` = "\n".
//   Why text[p-2] must not be whitespace: in "a\n\nb" the whole text has pieces "\n", "\n"
//   (\s+(?!\S) leaves the last whitespace character), but "a\n\n" alone ends in "\n\n" (\s++$),
//   a different token (628 instead of 198 198; checked with tiktoken). The same goes for "\r\n".
// Rule B: text[p] == ' ' and text[p-1] is an ASCII letter.
//   No alternative can run from a letter into a space (letter runs stop at it, the contractions
//   contain only letters after the apostrophe, the space-led alternatives start at their space,
//   whitespace runs cannot contain the letter): (i) holds. Before p, the letter run that ends at
//   p-1 stops there in both texts, contractions at p-2 ("'ll", "'ve", "'re") fail on the space or
//   on the end alike, and nothing else reaches p-1.
// Rule B lets text without line breaks (or with CRLF ones) be cut too.
inline std::size_t next_safe_cut(std::string_view text, std::size_t from) {
    auto ascii_space = [](unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
    auto ascii_non_space = [&](unsigned char c) { return c < 0x80 && !ascii_space(c); };
    auto ascii_letter = [](unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    for (std::size_t p = std::max<std::size_t>(from, 1); p < text.size(); ++p) {
        if (s[p] == ' ' && ascii_letter(s[p - 1])) return p;  // rule B
        if (p >= 2 && s[p - 1] == '\n' && ascii_non_space(s[p]) && ascii_non_space(s[p - 2])) return p;  // rule A
    }
    return std::string_view::npos;
}

// The validation fraction in millionths, checked: 0 < f < 1.
inline std::uint32_t validation_fraction_ppm(double fraction) {
    if (!(fraction > 0 && fraction < 1)) {
        throw PrepareError("--val-fraction must be between 0 and 1 (exclusive), got " + std::to_string(fraction) +
                           ": the trainer needs both train.bin and validation.bin");
    }
    const auto ppm = static_cast<std::uint32_t>(std::llround(fraction * 1e6));
    if (ppm == 0 || ppm >= 1000000) {
        throw PrepareError("--val-fraction " + std::to_string(fraction) +
                           " rounds to 0 or 1 at the split's resolution of one millionth");
    }
    return ppm;
}

// Whether chunk `chunk` of the token stream goes to validation: round((i+1) f) > round(i f) with
// f = ppm / 10^6 and round(x) = floor(x + 1/2), in integers so every machine agrees.
inline bool is_validation_chunk(std::uint64_t chunk, std::uint32_t ppm) {
    auto rounded = [ppm](std::uint64_t i) { return (i * ppm + 500000) / 1000000; };
    return rounded(chunk + 1) > rounded(chunk);
}

struct DocumentFile {
    std::filesystem::path path;  // absolute, normalized
    std::uint64_t bytes = 0;
    std::int64_t mtime_ns = 0;
};

namespace detail::prepare {

struct FileStamp {
    std::uint64_t bytes = 0;
    std::int64_t mtime_ns = 0;
};

inline bool stamp_of(const std::filesystem::path& path, FileStamp& stamp, int& error_number) {
    struct stat status {};
    if (::stat(path.c_str(), &status) != 0) {
        error_number = errno;
        return false;
    }
    stamp.bytes = static_cast<std::uint64_t>(status.st_size);
    stamp.mtime_ns = static_cast<std::int64_t>(status.st_mtim.tv_sec) * 1000000000 + status.st_mtim.tv_nsec;
    return true;
}

// Appended piece by piece: GCC 12 reports a false -Wrestrict for "'" + string once inlined (PR 105329).
inline std::string quoted(const std::filesystem::path& path) {
    std::string text(1, '\'');
    text += path.string();
    text += '\'';
    return text;
}

inline bool hidden(const std::filesystem::path& path) {
    const std::string name = path.filename().string();
    return !name.empty() && name[0] == '.';
}

// Checks up front that a document can be opened, so a permission problem is reported before any
// work is done rather than after hours of tokenizing.
inline DocumentFile checked_document(const std::filesystem::path& path) {
    DocumentFile document;
    document.path = std::filesystem::absolute(path).lexically_normal();
    int fd;
    do {
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) throw PrepareError("cannot read input file " + quoted(path) + ": " + std::strerror(errno));
    ::close(fd);
    FileStamp stamp;
    int error_number = 0;
    if (!stamp_of(path, stamp, error_number)) {
        throw PrepareError("cannot stat input file " + quoted(path) + ": " + std::strerror(error_number));
    }
    document.bytes = stamp.bytes;
    document.mtime_ns = stamp.mtime_ns;
    return document;
}

inline std::string hex64(std::uint64_t value) {
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
    return text;
}

// Identity of the tokenizer file for the manifest: size and a 64-bit hash of its bytes (change
// detection, not security; no SHA-256 in the project's dependencies).
inline nlohmann::json tokenizer_identity(const std::filesystem::path& path) {
    if (!std::filesystem::is_regular_file(path)) {
        throw PrepareError("tokenizer file " + quoted(path) +
                           " does not exist (scripts/fetch_tokenizer.sh obtains data/gpt2.tiktoken)");
    }
    const MappedFile file(path);
    const auto bytes = file.bytes();
    return {{"path", std::filesystem::absolute(path).lexically_normal().string()},
            {"bytes", bytes.size()},
            {"hash64", hex64(detail::bpe::hash_bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size()))}};
}

// 1-based line of byte `offset` in `text`.
inline std::uint64_t line_of(std::string_view text, std::size_t offset) {
    return 1 + static_cast<std::uint64_t>(std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(offset), '\n'));
}

// One tokenization task: text[begin, end) of document `document`. `file` is shared by the units
// of a large document; small documents are mapped by the worker that encodes them.
struct Unit {
    std::size_t document = 0;  // index into the document list
    std::size_t begin = 0, end = 0;
    std::shared_ptr<const MappedFile> file;
};

struct UnitResult {
    std::string bytes;  // the unit's ids as they go into the token file
    std::uint64_t tokens = 0;
    std::uint64_t replaced = 0, literal_eot = 0;
    std::exception_ptr error;
};

// Appends `ids` to `out` as little-endian integers of `element_bytes` bytes, checking each
// against the vocabulary. Done by the workers, so that the in-order writer only copies bytes.
inline void append_token_bytes(const std::vector<std::int32_t>& ids, std::int64_t vocab_size, int element_bytes,
                               std::string& out) {
    const std::size_t start = out.size();
    out.resize(start + ids.size() * static_cast<std::size_t>(element_bytes));
    char* p = out.data() + start;
    for (const std::int32_t id : ids) {
        if (id < 0 || id >= vocab_size) {
            throw PrepareError("internal error: the tokenizer produced id " + std::to_string(id) +
                               ", outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
        }
        const auto value = static_cast<std::uint32_t>(id);
        for (int b = 0; b < element_bytes; ++b) *p++ = static_cast<char>((value >> (8 * b)) & 0xFF);
    }
}

inline std::string_view text_of(const MappedFile& file) {
    const auto bytes = file.bytes();
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

inline std::shared_ptr<const MappedFile> map_document(const DocumentFile& document) {
    auto file = std::make_shared<const MappedFile>(document.path);
    if (file->bytes().size() != document.bytes) {
        throw PrepareError("input file " + quoted(document.path) + " changed while being prepared (" +
                           std::to_string(document.bytes) + " bytes when listed, " +
                           std::to_string(file->bytes().size()) + " now)");
    }
    return file;
}

// Routes the token stream (already in file format, `element_bytes` per id) to the two outputs,
// chunk by chunk (point 4 at the top).
class SplitWriter {
public:
    SplitWriter(std::ostream& train, std::ostream& validation, std::uint64_t chunk_tokens, std::uint32_t ppm,
                int element_bytes)
        : out_{&train, &validation}, chunk_tokens_(chunk_tokens), ppm_(ppm), element_bytes_(element_bytes) {}

    void write(std::string_view bytes) {
        const auto width = static_cast<std::size_t>(element_bytes_);
        std::uint64_t count = bytes.size() / width;
        const char* p = bytes.data();
        while (count > 0) {
            const std::uint64_t offset = position_ % chunk_tokens_;
            if (offset == 0) current_ = is_validation_chunk(position_ / chunk_tokens_, ppm_) ? 1 : 0;
            const std::uint64_t take = std::min(count, chunk_tokens_ - offset);
            out_[current_]->write(p, static_cast<std::streamsize>(take * width));
            if (!*out_[current_]) {
                throw FileError(std::string("cannot write the ") + (current_ == 1 ? "validation" : "train") +
                                " token file: " + std::strerror(errno));
            }
            counts_[current_] += take;
            position_ += take;
            p += take * width;
            count -= take;
        }
    }

    std::uint64_t train_tokens() const { return counts_[0]; }
    std::uint64_t validation_tokens() const { return counts_[1]; }
    std::uint64_t tokens() const { return position_; }

private:
    std::ostream* out_[2];
    std::uint64_t chunk_tokens_;
    std::uint32_t ppm_;
    int element_bytes_;
    std::uint64_t counts_[2] = {0, 0};
    std::uint64_t position_ = 0;
    int current_ = 0;
};

}  // namespace detail::prepare

// The documents of `inputs` in preparation order (see point 1 at the top). Files in `exclude`
// (this run's outputs) are skipped inside directories and rejected when named directly.
// `empty_files` receives the number of empty files skipped.
inline std::vector<DocumentFile> discover_documents(const std::vector<std::filesystem::path>& inputs,
                                                    const std::vector<std::filesystem::path>& exclude,
                                                    std::size_t* empty_files = nullptr) {
    namespace fs = std::filesystem;
    using detail::prepare::quoted;
    if (inputs.empty()) throw PrepareError("no inputs: name at least one text file or directory");
    // Paths are compared in canonical form (symlinks resolved), or absolute if that fails.
    auto canonical_form = [](const fs::path& path) {
        std::error_code ec;
        fs::path canonical = fs::weakly_canonical(path, ec);
        return ec ? fs::absolute(path).lexically_normal() : canonical;
    };
    std::vector<fs::path> excluded;
    for (const auto& path : exclude) excluded.push_back(canonical_form(path));
    std::vector<DocumentFile> documents;
    std::map<fs::path, fs::path> seen;  // canonical path -> the path it was reached as
    std::size_t empty = 0;
    auto add = [&](const fs::path& path, bool named) {
        const fs::path canonical = canonical_form(path);
        if (std::find(excluded.begin(), excluded.end(), canonical) != excluded.end()) {
            if (named) throw PrepareError("input " + quoted(path) + " is an output of this run; name the text instead");
            return;
        }
        if (const auto found = seen.find(canonical); found != seen.end()) {
            throw PrepareError("input file " + quoted(path) + " is listed twice (also reached as " +
                               quoted(found->second) + "); each file is one document and may appear once");
        }
        DocumentFile document = detail::prepare::checked_document(path);
        seen.emplace(canonical, path);
        if (document.bytes == 0) {
            ++empty;
            return;
        }
        documents.push_back(std::move(document));
    };
    for (const auto& input : inputs) {
        std::error_code ec;
        const fs::file_status status = fs::status(input, ec);
        if (ec || !fs::exists(status)) {
            throw PrepareError("input " + quoted(input) + " does not exist" +
                               (ec && ec != std::errc::no_such_file_or_directory ? " (" + ec.message() + ")" : ""));
        }
        if (fs::is_regular_file(status)) {
            add(input, true);
        } else if (fs::is_directory(status)) {
            std::vector<fs::path> files;
            fs::recursive_directory_iterator it(input, fs::directory_options::none, ec);
            if (ec) throw PrepareError("cannot read directory " + quoted(input) + ": " + ec.message());
            for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
                if (ec) break;
                const fs::path& path = it->path();
                if (detail::prepare::hidden(path)) {
                    if (it->is_directory(ec)) it.disable_recursion_pending();
                    continue;
                }
                if (it->is_regular_file(ec)) files.push_back(path);  // follows file symlinks
            }
            if (ec) throw PrepareError("cannot read directory " + quoted(input) + ": " + ec.message());
            std::sort(files.begin(), files.end(),
                      [](const fs::path& a, const fs::path& b) { return a.native() < b.native(); });
            for (const auto& file : files) add(file, false);
        } else {
            throw PrepareError("input " + quoted(input) + " is neither a regular file nor a directory");
        }
    }
    if (empty_files != nullptr) *empty_files = empty;
    return documents;
}

// Runs the whole preparation (see the top of this file). Throws PrepareError, FileError or
// TokenizerError with a message that names the file or option at fault.
inline PrepareResult prepare_corpus(const PrepareOptions& options) {
    namespace fs = std::filesystem;
    using namespace detail::prepare;
    using Clock = std::chrono::steady_clock;
    const auto started = Clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - started).count(); };

    // ---- options -----------------------------------------------------------------------------
    const std::uint32_t ppm = validation_fraction_ppm(options.val_fraction);
    if (options.chunk_tokens < 1) throw PrepareError("--chunk-tokens must be at least 1");
    if (options.block_size < 1) throw PrepareError("--block-size must be at least 1");
    if (options.out_dir.empty()) throw PrepareError("no output directory given (--out-dir)");
    if (options.threads < 0) throw PrepareError("--threads must be 0 (all cores) or more");
    const int threads = options.threads > 0 ? options.threads
                                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const std::size_t unit_bytes = std::max<std::size_t>(options.unit_bytes, 1);
    const std::size_t batch_bytes = std::max<std::size_t>(options.batch_bytes, 1);

    PrepareResult result;
    result.threads = threads;
    result.train_path = options.out_dir / prepare_train_file;
    result.validation_path = options.out_dir / prepare_validation_file;
    result.manifest_path = options.out_dir / prepare_manifest_file;

    // ---- inputs and the up-to-date check -------------------------------------------------------
    const std::vector<DocumentFile> documents =
        discover_documents(options.inputs, {result.train_path, result.validation_path, result.manifest_path},
                           &result.empty_files_skipped);
    if (documents.empty()) {
        std::string names;
        for (const auto& input : options.inputs) names += (names.empty() ? "" : ", ") + quoted(input);
        throw PrepareError("empty corpus: " + names + " hold" + (options.inputs.size() == 1 ? "s" : "") +
                           " no non-empty files (" + std::to_string(result.empty_files_skipped) +
                           " empty files; hidden files are skipped)");
    }
    nlohmann::json wanted;
    wanted["format"] = "gemma3-prepare/1";
    for (const auto& document : documents) {
        wanted["documents"].push_back({{"path", document.path.string()}, {"bytes", document.bytes},
                                       {"mtime_ns", document.mtime_ns}});
    }
    wanted["empty_files_skipped"] = result.empty_files_skipped;
    wanted["options"] = {{"val_fraction_ppm", ppm},
                         {"eot_between_documents", options.eot_between_documents},
                         {"chunk_tokens", options.chunk_tokens},
                         {"block_size", options.block_size},
                         {"invalid_utf8", options.invalid_utf8 == InvalidUtf8::replace ? "replace" : "error"}};
    wanted["tokenizer"] = tokenizer_identity(options.tokenizer_path);

    {
        std::error_code ec;
        if (fs::exists(options.out_dir, ec) && !fs::is_directory(options.out_dir, ec)) {
            throw PrepareError("output directory " + quoted(options.out_dir) + " exists and is not a directory");
        }
        fs::create_directories(options.out_dir, ec);
        if (ec) throw PrepareError("cannot create output directory " + quoted(options.out_dir) + ": " + ec.message());
        if (::access(options.out_dir.c_str(), W_OK | X_OK) != 0) {
            throw PrepareError("output directory " + quoted(options.out_dir) + " is not writable: " + std::strerror(errno));
        }
    }

    // Up to date when the manifest records the same inputs, options and tokenizer, and both
    // outputs still have the size and time it recorded. A manifest that cannot be read or has an
    // unexpected shape counts as missing.
    auto stored_result = [&]() -> std::optional<PrepareResult> {
        // json_read: a size cap and depth limit (comparing a deeply nested value recurses), and
        // the counts below are range-checked (get<std::uint64_t>() of 1e300 is undefined).
        const auto count = [](const nlohmann::json& value) {
            std::string why;
            const auto n = json_read::to_integer<std::uint64_t>(value, 0, std::numeric_limits<std::uint64_t>::max(), why);
            if (!n) throw PrepareError(why);
            return *n;
        };
        try {
            const nlohmann::json stored = json_read::read_file<PrepareError>(result.manifest_path, "prepare manifest");
            for (const char* key : {"format", "documents", "empty_files_skipped", "options", "tokenizer"}) {
                if (stored.at(key) != wanted[key]) return std::nullopt;
            }
            for (const auto& path : {result.train_path, result.validation_path}) {
                const nlohmann::json& recorded = stored.at("outputs").at(path.filename().string());
                FileStamp stamp;
                int ignored = 0;
                std::string why;
                const auto mtime = json_read::to_integer<std::int64_t>(recorded.at("mtime_ns"), INT64_MIN, INT64_MAX, why);
                if (!stamp_of(path, stamp, ignored) || count(recorded.at("bytes")) != stamp.bytes || mtime != stamp.mtime_ns) {
                    return std::nullopt;
                }
            }
            const nlohmann::json& summary = stored.at("summary");
            PrepareResult done = result;
            done.up_to_date = true;
            done.documents = documents.size();
            done.input_bytes = count(summary.at("input_bytes"));
            done.train_tokens = count(summary.at("train_tokens"));
            done.validation_tokens = count(summary.at("validation_tokens"));
            done.eot_tokens = count(summary.at("eot_tokens"));
            done.replaced_invalid_sequences = count(summary.at("replaced_invalid_sequences"));
            done.literal_eot_texts = count(summary.at("literal_eot_texts"));
            return done;
        } catch (const nlohmann::json::exception&) {
            return std::nullopt;
        } catch (const PrepareError&) {
            return std::nullopt;
        }
    };
    if (!options.force && fs::exists(result.manifest_path)) {
        if (auto done = stored_result()) {
            done->seconds = elapsed();
            return *done;
        }
    }

    const Tokenizer tokenizer = Tokenizer::from_tiktoken_file(options.tokenizer_path);
    const std::int64_t vocab_size = tokenizer.vocab_size();
    const int element_bytes = token_bytes(vocab_size);
    std::string eot_bytes;
    append_token_bytes({tokenizer.eot_token()}, vocab_size, element_bytes, eot_bytes);

    std::uint64_t total_bytes = 0;
    for (const auto& document : documents) total_bytes += document.bytes;
    result.documents = documents.size();
    result.input_bytes = total_bytes;

    // The old manifest goes first: from here on, until the new one is written, the outputs are
    // not known to be complete.
    {
        std::error_code ec;
        fs::remove(result.manifest_path, ec);
        if (ec) throw PrepareError("cannot remove the old manifest " + quoted(result.manifest_path) + ": " + ec.message());
    }

    // ---- tokenize and write ----------------------------------------------------------------------
    std::atomic<std::uint64_t> bytes_done{0}, tokens_done{0};
    auto last_report = Clock::now();
    auto report = [&](bool force_report) {
        if (!options.on_progress) return;
        const auto now = Clock::now();
        if (!force_report && now - last_report < std::chrono::milliseconds(100)) return;
        last_report = now;
        options.on_progress({bytes_done.load(), total_bytes, tokens_done.load(), elapsed()});
    };

    // Tokenizes one unit; called concurrently.
    auto encode_unit = [&](const Unit& unit, UnitResult& out) {
        std::shared_ptr<const MappedFile> file = unit.file ? unit.file : map_document(documents[unit.document]);
        const std::string_view whole = text_of(*file);
        const std::string_view text = whole.substr(unit.begin, (unit.file ? unit.end : whole.size()) - unit.begin);
        std::string repaired;
        std::string_view clean = text;
        const std::size_t valid = detail::bpe::utf8_valid_prefix(text);
        if (valid != text.size()) {
            if (options.invalid_utf8 == InvalidUtf8::error) {
                const std::size_t offset = unit.begin + valid;
                throw PrepareError(
                    "input file " + quoted(documents[unit.document].path) + " is not valid UTF-8: byte offset " +
                    std::to_string(offset) + " (line " + std::to_string(line_of(whole, offset)) + ") starts '" +
                    detail::bpe::printable_bytes(whole.substr(offset, 8), 8) +
                    "'. Fix the file, or pass --replace-invalid-utf8 to replace invalid sequences with U+FFFD");
            }
            repaired.reserve(text.size() + 16);
            out.replaced = detail::utf8::replace_invalid(text, repaired);
            clean = repaired;
        }
        for (std::size_t at = clean.find(Tokenizer::eot_text); at != std::string_view::npos;
             at = clean.find(Tokenizer::eot_text, at + 1)) {
            ++out.literal_eot;
        }
        std::vector<std::int32_t> ids;
        ids.reserve(clean.size() / 3 + 16);
        tokenizer.encode_ordinary_into(clean, ids);
        append_token_bytes(ids, vocab_size, element_bytes, out.bytes);
        out.tokens = ids.size();
        bytes_done += text.size();
        tokens_done += ids.size();
    };

    // Encodes `units` with `threads` threads (the caller's among them) and reports progress.
    auto encode_batch = [&](const std::vector<Unit>& units, std::vector<UnitResult>& results) {
        results.assign(units.size(), UnitResult{});
        std::atomic<std::size_t> next{0};
        std::atomic<std::size_t> first_failed{units.size()};
        auto work = [&](bool reporter) {
            for (std::size_t i; (i = next.fetch_add(1)) < units.size();) {
                if (i > first_failed.load()) break;  // an earlier unit failed; its error is the one to report
                try {
                    encode_unit(units[i], results[i]);
                } catch (...) {
                    results[i].error = std::current_exception();
                    std::size_t expected = first_failed.load();
                    while (i < expected && !first_failed.compare_exchange_weak(expected, i)) {
                    }
                }
                if (reporter) report(false);
            }
        };
        const std::size_t helpers = std::min<std::size_t>(static_cast<std::size_t>(threads), units.size()) - 1;
        std::vector<std::thread> pool;
        pool.reserve(helpers);
        try {
            for (std::size_t t = 0; t < helpers; ++t) pool.emplace_back(work, false);
        } catch (...) {  // could not start a thread: let the started ones finish, then report
            next = units.size();
            for (auto& thread : pool) thread.join();
            throw;
        }
        work(true);
        for (auto& thread : pool) thread.join();
        for (auto& unit_result : results) {
            if (unit_result.error) std::rethrow_exception(unit_result.error);
        }
    };

    std::uint64_t eot_tokens = 0, replaced = 0, literal_eot = 0;
    std::uint64_t train_tokens = 0, validation_tokens = 0;
    auto write_outputs = [&](std::ostream& train_out, std::ostream& validation_out) {
        SplitWriter writer(train_out, validation_out, static_cast<std::uint64_t>(options.chunk_tokens), ppm,
                           element_bytes);
        std::vector<Unit> batch;
        std::vector<UnitResult> results;
        std::size_t batch_text = 0;
        auto flush_batch = [&] {
            if (batch.empty()) return;
            encode_batch(batch, results);
            for (std::size_t i = 0; i < batch.size(); ++i) {
                if (options.eot_between_documents && batch[i].begin == 0 && batch[i].document > 0) {
                    writer.write(eot_bytes);
                    ++eot_tokens;
                }
                writer.write(results[i].bytes);
                replaced += results[i].replaced;
                literal_eot += results[i].literal_eot;
            }
            batch.clear();
            results.clear();
            batch_text = 0;
        };
        auto add_unit = [&](Unit unit, std::size_t bytes) {
            batch.push_back(std::move(unit));
            batch_text += bytes;
            if (batch_text >= batch_bytes) flush_batch();
        };
        for (std::size_t d = 0; d < documents.size(); ++d) {
            if (documents[d].bytes <= unit_bytes) {
                add_unit(Unit{d, 0, static_cast<std::size_t>(documents[d].bytes), nullptr}, documents[d].bytes);
                continue;
            }
            // A large document: map it here to find the cuts; its units share the mapping.
            std::shared_ptr<const MappedFile> file = map_document(documents[d]);
            const std::string_view text = text_of(*file);
            std::size_t begin = 0;
            while (begin < text.size()) {
                std::size_t end = text.size() - begin > unit_bytes ? next_safe_cut(text, begin + unit_bytes) : text.size();
                if (end == std::string_view::npos) end = text.size();
                add_unit(Unit{d, begin, end, file}, end - begin);
                begin = end;
            }
        }
        flush_batch();
        report(true);
        train_tokens = writer.train_tokens();
        validation_tokens = writer.validation_tokens();

        // Both files must hold one training window; otherwise replace nothing (throwing here
        // discards both temporary files).
        const auto window = static_cast<std::uint64_t>(options.block_size) + 1;
        if (train_tokens < window || validation_tokens < window) {
            const std::uint64_t total = writer.tokens();
            std::string advice;
            const auto suggested = static_cast<std::uint64_t>(static_cast<double>(total) * options.val_fraction);
            if (suggested >= window && static_cast<std::uint64_t>(options.chunk_tokens) > suggested) {
                advice = "a smaller --chunk-tokens (e.g. " + std::to_string(suggested) +
                         ") spreads validation over this corpus";
            } else {
                advice = "at --val-fraction " + std::to_string(options.val_fraction) + " that needs roughly " +
                         std::to_string(static_cast<std::uint64_t>(std::ceil(2.0 * static_cast<double>(window) /
                                                                             std::min(options.val_fraction,
                                                                                      1 - options.val_fraction)))) +
                         " tokens in total; add text, or lower --block-size if the model's is smaller";
            }
            throw PrepareError("corpus too small: " + std::to_string(total) + " tokens gave " +
                               std::to_string(train_tokens) + " training and " + std::to_string(validation_tokens) +
                               " validation tokens (chunks of " + std::to_string(options.chunk_tokens) +
                               " tokens), but each file needs at least block_size + 1 = " + std::to_string(window) +
                               " for one training window; " + advice + ". Nothing was written");
        }
    };

    // Nested: both temporaries exist while the stream is written; validation.bin is renamed into
    // place first, then train.bin. A failure before that leaves both old files untouched.
    write_file_atomically(result.train_path, [&](std::ostream& train_out) {
        write_file_atomically(result.validation_path,
                              [&](std::ostream& validation_out) { write_outputs(train_out, validation_out); });
    });

    result.train_tokens = train_tokens;
    result.validation_tokens = validation_tokens;
    result.eot_tokens = eot_tokens;
    result.replaced_invalid_sequences = replaced;
    result.literal_eot_texts = literal_eot;

    // ---- manifest ---------------------------------------------------------------------------------
    nlohmann::json manifest = wanted;
    manifest["val_fraction"] = options.val_fraction;
    manifest["vocab_size"] = vocab_size;
    manifest["token_bytes"] = token_bytes(vocab_size);
    manifest["split"] = "chunk i of chunk_tokens tokens is validation iff round((i+1)*f) > round(i*f), "
                        "f = val_fraction_ppm/1e6, round(x) = floor(x+1/2); both files keep stream order";
    for (const auto& path : {result.train_path, result.validation_path}) {
        FileStamp stamp;
        int error_number = 0;
        if (!stamp_of(path, stamp, error_number)) {
            throw PrepareError("cannot stat " + quoted(path) + " after writing it: " + std::strerror(error_number));
        }
        manifest["outputs"][path.filename().string()] = {{"bytes", stamp.bytes}, {"mtime_ns", stamp.mtime_ns}};
    }
    manifest["summary"] = {{"input_bytes", result.input_bytes},
                           {"train_tokens", result.train_tokens},
                           {"validation_tokens", result.validation_tokens},
                           {"eot_tokens", result.eot_tokens},
                           {"replaced_invalid_sequences", result.replaced_invalid_sequences},
                           {"literal_eot_texts", result.literal_eot_texts}};
    write_file_atomically(result.manifest_path, [&](std::ostream& out) { out << manifest.dump(2) << "\n"; });
    result.seconds = elapsed();
    return result;
}

}  // namespace gemma3
