// Fuzz harness: GPT-2's tokenizer on arbitrary bytes. Promises checked:
//   - encode_ordinary never fails and decode gives back the exact bytes (valid UTF-8 or not);
//     every id is a mergeable token (below <|endoftext|>);
//   - encode(text, allow_special) decodes to the exact bytes too, with one <|endoftext|> id per
//     occurrence of the text "<|endoftext|>";
//   - on valid UTF-8, the pre-tokenizer's pieces concatenate to the text, and the ASCII fast path
//     gives the same pieces as PCRE2 alone.
// The ranks come from data/gpt2.tiktoken (scripts/fetch_tokenizer.sh).
#include "fuzz_support.hpp"

#include <gemma3/text/tokenizer.hpp>

namespace {

const gemma3::Tokenizer& gpt2() {
    static const gemma3::Tokenizer tokenizer =
        gemma3::Tokenizer::from_tiktoken_file(std::filesystem::path(GEMMA3_SOURCE_DIR) / "data" / "gpt2.tiktoken");
    return tokenizer;
}

std::size_t count_occurrences(std::string_view text, std::string_view needle) {
    std::size_t count = 0;
    for (std::size_t at = text.find(needle); at != std::string_view::npos; at = text.find(needle, at + needle.size())) {
        ++count;
    }
    return count;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> gemma3::fuzz::generated_seeds() {
    // Long runs: one giant piece after an invalid byte, and long whitespace (the `\s+(?!\S)` rule).
    return {{"invalid_byte_then_long_text.txt", "ok \xff" + std::string(20000, 'a') + " b"},
            {"long_whitespace.txt", "x" + std::string(5000, ' ') + "\n" + std::string(5000, '\t') + "y"},
            {"many_eot.txt", [] {
                 std::string s;
                 for (int i = 0; i < 500; ++i) s += "<|endoftext|>" + std::to_string(i);
                 return s;
             }()}};
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using gemma3::fuzz::check;
    const std::string_view text = gemma3::fuzz::as_text(data, size);
    const gemma3::Tokenizer& t = gpt2();

    const auto ids = t.encode_ordinary(text);
    for (const auto id : ids) check(id >= 0 && id < t.eot_token(), "encode_ordinary gave id " + std::to_string(id));
    check(t.decode(ids) == text, "decode(encode_ordinary(text)) is not the text");

    const auto special = t.encode(text, true);
    check(t.decode(special) == text, "decode(encode(text, allow_special)) is not the text");
    const auto eot_ids = static_cast<std::size_t>(std::count(special.begin(), special.end(), t.eot_token()));
    check(eot_ids == count_occurrences(text, gemma3::Tokenizer::eot_text),
          "encode(text, allow_special) has " + std::to_string(eot_ids) + " <|endoftext|> ids");

    if (gemma3::detail::bpe::utf8_valid_prefix(text) == text.size()) {
        const auto fast = t.split(text, true), slow = t.split(text, false);
        check(fast == slow, "the ASCII fast path splits differently from PCRE2");
        std::string joined;
        for (const auto piece : fast) joined += piece;
        check(joined == text, "the pieces do not concatenate to the text");
    }
    return 0;
}
