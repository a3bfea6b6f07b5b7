// GPT-2's byte-level BPE tokenizer (50,257 tokens), producing the same ids as tiktoken's "gpt2"
// encoding (r50k_base ranks, `<|endoftext|>` = 50256).
//
// How text becomes ids:
//   1. Pre-tokenisation splits the text into pieces with GPT-2's pattern, written here exactly as
//      tiktoken writes it (tiktoken_ext/openai_public.py, r50k_pat_str):
//        's|'t|'re|'ve|'m|'ll|'d, then ` ?\p{L}++`, ` ?\p{N}++`, ` ?[^\s\p{L}\p{N}]++`,
//        `\s++$`, `\s+(?!\S)`, `\s`.
//      The Unicode classes need a Unicode-aware regex engine (std::regex has none), so this uses
//      PCRE2 with its JIT. `\s` is spelled out as Unicode's White_Space set (what Rust's regex,
//      and so tiktoken, means by `\s`); PCRE2's own `\s` would miss U+0085.
//      An ASCII fast path decides most pieces without calling PCRE2 (see `ascii_piece_end`).
//   2. Each piece that is a token on its own becomes that token. Otherwise its bytes are merged
//      pairwise, always merging the adjacent pair whose concatenation has the lowest rank
//      (leftmost on ties) — tiktoken's rule, which ranks merged byte strings, not merge pairs.
//   3. `<|endoftext|>` becomes 50256 only through `encode(text, /*allow_special=*/true)`;
//      `encode_ordinary` treats it as plain text, like tiktoken's `encode_ordinary`.
//
// Input that is not valid UTF-8 (the pattern is only defined on characters) is handled exactly as
// tiktoken's `Encoding._encode_bytes` does it (tiktoken src/py.rs):
//   - the longest valid UTF-8 prefix is encoded normally;
//   - the tokens of its last piece are taken back, together with any directly preceding tokens
//     that consist only of ' ', '\n' and '\t' bytes;
//   - those bytes plus *everything from the first invalid byte to the end* form one piece that is
//     BPE-merged without any pre-tokenisation.
//   So text after a stray invalid byte is no longer split into words. decode() still restores
//   the exact bytes. Callers that want word-level splitting after damaged bytes should repair the
//   text first (e.g. replace invalid sequences with U+FFFD).
//   With `allow_special`, the text is first cut at each `<|endoftext|>` and every segment goes
//   through the rule above on its own (tiktoken has no byte-level encode with special tokens).
//
// Unicode version: tiktoken 0.14's regex classes follow Unicode 16.0; Debian 12's PCRE2 (10.42)
// knows Unicode 14. The 9,392 letters and numbers added in Unicode 15.0 and 16.0 are therefore
// listed explicitly in the pattern. A test checks every code point's class against tiktoken.
// (Built against a PCRE2 with Unicode 17 or later, letters added after 16.0 would be letters here
// but "other" in tiktoken 0.14; that test would say so.)
//
// Linking: the regex engine is Debian's libpcre2-8 (pkg-config libpcre2-8).
//
// All encode/decode methods are const and keep no shared mutable state, so one Tokenizer can be
// used from many threads at once. Copies share the (immutable) tables.
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <gemma3/detail/utf8.hpp>
#include <gemma3/io/json_read.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <queue>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gemma3 {

// Bad tokenizer files, bad token ids, or an internal regex failure. The message names the file
// and line (for files) or the offending value.
class TokenizerError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail::bpe {

inline constexpr std::int32_t no_rank = std::numeric_limits<std::int32_t>::max();

// Hash for short byte strings (most pieces are 1-12 bytes). Debian has no absl/xxhash in the
// dependency set; this is a small multiply-fold hash in the style of wyhash: whole 8-byte words,
// then the tail read as two overlapping 4-byte words (or 3 single bytes) — no byte loop.
inline std::uint64_t fold_multiply(std::uint64_t a, std::uint64_t b) {
    __extension__ using u128 = unsigned __int128;  // GCC/Clang extension; -Wpedantic would warn
    const u128 product = static_cast<u128>(a) * b;
    return static_cast<std::uint64_t>(product) ^ static_cast<std::uint64_t>(product >> 64);
}

inline std::uint64_t hash_bytes(const char* data, std::size_t size) {
    constexpr std::uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull,
                            k2 = 0x8ebc6af09c88c6e3ull;
    const auto* p = reinterpret_cast<const unsigned char*>(data);
    std::uint64_t h = fold_multiply(size ^ k0, k1);
    std::size_t n = size;
    while (n >= 8) {
        std::uint64_t word;
        std::memcpy(&word, p, 8);
        h = fold_multiply(h ^ word, k2);
        p += 8;
        n -= 8;
    }
    std::uint64_t a = 0, b = 0;
    if (n >= 4) {
        std::uint32_t lo, hi;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + n - 4, 4);
        a = lo;
        b = hi;
    } else if (n > 0) {
        a = (std::uint64_t{p[0]} << 16) | (std::uint64_t{p[n >> 1]} << 8) | p[n - 1];
    }
    return fold_multiply(h ^ a ^ k1, b ^ k2);
}

// a[0, n) == b[0, n) for the short strings of the hash table, without a call to memcmp and
// without reading past either end (overlapping loads cover lengths that are not a power of two).
inline bool equal_bytes(const char* a, const char* b, std::size_t n) {
    auto load32 = [](const char* p) { std::uint32_t v; std::memcpy(&v, p, 4); return v; };
    auto load64 = [](const char* p) { std::uint64_t v; std::memcpy(&v, p, 8); return v; };
    if (n >= 8) {
        if (n > 16) return std::memcmp(a, b, n) == 0;
        return load64(a) == load64(b) && load64(a + n - 8) == load64(b + n - 8);
    }
    if (n >= 4) return load32(a) == load32(b) && load32(a + n - 4) == load32(b + n - 4);
    for (std::size_t i = 0; i < n; ++i) {
        if (a[i] != b[i]) return false;
    }
    return true;
}

// The UTF-8 rules (detail/utf8.hpp), under the names this file uses.
using utf8::next_code_point;
inline std::size_t utf8_valid_prefix(std::string_view text) { return utf8::valid_prefix(text); }

// Strict standard base64 (RFC 4648 alphabet, '=' padding only at the end). Returns false on
// any other character, a bad length or bad padding.
inline bool base64_decode(std::string_view in, std::string& out) {
    static constexpr auto table = [] {
        std::array<signed char, 256> t{};
        t.fill(-1);
        const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(alphabet[i])] = static_cast<signed char>(i);
        return t;
    }();
    out.clear();
    if (in.empty() || in.size() % 4 != 0) return false;
    std::size_t padding = 0;
    if (in.back() == '=') padding = (in[in.size() - 2] == '=') ? 2 : 1;
    const std::size_t data_chars = in.size() - padding;
    std::uint32_t accumulator = 0;
    int bits = 0;
    for (std::size_t i = 0; i < data_chars; ++i) {
        const int value = table[static_cast<unsigned char>(in[i])];
        if (value < 0) return false;
        accumulator = (accumulator << 6) | static_cast<std::uint32_t>(value);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((accumulator >> bits) & 0xFF));
        }
    }
    // Leftover bits must be zero, as a canonical encoder writes them.
    return (accumulator & ((1u << bits) - 1)) == 0;
}

// GPT-2's byte-to-unicode mapping (encoder.py `bytes_to_unicode`): printable Latin-1 bytes map
// to themselves, the other 68 bytes to U+0100.. in byte order. The same order gives the ranks of
// the 256 single-byte tokens (tiktoken `data_gym_to_mergeable_bpe_ranks`).
struct ByteUnicodeMap {
    std::array<std::uint8_t, 256> byte_of_rank{};          // single-byte token rank -> byte
    std::array<std::int16_t, 256 + 68> byte_of_code_point{};  // -1: not in the alphabet

    static bool printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); }

    ByteUnicodeMap() {
        byte_of_code_point.fill(-1);
        int rank = 0;
        for (int b = 0; b < 256; ++b) {
            if (printable(b)) {
                byte_of_code_point[static_cast<std::size_t>(b)] = static_cast<std::int16_t>(b);
                byte_of_rank[static_cast<std::size_t>(rank++)] = static_cast<std::uint8_t>(b);
            }
        }
        int extra = 0;
        for (int b = 0; b < 256; ++b) {
            if (!printable(b)) {
                byte_of_code_point[static_cast<std::size_t>(256 + extra++)] = static_cast<std::int16_t>(b);
                byte_of_rank[static_cast<std::size_t>(rank++)] = static_cast<std::uint8_t>(b);
            }
        }
    }
    // The byte a code point of the alphabet stands for, or -1.
    int byte_of(long code_point) const {
        if (code_point < 0 || code_point >= static_cast<long>(byte_of_code_point.size())) return -1;
        return byte_of_code_point[static_cast<std::size_t>(code_point)];
    }
};

inline std::string read_whole_file(const std::filesystem::path& path, std::string_view what) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        const int error = errno;
        throw TokenizerError("cannot open " + std::string(what) + " '" + path.string() + "': " +
                             (error ? std::strerror(error) : "open failed"));
    }
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw TokenizerError("error reading " + std::string(what) + " '" + path.string() + "'");
    return bytes;
}

[[noreturn]] inline void throw_at(const std::filesystem::path& path, std::size_t line, const std::string& what) {
    throw TokenizerError(path.string() + ":" + std::to_string(line) + ": " + what);
}

// Renders bytes for error messages: printable ASCII as is, everything else as \xNN.
inline std::string printable_bytes(std::string_view bytes, std::size_t limit = 40) {
    std::string out;
    for (std::size_t i = 0; i < bytes.size() && i < limit; ++i) {
        const auto c = static_cast<unsigned char>(bytes[i]);
        if (c >= 0x20 && c < 0x7F && c != '\\') {
            out.push_back(static_cast<char>(c));
        } else {
            static constexpr char hex[] = "0123456789abcdef";
            out += "\\x";
            out.push_back(hex[c >> 4]);
            out.push_back(hex[c & 15]);
        }
    }
    if (bytes.size() > limit) out += "...";
    return out;
}

struct Pcre2CodeDeleter {
    void operator()(pcre2_code_8* code) const { pcre2_code_free_8(code); }
};
struct Pcre2MatchDataDeleter {
    void operator()(pcre2_match_data_8* data) const { pcre2_match_data_free_8(data); }
};

}  // namespace detail::bpe

class Tokenizer {
public:
    static constexpr std::string_view eot_text = "<|endoftext|>";
    // Number of mergeable (non-special) tokens in GPT-2's vocabulary; `<|endoftext|>` comes next.
    static constexpr int gpt2_mergeable_tokens = 50256;

    // Loads ranks in tiktoken's format: one "<base64 token bytes> <rank>" per line, ranks 0..N-1.
    // `expected_tokens` guards against truncated files; pass 0 to accept any count. The special
    // token `<|endoftext|>` gets id N.
    static Tokenizer from_tiktoken_file(const std::filesystem::path& path,
                                        int expected_tokens = gpt2_mergeable_tokens) {
        using namespace detail::bpe;
        const std::string contents = read_whole_file(path, "tiktoken ranks file");
        std::vector<std::string> tokens;
        std::vector<std::size_t> line_of_rank;
        std::vector<std::pair<std::int64_t, std::size_t>> rank_and_line;
        std::vector<std::string> bytes_in_order;
        std::string decoded;
        std::size_t line_number = 0, pos = 0;
        while (pos < contents.size()) {
            std::size_t end = contents.find('\n', pos);
            if (end == std::string::npos) end = contents.size();
            std::string_view line(contents.data() + pos, end - pos);
            pos = end + 1;
            ++line_number;
            if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
            if (line.empty()) continue;  // tiktoken skips empty lines too
            const std::size_t space = line.find(' ');
            if (space == std::string_view::npos || space == 0 || line.find(' ', space + 1) != std::string_view::npos) {
                throw_at(path, line_number,
                         "expected '<base64 token> <rank>', got '" + printable_bytes(line) + "'");
            }
            const std::string_view base64 = line.substr(0, space), rank_text = line.substr(space + 1);
            if (!base64_decode(base64, decoded)) {
                throw_at(path, line_number, "invalid base64 token '" + printable_bytes(base64) + "'");
            }
            std::int64_t rank = 0;
            if (rank_text.empty() || rank_text.size() > 9 ||
                !std::all_of(rank_text.begin(), rank_text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
                throw_at(path, line_number,
                         "rank must be a non-negative integer below 10^9, got '" + printable_bytes(rank_text) + "'");
            }
            for (char c : rank_text) rank = rank * 10 + (c - '0');
            rank_and_line.emplace_back(rank, line_number);
            bytes_in_order.push_back(decoded);
        }
        const std::size_t count = bytes_in_order.size();
        if (count == 0) throw TokenizerError(path.string() + ": no tokens (empty file?)");
        tokens.assign(count, std::string());
        line_of_rank.assign(count, 0);
        for (std::size_t i = 0; i < count; ++i) {
            const auto [rank, line] = rank_and_line[i];
            if (rank >= static_cast<std::int64_t>(count)) {
                throw_at(path, line,
                         "rank " + std::to_string(rank) + " is out of range: with " + std::to_string(count) +
                             " tokens the ranks must be 0.." + std::to_string(count - 1) +
                             " (missing lines or a truncated file?)");
            }
            const auto r = static_cast<std::size_t>(rank);
            if (line_of_rank[r] != 0) {
                throw_at(path, line,
                         "duplicate rank " + std::to_string(rank) + " (also on line " +
                             std::to_string(line_of_rank[r]) + ")");
            }
            line_of_rank[r] = line;
            tokens[r] = std::move(bytes_in_order[i]);
        }
        if (expected_tokens > 0 && count != static_cast<std::size_t>(expected_tokens)) {
            throw TokenizerError(path.string() + ": expected " + std::to_string(expected_tokens) +
                                 " ranks (GPT-2's vocabulary), found " + std::to_string(count) +
                                 " (truncated or a different file?)");
        }
        return Tokenizer(std::move(tokens), [&](std::size_t rank) {
            return path.string() + ":" + std::to_string(line_of_rank[rank]);
        });
    }

    // Loads Hugging Face's GPT-2 files (vocab.json: token -> id in GPT-2's byte-to-unicode
    // alphabet; merges.txt: "#version" header, then one "left right" merge per line) and turns
    // them into byte-string ranks the way tiktoken's `data_gym_to_mergeable_bpe_ranks` does: the
    // 256 single bytes first, then merge k gets rank 256 + k. vocab.json must agree with that.
    static Tokenizer from_hf_files(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt,
                                   int expected_tokens = gpt2_mergeable_tokens) {
        using namespace detail::bpe;
        static const ByteUnicodeMap mapping;
        auto to_bytes = [&](std::string_view text, const std::string& where) {
            std::string bytes;
            std::size_t pos = 0;
            while (pos < text.size()) {
                const long cp = next_code_point(text, pos);
                const int byte = mapping.byte_of(cp);
                if (byte < 0) {
                    throw TokenizerError(where + ": token '" + printable_bytes(text) +
                                         "' has a character outside GPT-2's byte-to-unicode alphabet");
                }
                bytes.push_back(static_cast<char>(byte));
            }
            return bytes;
        };

        std::vector<std::string> tokens;
        tokens.reserve(50256);
        for (int r = 0; r < 256; ++r) tokens.emplace_back(1, static_cast<char>(mapping.byte_of_rank[static_cast<std::size_t>(r)]));
        std::vector<std::size_t> line_of_rank(256, 0);

        const std::string merges = read_whole_file(merges_txt, "merges file");
        std::size_t line_number = 0, pos = 0;
        while (pos < merges.size()) {
            std::size_t end = merges.find('\n', pos);
            if (end == std::string::npos) end = merges.size();
            std::string_view line(merges.data() + pos, end - pos);
            pos = end + 1;
            ++line_number;
            if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
            if (line.empty() || (line_number == 1 && line.starts_with("#version"))) continue;
            const std::size_t space = line.find(' ');
            if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
                line.find(' ', space + 1) != std::string_view::npos) {
                throw_at(merges_txt, line_number, "expected '<left> <right>', got '" + printable_bytes(line) + "'");
            }
            const std::string where = merges_txt.string() + ":" + std::to_string(line_number);
            tokens.push_back(to_bytes(line.substr(0, space), where) + to_bytes(line.substr(space + 1), where));
            line_of_rank.push_back(line_number);
        }

        // json_read: a size cap and depth limit, and numbers such as 1e999 (nlohmann's out_of_range,
        // not a parse error) become a TokenizerError naming the file.
        const nlohmann::json vocab = json_read::read_file<TokenizerError>(vocab_json, "vocabulary");
        if (!vocab.is_object()) throw TokenizerError(vocab_json.string() + ": expected a JSON object of token -> id");

        // The ranks derived from merges.txt, checked against vocab.json entry by entry.
        Tokenizer tokenizer(tokens, [&](std::size_t rank) {
            return rank < 256 ? std::string("single-byte token ") + std::to_string(rank)
                              : merges_txt.string() + ":" + std::to_string(line_of_rank[rank]);
        });
        std::size_t mergeable_entries = 0;
        bool has_eot = false;
        for (const auto& [key, value] : vocab.items()) {
            std::string why;
            const auto id = json_read::to_integer<std::int64_t>(value, 0, std::numeric_limits<std::int32_t>::max(), why);
            if (!id) {
                throw TokenizerError(vocab_json.string() + ": id of '" + printable_bytes(key) + "': value " +
                                     json_read::excerpt(value) + " " + why + "; expected a token id >= 0");
            }
            if (key == eot_text) {
                if (*id != static_cast<std::int64_t>(tokens.size())) {
                    throw TokenizerError(vocab_json.string() + ": '<|endoftext|>' has id " + std::to_string(*id) +
                                         ", expected " + std::to_string(tokens.size()) + " (after all merges)");
                }
                has_eot = true;
                continue;
            }
            const std::string bytes = to_bytes(key, vocab_json.string());
            const std::int32_t rank = tokenizer.lookup(bytes.data(), bytes.size());
            if (rank != *id) {
                throw TokenizerError(vocab_json.string() + ": token '" + printable_bytes(key) + "' has id " +
                                     std::to_string(*id) + " but " + merges_txt.string() + " gives it " +
                                     (rank == no_rank ? std::string("no rank") : "rank " + std::to_string(rank)));
            }
            ++mergeable_entries;
        }
        if (mergeable_entries != tokens.size()) {
            throw TokenizerError(vocab_json.string() + ": has " + std::to_string(mergeable_entries) +
                                 " mergeable tokens but " + merges_txt.string() + " defines " +
                                 std::to_string(tokens.size()));
        }
        if (!has_eot) throw TokenizerError(vocab_json.string() + ": has no '<|endoftext|>' entry");
        if (expected_tokens > 0 && tokens.size() != static_cast<std::size_t>(expected_tokens)) {
            throw TokenizerError(merges_txt.string() + ": expected " + std::to_string(expected_tokens - 256) +
                                 " merges (GPT-2), found " + std::to_string(tokens.size() - 256) +
                                 " (truncated or a different file?)");
        }
        return tokenizer;
    }

    // Ids of `text` with `<|endoftext|>` treated as ordinary text (tiktoken `encode_ordinary`;
    // for bytes that are not valid UTF-8, tiktoken `_encode_bytes` — see the top of this file).
    std::vector<std::int32_t> encode_ordinary(std::string_view text) const {
        std::vector<std::int32_t> ids;
        ids.reserve(text.size() / 4 + 16);
        encode_ordinary_into(text, ids);
        return ids;
    }

    // Appends the ids of `text` to `ids` (lets callers reuse one buffer across documents).
    void encode_ordinary_into(std::string_view text, std::vector<std::int32_t>& ids) const {
        const std::size_t valid = detail::bpe::utf8_valid_prefix(text);
        if (valid == text.size()) {
            encode_valid_utf8(text, ids);
            return;
        }
        encode_with_invalid_utf8(text, valid, ids);
    }

    // Like encode_ordinary, but with `allow_special` every `<|endoftext|>` in the text becomes
    // eot_token() (tiktoken `encode(text, allowed_special={"<|endoftext|>"})`).
    std::vector<std::int32_t> encode(std::string_view text, bool allow_special) const {
        if (!allow_special) return encode_ordinary(text);
        std::vector<std::int32_t> ids;
        ids.reserve(text.size() / 4 + 16);
        std::size_t start = 0;
        while (true) {
            const std::size_t found = text.find(eot_text, start);
            const std::size_t end = found == std::string_view::npos ? text.size() : found;
            // Each segment is its own text, as in tiktoken: `\s++$` sees the segment's end.
            encode_ordinary_into(text.substr(start, end - start), ids);
            if (found == std::string_view::npos) break;
            ids.push_back(eot_token());
            start = found + eot_text.size();
        }
        return ids;
    }

    // The bytes of the ids, concatenated (not necessarily valid UTF-8 when ids cut a character).
    std::string decode(std::span<const std::int32_t> ids) const {
        std::size_t total = 0;
        for (std::size_t i = 0; i < ids.size(); ++i) total += token_bytes_checked(ids[i], i).size();
        std::string out;
        out.reserve(total);
        for (std::size_t i = 0; i < ids.size(); ++i) out += token_bytes_checked(ids[i], i);
        return out;
    }

    // The bytes of one token (`<|endoftext|>` for eot_token()).
    std::string_view token_bytes(std::int32_t id) const { return token_bytes_checked(id, std::string_view::npos); }

    int vocab_size() const { return data_->eot + 1; }
    std::int32_t eot_token() const { return data_->eot; }

    // The pre-tokenisation pieces of valid UTF-8 text (for inspection and tests). With
    // `ascii_fast_path` false every piece comes from PCRE2.
    std::vector<std::string_view> split(std::string_view text, bool ascii_fast_path = true) const {
        if (detail::bpe::utf8_valid_prefix(text) != text.size()) {
            throw TokenizerError("split: the text is not valid UTF-8");
        }
        std::vector<std::string_view> pieces;
        for_each_piece(text, ascii_fast_path, [&](std::size_t begin, std::size_t end) {
            pieces.push_back(text.substr(begin, end - begin));
        });
        return pieces;
    }

private:
    // Bytes of rank r are blob[offsets[r], offsets[r + 1]).
    struct Slot {
        std::uint32_t tag;
        std::int32_t rank;  // -1: empty
    };
    struct Data {
        std::string blob;
        std::vector<std::uint32_t> offsets;
        std::vector<Slot> slots;
        std::uint64_t mask = 0;
        std::array<std::int32_t, 256> byte_rank{};
        std::vector<std::uint8_t> only_space_bytes;  // per rank: all of ' ', '\n', '\t'
        std::int32_t eot = 0;
        std::unique_ptr<pcre2_code_8, detail::bpe::Pcre2CodeDeleter> pattern;
        bool jit = false;
    };
    std::shared_ptr<const Data> data_;

    // Pieces up to this many bytes use tiktoken's simple quadratic merge loop on the stack;
    // longer ones use a heap (O(n log n)), so a huge unsplittable piece cannot take hours.
    static constexpr std::size_t small_piece = 128;

    template <class Describe>
    Tokenizer(std::vector<std::string> tokens, Describe describe_rank) {
        using namespace detail::bpe;
        auto data = std::make_shared<Data>();
        const std::size_t count = tokens.size();
        if (count >= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
            throw TokenizerError("too many tokens");
        }
        data->offsets.reserve(count + 1);
        data->offsets.push_back(0);
        for (const auto& t : tokens) {
            if (t.empty()) throw TokenizerError(describe_rank(static_cast<std::size_t>(&t - tokens.data())) + ": empty token");
            data->blob += t;
            if (data->blob.size() > std::numeric_limits<std::uint32_t>::max()) throw TokenizerError("token bytes too large");
            data->offsets.push_back(static_cast<std::uint32_t>(data->blob.size()));
        }
        std::size_t capacity = 1024;
        while (capacity < 2 * count) capacity *= 2;
        data->slots.assign(capacity, Slot{0, -1});
        data->mask = capacity - 1;
        data->byte_rank.fill(-1);
        data->only_space_bytes.assign(count, 0);
        data_ = data;  // lookup() reads data_
        for (std::size_t r = 0; r < count; ++r) {
            const std::string& t = tokens[r];
            const std::uint64_t h = hash_bytes(t.data(), t.size());
            std::uint64_t index = h & data->mask;
            while (data->slots[index].rank >= 0) {
                const auto other = static_cast<std::size_t>(data->slots[index].rank);
                if (tokens[other] == t) {
                    throw TokenizerError(describe_rank(r) + ": token '" + printable_bytes(t) +
                                         "' is a duplicate of " + describe_rank(other));
                }
                index = (index + 1) & data->mask;
            }
            data->slots[index] = Slot{static_cast<std::uint32_t>(h >> 32), static_cast<std::int32_t>(r)};
            if (t.size() == 1) data->byte_rank[static_cast<unsigned char>(t[0])] = static_cast<std::int32_t>(r);
            data->only_space_bytes[r] = std::all_of(t.begin(), t.end(), [](char c) { return c == ' ' || c == '\n' || c == '\t'; });
        }
        for (int b = 0; b < 256; ++b) {
            if (data->byte_rank[static_cast<std::size_t>(b)] < 0) {
                static constexpr char hex[] = "0123456789abcdef";
                throw TokenizerError(std::string("the vocabulary has no token for the single byte 0x") + hex[b >> 4] +
                                     hex[b & 15] + "; byte-level BPE needs all 256 (truncated file?)");
            }
        }
        data->eot = static_cast<std::int32_t>(count);
        compile_pattern(*data);
    }

    static void compile_pattern(Data& data) {
        // Unicode White_Space, which is what `\s` means to Rust's regex (and so to tiktoken).
        const std::string ws =
            "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
        // Letters and numbers first assigned in Unicode 15.0 and 16.0 (from Unicode's general
        // categories, checked with the unicodedata2 16.0.0 package). tiktoken's regex knows them;
        // PCRE2 10.42 (Unicode 14) would put them in the "other" class. Redundant, and harmless,
        // with a newer PCRE2.
        const std::string letters =
            "\\p{L}\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}\\x{10D4A}-\\x{10D65}"
            "\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}"
            "\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}"
            "\\x{11F12}-\\x{11F33}\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}"
            "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}\\x{1E030}-\\x{1E06D}"
            "\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}";
        const std::string numbers =
            "\\p{N}\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}"
            "\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}"
            "\\x{1E5F1}-\\x{1E5FA}";
        const std::string pattern = "'(?:[sdmt]|ll|ve|re)| ?[" + letters + "]++| ?[" + numbers + "]++| ?[^" + ws +
                                    letters + numbers + "]++|[" + ws + "]++$|[" + ws + "]+(?![^" + ws + "])|[" + ws + "]";
        int error_code = 0;
        PCRE2_SIZE error_offset = 0;
        // Every position of valid UTF-8 starts a match (each character is in one of the classes),
        // so matches are anchored at the previous match's end. DOLLAR_ENDONLY: `$` is the end of
        // the text, as in Rust's regex.
        pcre2_code_8* code = pcre2_compile_8(reinterpret_cast<PCRE2_SPTR8>(pattern.c_str()), pattern.size(),
                                             PCRE2_UTF | PCRE2_DOLLAR_ENDONLY | PCRE2_ANCHORED, &error_code,
                                             &error_offset, nullptr);
        if (code == nullptr) {
            PCRE2_UCHAR8 message[256];
            pcre2_get_error_message_8(error_code, message, sizeof message);
            throw TokenizerError("PCRE2 cannot compile GPT-2's pattern at offset " + std::to_string(error_offset) +
                                 ": " + reinterpret_cast<const char*>(message));
        }
        data.pattern.reset(code);
        // Without JIT support (some platforms) the interpreter gives the same pieces, slower.
        data.jit = pcre2_jit_compile_8(code, PCRE2_JIT_COMPLETE) == 0;
    }

    std::int32_t lookup(const char* bytes, std::size_t size) const {
        const Data& d = *data_;
        const std::uint64_t h = detail::bpe::hash_bytes(bytes, size);
        const auto tag = static_cast<std::uint32_t>(h >> 32);
        std::uint64_t index = h & d.mask;
        while (true) {
            const Slot slot = d.slots[index];
            if (slot.rank < 0) return detail::bpe::no_rank;
            if (slot.tag == tag) {
                const auto r = static_cast<std::size_t>(slot.rank);
                const std::uint32_t begin = d.offsets[r];
                if (d.offsets[r + 1] - begin == size && detail::bpe::equal_bytes(d.blob.data() + begin, bytes, size)) {
                    return slot.rank;
                }
            }
            index = (index + 1) & d.mask;
        }
    }

    std::string_view token_bytes_checked(std::int32_t id, std::size_t position) const {
        const Data& d = *data_;
        if (id >= 0 && id < d.eot) {
            const auto r = static_cast<std::size_t>(id);
            return std::string_view(d.blob).substr(d.offsets[r], d.offsets[r + 1] - d.offsets[r]);
        }
        if (id == d.eot) return eot_text;
        throw TokenizerError("token id " + std::to_string(id) +
                             (position == std::string_view::npos ? "" : " at position " + std::to_string(position)) +
                             " is out of range: valid ids are 0.." + std::to_string(d.eot));
    }

    // ---- pre-tokenisation ------------------------------------------------------------------

    // ASCII byte classes for the fast path; non_ascii for bytes >= 0x80.
    enum ByteClass : std::uint8_t { non_ascii, letter, digit, space, other };
    static constexpr std::array<std::uint8_t, 256> byte_classes = [] {
        std::array<std::uint8_t, 256> table{};
        for (int c = 0; c < 128; ++c) {
            const bool is_letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
            const bool is_digit = c >= '0' && c <= '9';
            const bool is_space = c == ' ' || (c >= '\t' && c <= '\r');
            table[static_cast<std::size_t>(c)] = is_letter ? letter : is_digit ? digit : is_space ? space : other;
        }
        return table;  // 128..255 stay non_ascii
    }();

    // The end of the piece that GPT-2's pattern matches at `pos`, decided from ASCII bytes alone,
    // or 0 when a non-ASCII byte could change the answer (then PCRE2 decides). Calling PCRE2
    // costs more per piece than the whole BPE step for a typical English word, which is why this
    // hand-written shortcut exists; tests check it against PCRE2 piece by piece.
    static std::size_t ascii_piece_end(const unsigned char* s, std::size_t n, std::size_t pos) {
        const unsigned char c = s[pos];
        if (c >= 0x80) return 0;
        const std::size_t i = pos;
        // 's 't 're 've 'm 'll 'd
        if (c == '\'' && i + 1 < n) {
            const unsigned char c1 = s[i + 1];
            if (c1 == 's' || c1 == 'd' || c1 == 'm' || c1 == 't') return i + 2;
            if (i + 2 < n) {
                const unsigned char c2 = s[i + 2];
                if ((c1 == 'l' && c2 == 'l') || (c1 == 'v' && c2 == 'e') || (c1 == 'r' && c2 == 'e')) return i + 3;
            }
        }
        // An optional leading space, then a run of one class; the run is possessive, so it ends
        // at the first byte outside the class (a non-ASCII byte there is undecidable here).
        std::size_t j = (c == ' ' && i + 1 < n) ? i + 1 : i;
        const std::uint8_t head = byte_classes[s[j]];
        if (head == non_ascii) return 0;
        if (head != space) {
            ++j;
            while (j < n && byte_classes[s[j]] == head) ++j;
            if (j < n && s[j] >= 0x80) return 0;
            return j;
        }
        // Whitespace at pos (the optional-space alternatives did not apply). Find the run.
        std::size_t k = i;
        while (k < n && byte_classes[s[k]] == space) ++k;
        if (k == n) return n;        // \s++$
        if (s[k] >= 0x80) return 0;  // could be more (Unicode) whitespace
        // s[k] is ASCII non-space. \s+(?!\S) takes all but the last space; a run of one is \s.
        return k - i >= 2 ? k - 1 : i + 1;
    }

    template <class OnPiece>
    void for_each_piece(std::string_view text, bool ascii_fast_path, OnPiece&& on_piece) const {
        const Data& d = *data_;
        const auto* s = reinterpret_cast<const unsigned char*>(text.data());
        const std::size_t n = text.size();
        std::unique_ptr<pcre2_match_data_8, detail::bpe::Pcre2MatchDataDeleter> match;
        std::size_t pos = 0;
        while (pos < n) {
            std::size_t end = ascii_fast_path ? ascii_piece_end(s, n, pos) : 0;
            if (end == 0) {
                if (!match) {
                    match.reset(pcre2_match_data_create_from_pattern_8(d.pattern.get(), nullptr));
                    if (!match) throw std::bad_alloc();
                }
                // The text was checked to be valid UTF-8, so PCRE2 need not check it again.
                const int rc = d.jit ? pcre2_jit_match_8(d.pattern.get(), s, n, pos, 0, match.get(), nullptr)
                                     : pcre2_match_8(d.pattern.get(), s, n, pos, PCRE2_NO_UTF_CHECK, match.get(), nullptr);
                const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer_8(match.get());
                if (rc <= 0 || ovector[0] != pos || ovector[1] <= pos) {
                    PCRE2_UCHAR8 message[256] = "no match";
                    if (rc < 0) pcre2_get_error_message_8(rc, message, sizeof message);
                    throw TokenizerError("GPT-2 pre-tokenizer failed at byte " + std::to_string(pos) + ": " +
                                         reinterpret_cast<const char*>(message));
                }
                end = ovector[1];
            }
            on_piece(pos, end);
            pos = end;
        }
    }

    // ---- BPE ---------------------------------------------------------------------------------

    // Appends the tokens of one piece; returns how many.
    std::size_t encode_piece(const char* piece, std::size_t n, std::vector<std::int32_t>& ids) const {
        const Data& d = *data_;
        if (n == 1) {
            ids.push_back(d.byte_rank[static_cast<unsigned char>(piece[0])]);
            return 1;
        }
        const std::int32_t whole = lookup(piece, n);
        if (whole != detail::bpe::no_rank) {
            ids.push_back(whole);
            return 1;
        }
        return n <= small_piece ? merge_small(piece, n, ids) : merge_large(piece, n, ids);
    }

    // tiktoken's loop: keep the rank of each adjacent pair, merge the lowest (leftmost on ties),
    // update the two neighbouring pair ranks. Quadratic, but with no allocation and tiny n.
    std::size_t merge_small(const char* piece, std::size_t n, std::vector<std::int32_t>& ids) const {
        using detail::bpe::no_rank;
        const Data& d = *data_;
        std::uint32_t start[small_piece + 1];  // part i is piece[start[i], start[i + 1])
        std::int32_t id[small_piece];          // token of part i
        std::int32_t rank[small_piece];        // rank of part i merged with part i + 1
        std::size_t parts = n;
        for (std::size_t i = 0; i < n; ++i) {
            start[i] = static_cast<std::uint32_t>(i);
            id[i] = d.byte_rank[static_cast<unsigned char>(piece[i])];
        }
        start[n] = static_cast<std::uint32_t>(n);
        auto pair_rank = [&](std::size_t i) {
            return i + 1 < parts ? lookup(piece + start[i], start[i + 2] - start[i]) : no_rank;
        };
        for (std::size_t i = 0; i < n; ++i) rank[i] = pair_rank(i);
        while (true) {
            std::int32_t best = no_rank;
            std::size_t at = 0;
            for (std::size_t i = 0; i + 1 < parts; ++i) {
                if (rank[i] < best) {
                    best = rank[i];
                    at = i;
                }
            }
            if (best == no_rank) break;
            id[at] = best;
            // Remove part at + 1.
            std::memmove(start + at + 1, start + at + 2, (parts - at - 1) * sizeof start[0]);
            std::memmove(id + at + 1, id + at + 2, (parts - at - 2) * sizeof id[0]);
            std::memmove(rank + at + 1, rank + at + 2, (parts - at - 2) * sizeof rank[0]);
            --parts;
            rank[at] = pair_rank(at);
            if (at > 0) rank[at - 1] = pair_rank(at - 1);
        }
        ids.insert(ids.end(), id, id + parts);
        return parts;
    }

    // Same merges as merge_small, found with a min-heap of (rank, part start) and a linked list
    // of parts; stale heap entries are skipped. O(n log n).
    std::size_t merge_large(const char* piece, std::size_t n, std::vector<std::int32_t>& ids) const {
        using detail::bpe::no_rank;
        const Data& d = *data_;
        if (n >= std::numeric_limits<std::uint32_t>::max()) throw TokenizerError("piece longer than 4 GiB");
        // Parts are named by their first byte; next[p] is the following part (n at the end).
        std::vector<std::uint32_t> next(n), prev(n);
        std::vector<std::int32_t> id(n), rank(n);
        for (std::size_t i = 0; i < n; ++i) {
            next[i] = static_cast<std::uint32_t>(i + 1);
            prev[i] = static_cast<std::uint32_t>(i - 1);  // wraps for i = 0; never read there
            id[i] = d.byte_rank[static_cast<unsigned char>(piece[i])];
        }
        auto pair_rank = [&](std::size_t p) {
            const std::size_t q = next[p];
            if (q >= n) return no_rank;
            const std::size_t end = next[q];
            return lookup(piece + p, end - p);
        };
        using Entry = std::uint64_t;  // rank << 32 | part start: orders by rank, then leftmost
        std::vector<Entry> heap_storage;
        heap_storage.reserve(n);
        std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap(std::greater<Entry>(),
                                                                                   std::move(heap_storage));
        for (std::size_t p = 0; p < n; ++p) {
            rank[p] = pair_rank(p);
            if (rank[p] != no_rank) heap.push((Entry(static_cast<std::uint32_t>(rank[p])) << 32) | p);
        }
        while (!heap.empty()) {
            const Entry top = heap.top();
            heap.pop();
            const auto p = static_cast<std::size_t>(top & 0xFFFFFFFFu);
            const auto r = static_cast<std::int32_t>(top >> 32);
            if (id[p] < 0 || rank[p] != r) continue;  // merged away or stale
            const std::size_t q = next[p];
            id[p] = r;
            id[q] = -1;
            next[p] = next[q];
            if (next[q] < n) prev[next[q]] = static_cast<std::uint32_t>(p);
            rank[p] = pair_rank(p);
            if (rank[p] != no_rank) heap.push((Entry(static_cast<std::uint32_t>(rank[p])) << 32) | p);
            if (p > 0) {
                const std::size_t before = prev[p];
                rank[before] = pair_rank(before);
                if (rank[before] != no_rank) heap.push((Entry(static_cast<std::uint32_t>(rank[before])) << 32) | before);
            }
        }
        std::size_t count = 0;
        for (std::size_t p = 0; p < n; p = next[p]) {
            ids.push_back(id[p]);
            ++count;
        }
        return count;
    }

    // Encodes valid UTF-8; returns the number of tokens of the last piece (0 if none).
    std::size_t encode_valid_utf8(std::string_view text, std::vector<std::int32_t>& ids) const {
        std::size_t last_piece_tokens = 0;
        for_each_piece(text, true, [&](std::size_t begin, std::size_t end) {
            last_piece_tokens = encode_piece(text.data() + begin, end - begin, ids);
        });
        return last_piece_tokens;
    }

    // tiktoken `_encode_bytes` for text whose first invalid UTF-8 byte is at `valid`.
    void encode_with_invalid_utf8(std::string_view text, std::size_t valid, std::vector<std::int32_t>& ids) const {
        const Data& d = *data_;
        const std::size_t first = ids.size();
        std::size_t last_piece_tokens = encode_valid_utf8(text.substr(0, valid), ids);
        const std::size_t produced = ids.size() - first;
        // Take back the last piece, extended over the whitespace-only tokens before it.
        if (last_piece_tokens > 0 && d.only_space_bytes[static_cast<std::size_t>(ids[ids.size() - last_piece_tokens])]) {
            while (last_piece_tokens < produced &&
                   d.only_space_bytes[static_cast<std::size_t>(ids[ids.size() - last_piece_tokens - 1])]) {
                ++last_piece_tokens;
            }
        }
        std::string unstable;
        if (produced > 0 && last_piece_tokens > 0) {
            for (std::size_t i = ids.size() - last_piece_tokens; i < ids.size(); ++i) unstable += token_bytes(ids[i]);
            ids.resize(ids.size() - last_piece_tokens);
        }
        unstable.append(text.substr(valid));
        encode_piece(unstable.data(), unstable.size(), ids);
    }
};

}  // namespace gemma3
