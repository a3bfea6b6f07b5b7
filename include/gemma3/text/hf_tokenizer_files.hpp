// GPT-2's tokenizer in the files Hugging Face transformers reads beside a model, made from the BPE
// ranks this library tokenizes with, so that AutoTokenizer.from_pretrained(checkpoint) and
// pipeline("text-generation", model=checkpoint) work on a checkpoint as they are, and llama.cpp's
// convert_hf_to_gguf.py finds a vocabulary there.
//
//   tokenizer.json          the `tokenizers` library's format (what transformers 5 saves)
//   tokenizer_config.json   tokenizer class and special tokens (every version)
//   vocab.json, merges.txt  GPT-2's original format (what older transformers versions read)
//
// The merges are not stored in tiktoken's format, only the ranks; they follow from them: the token
// of rank r is made by the one merge that byte-pair encoding its bytes with the ranks below r ends
// with (tiktoken's `data_gym_to_mergeable_bpe_ranks` goes the other way). No PCRE2 is needed here.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace gemma3 {

struct NamedText {
    std::string name;      // a file name inside the checkpoint directory
    std::string contents;
};

namespace detail::hf_tokenizer {

// GPT-2's byte-to-unicode alphabet (encoder.py `bytes_to_unicode`): printable Latin-1 bytes stand
// for themselves, the other 68 bytes for U+0100.. in byte order. Returns each byte's UTF-8 text.
inline std::array<std::string, 256> byte_alphabet() {
    const auto printable = [](int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; };
    const auto utf8 = [](unsigned code_point) {
        std::string s;
        if (code_point < 0x80) {
            s.push_back(static_cast<char>(code_point));
        } else {  // the alphabet ends at U+0143: two bytes suffice
            s.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
            s.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
        }
        return s;
    };
    std::array<std::string, 256> text;
    unsigned extra = 0;
    for (int b = 0; b < 256; ++b) text[static_cast<std::size_t>(b)] = utf8(printable(b) ? static_cast<unsigned>(b) : 256 + extra++);
    return text;
}

inline std::string json_string(std::string_view s) { return nlohmann::json(std::string(s)).dump(); }

}  // namespace detail::hf_tokenizer

// The four files for a byte-level BPE vocabulary given as the bytes of each mergeable token by rank
// (ranks 0..N-1), with `special` as token N: bos, eos and unk, as GPT-2 has it. `model_max_length`
// is the model's context length. Throws std::invalid_argument if the ranks are not a byte-level BPE
// vocabulary (a byte missing, a token that no merge of lower-ranked tokens makes).
inline std::vector<NamedText> hf_tokenizer_files(std::span<const std::string> tokens, std::string_view special,
                                                 std::int64_t model_max_length) {
    using namespace detail::hf_tokenizer;
    const auto alphabet = byte_alphabet();
    std::unordered_map<std::string, std::int32_t> rank_of;
    rank_of.reserve(tokens.size());
    for (std::size_t r = 0; r < tokens.size(); ++r) {
        if (tokens[r].empty() || !rank_of.emplace(tokens[r], static_cast<std::int32_t>(r)).second) {
            throw std::invalid_argument("BPE ranks: token of rank " + std::to_string(r) + " is empty or repeated");
        }
    }
    for (int b = 0; b < 256; ++b) {
        if (!rank_of.count(std::string(1, static_cast<char>(b)))) {
            throw std::invalid_argument("BPE ranks: no token for byte " + std::to_string(b));
        }
    }
    const auto unicode = [&](const std::string& bytes) {
        std::string s;
        for (const unsigned char c : bytes) s += alphabet[c];
        return s;
    };

    // merges[i] makes the i-th multi-byte token in rank order.
    std::vector<std::pair<std::string, std::string>> merges;
    std::vector<std::string> parts;
    for (std::size_t r = 0; r < tokens.size(); ++r) {
        const std::string& token = tokens[r];
        if (token.size() == 1) continue;
        parts.clear();
        for (const char c : token) parts.emplace_back(1, c);
        // Byte-pair encoding restricted to ranks below r, until two parts are left.
        while (parts.size() > 2) {
            std::size_t best = parts.size();
            std::int32_t best_rank = std::numeric_limits<std::int32_t>::max();
            for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
                const auto it = rank_of.find(parts[i] + parts[i + 1]);
                if (it != rank_of.end() && static_cast<std::size_t>(it->second) < r && it->second < best_rank) {
                    best = i;
                    best_rank = it->second;
                }
            }
            if (best == parts.size()) break;
            parts[best] += parts[best + 1];
            parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best) + 1);
        }
        const auto below = [&](const std::string& part) {
            const auto it = rank_of.find(part);
            return it != rank_of.end() && static_cast<std::size_t>(it->second) < r;
        };
        if (parts.size() != 2 || !below(parts[0]) || !below(parts[1])) {
            throw std::invalid_argument("BPE ranks: the token of rank " + std::to_string(r) +
                                        " is not a merge of two tokens of lower rank");
        }
        merges.emplace_back(unicode(parts[0]), unicode(parts[1]));
    }

    const auto special_id = static_cast<std::int64_t>(tokens.size());
    const std::string special_text(special);
    // The vocabulary as a JSON object in id order (written by hand: nlohmann's ordered_json inserts
    // in linear time, quadratic for 50k entries).
    std::string vocab = "{";
    for (std::size_t r = 0; r < tokens.size(); ++r) {
        vocab += json_string(unicode(tokens[r])) + ": " + std::to_string(r) + ", ";
    }
    vocab += json_string(special_text) + ": " + std::to_string(special_id) + "}";

    std::string merges_txt = "#version: 0.2\n";
    std::string merges_json = "[";
    for (std::size_t i = 0; i < merges.size(); ++i) {
        merges_txt += merges[i].first + " " + merges[i].second + "\n";
        merges_json += (i ? ", [" : "[") + json_string(merges[i].first) + ", " + json_string(merges[i].second) + "]";
    }
    merges_json += "]";

    // tokenizer.json: the pipeline transformers 5 writes for GPT-2 (byte-level pre-tokenizer with
    // GPT-2's split pattern, BPE, byte-level decoder; no prefix space, nothing added around a text).
    const nlohmann::json byte_level = {
        {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    nlohmann::json decoder = byte_level;
    decoder["add_prefix_space"] = true;
    nlohmann::json head = {
        {"version", "1.0"},
        {"truncation", nullptr},
        {"padding", nullptr},
        {"added_tokens",
         {{{"id", special_id}, {"content", special_text}, {"single_word", false}, {"lstrip", false},
           {"rstrip", false}, {"normalized", false}, {"special", true}}}},
        {"normalizer", nullptr},
        {"pre_tokenizer", byte_level},
        {"post_processor",
         {{"type", "TemplateProcessing"},
          {"single", {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
          {"pair", {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
          {"special_tokens", nlohmann::json::object()}}},
        {"decoder", decoder},
    };
    const nlohmann::json model_head = {{"type", "BPE"},          {"dropout", nullptr},
                                       {"unk_token", nullptr},   {"continuing_subword_prefix", ""},
                                       {"end_of_word_suffix", ""}, {"fuse_unk", false},
                                       {"byte_fallback", false}, {"ignore_merges", false}};
    std::string tokenizer_json = head.dump();
    std::string model = model_head.dump();
    model.pop_back();  // reopen the object to append the two large members
    model += ",\"vocab\":" + vocab + ",\"merges\":" + merges_json + "}";
    tokenizer_json.pop_back();
    tokenizer_json += ",\"model\":" + model + "}\n";

    const nlohmann::json tokenizer_config = {
        {"tokenizer_class", "GPT2Tokenizer"},
        {"add_prefix_space", false},
        {"add_bos_token", false},
        {"bos_token", special_text},
        {"eos_token", special_text},
        {"unk_token", special_text},
        {"pad_token", nullptr},
        {"errors", "replace"},
        {"model_max_length", model_max_length},
        {"added_tokens_decoder",
         {{std::to_string(special_id),
           {{"content", special_text}, {"lstrip", false}, {"normalized", false}, {"rstrip", false},
            {"single_word", false}, {"special", true}}}}},
    };
    return {{"tokenizer.json", std::move(tokenizer_json)},
            {"tokenizer_config.json", tokenizer_config.dump(2) + "\n"},
            {"vocab.json", vocab + "\n"},
            {"merges.txt", std::move(merges_txt)}};
}

// generation_config.json for a model whose `special` token (id eos_id) starts and ends a text.
inline NamedText hf_generation_config(std::int64_t eos_id) {
    const nlohmann::json j = {{"bos_token_id", eos_id}, {"eos_token_id", eos_id}, {"pad_token_id", eos_id}};
    return {"generation_config.json", j.dump(2) + "\n"};
}

}  // namespace gemma3
