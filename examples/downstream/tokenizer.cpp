// Uses the tokenizer component of an installed gemma3 (gemma3::tokenizer, which brings PCRE2): a
// byte-level vocabulary of 256 tokens, written here in tiktoken's format, encodes text to its bytes.
#include <gemma3/text/tokenizer.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {
std::string base64(unsigned char byte) {
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    return {alphabet[byte >> 2], alphabet[(byte & 3) << 4], '=', '='};
}
}  // namespace

int main() {
    const auto path = std::filesystem::temp_directory_path() / "downstream_bytes.tiktoken";
    {
        std::ofstream out(path);
        for (int b = 0; b < 256; ++b) out << base64(static_cast<unsigned char>(b)) << ' ' << b << '\n';
    }
    const auto tokenizer = gemma3::Tokenizer::from_tiktoken_file(path, /*expected_tokens=*/256);
    std::filesystem::remove(path);
    const std::string text = "In the beginning";
    const std::vector<std::int32_t> ids = tokenizer.encode(text, /*allow_special=*/false);
    bool bytes = ids.size() == text.size();
    for (std::size_t i = 0; bytes && i < ids.size(); ++i) bytes = ids[i] == static_cast<unsigned char>(text[i]);
    std::printf("\"%s\" -> %zu tokens, %s\n", text.c_str(), ids.size(), bytes ? "one per byte" : "NOT one per byte");
    return bytes && tokenizer.decode(ids) == text ? 0 : 1;
}
