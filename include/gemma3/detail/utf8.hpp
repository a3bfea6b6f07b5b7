// The library's one UTF-8 decoder: what counts as a valid character, and how invalid bytes are
// grouped, for the tokenizer (where tiktoken's byte path starts) and corpus preparation (what
// U+FFFD replaces). Hand-written: a few lines, and none of the dependencies exposes these rules.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace gemma3::detail::utf8 {

struct Sequence {
    std::size_t length;  // >= 1
    bool valid;
};

// The sequence at text[i] (i < text.size()): a valid character and its length, or else the maximal
// invalid subpart there — a lead byte followed by as many continuation bytes as are still allowed
// for it, or one byte (Unicode 15, §3.9 "U+FFFD substitution of maximal subparts"). Valid means
// Rust's `str::from_utf8` rule: no overlong forms, no surrogates, nothing above U+10FFFF, nothing
// truncated.
inline Sequence sequence_at(std::string_view text, std::size_t i) {
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    const unsigned char c = s[i];
    if (c < 0x80) return {1, true};
    std::size_t length;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
        length = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        length = 3;
        if (c == 0xE0) lo = 0xA0;  // no overlong 3-byte forms
        if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
        length = 4;
        if (c == 0xF0) lo = 0x90;  // no overlong 4-byte forms
        if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    } else {
        return {1, false};
    }
    std::size_t j = i + 1;
    if (j >= text.size() || s[j] < lo || s[j] > hi) return {1, false};
    ++j;
    while (j < i + length && j < text.size() && (s[j] & 0xC0) == 0x80) ++j;
    return {j - i, j - i == length};
}

// Length of the longest valid prefix of `text` (where tiktoken's byte path stops splitting).
inline std::size_t valid_prefix(std::string_view text) {
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    const std::size_t n = text.size();
    std::size_t i = 0;
    while (i < n) {
        // Skip ASCII eight bytes at a time.
        if (i + 8 <= n) {
            std::uint64_t word;
            std::memcpy(&word, s + i, 8);
            if ((word & 0x8080808080808080ull) == 0) {
                i += 8;
                continue;
            }
        }
        const Sequence seq = sequence_at(text, i);
        if (!seq.valid) return i;
        i += seq.length;
    }
    return n;
}

// Decodes one code point at `pos` (advancing it); -1 on malformed input.
inline long next_code_point(std::string_view s, std::size_t& pos) {
    if (pos >= s.size()) return -1;
    const Sequence seq = sequence_at(s, pos);
    if (!seq.valid) return -1;
    const auto* p = reinterpret_cast<const unsigned char*>(s.data() + pos);
    static constexpr unsigned char lead_mask[] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    long cp = p[0] & lead_mask[seq.length];
    for (std::size_t k = 1; k < seq.length; ++k) cp = (cp << 6) | (p[k] & 0x3F);
    pos += seq.length;
    return cp;
}

// Appends `text` to `out` with every maximal invalid subpart replaced by U+FFFD; returns how many
// were replaced.
inline std::uint64_t replace_invalid(std::string_view text, std::string& out) {
    std::uint64_t replaced = 0;
    while (!text.empty()) {
        const std::size_t valid = valid_prefix(text);
        out.append(text.substr(0, valid));
        if (valid == text.size()) break;
        out.append("\xEF\xBF\xBD");
        ++replaced;
        text.remove_prefix(valid + sequence_at(text, valid).length);
    }
    return replaced;
}

}  // namespace gemma3::detail::utf8
