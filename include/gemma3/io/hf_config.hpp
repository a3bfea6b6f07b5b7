// Hugging Face's config.json (Gemma3TextConfig) to and from our model config, both ways derived
// from the field table's hugging_face column (config_fields.hpp).
//
// Reading keeps the user's field names in every message ("max_position_embeddings", not our
// "context_length"), checks every value as our own files are checked, and refuses the features
// this library does not implement (logit soft-capping, RoPE scaling, bidirectional attention)
// rather than ignoring them.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <gemma3/io/config_file.hpp>
#include <gemma3/io/json_read.hpp>

namespace gemma3 {

// Without layer_types, a config.json's pattern is built from num_hidden_layers; no real model has
// more layers than this, and a bound keeps a 33-byte file from asking for billions of entries.
inline constexpr int max_hf_pattern_layers = 1 << 16;

namespace detail {

using nlohmann::json;

// One row of the table from a Hugging Face text config into our JSON fields (`ours`), noting in
// `names` how the user's file spells the field. Values are copied as they are; parse_model_config
// checks them afterwards, under the user's names.
struct HfReading {
    const json& text;    // the text config: the file itself or its "text_config"
    std::string prefix;  // "text_config." when nested, for names
    const std::string& source;
    json& ours;
    FieldNames& names;
    std::vector<std::string>& problems;

    const json* find(std::string_view key) const {
        const auto it = text.find(key);
        return it == text.end() || it->is_null() ? nullptr : &*it;
    }
    void problem(const std::string& field, const std::string& what) {
        problems.push_back(source + ": field \"" + prefix + field + "\": " + what);
    }

    template <class T>
    void read(const fields::Hf<T>& h, std::string_view field) {
        names[std::string(field)] = prefix + std::string(h.name);
        if (const json* value = find(h.name)) {
            ours[std::string(field)] = *value;
        } else if constexpr (!std::is_same_v<T, std::nullptr_t>) {
            if (h.fallback) ours[std::string(field)] = *h.fallback;
        }
    }

    void read(const fields::HfRope& h, std::string_view field) {
        const std::string kind(h.kind);
        if (const json* rope = find("rope_parameters"); rope && rope->is_object() && rope->contains(kind)) {
            const json& entry = rope->at(kind);
            const std::string path = "rope_parameters." + kind;
            if (!entry.is_object()) {
                problem(path, "value " + json_read::excerpt(entry) + " is " + json_read::kind(entry) +
                                  "; expected an object with \"rope_theta\"");
                return;
            }
            if (entry.contains("rope_type") && entry.at("rope_type") != "default") {
                problem(path + ".rope_type", "value " + json_read::excerpt(entry.at("rope_type")) +
                                                 " is not implemented; expected \"default\"");
            }
            if (entry.contains("rope_theta")) {
                names[std::string(field)] = prefix + path + ".rope_theta";
                ours[std::string(field)] = entry.at("rope_theta");
                return;
            }
        }
        names[std::string(field)] = prefix + std::string(h.legacy_name);
        const json* legacy = find(h.legacy_name);
        ours[std::string(field)] = legacy ? *legacy : json(h.fallback);
    }

    void read(fields::HfLayerTypes, std::string_view field) {
        names[std::string(field)] = prefix + "layer_types";
        if (const json* kinds = find("layer_types")) {
            ours[std::string(field)] = *kinds;
            return;
        }
        // Gemma 3's rule (older config.json files): layer i is full iff (i + 1) % pattern == 0.
        const json* layers = find("num_hidden_layers");
        if (layers == nullptr) return;  // reported as num_hidden_layers missing
        std::string why;
        const auto n = json_read::to_integer<int>(*layers, 1, std::numeric_limits<int>::max(), why);
        if (!n) return;  // reported by num_hidden_layers' own check
        int period = 6;  // transformers' default
        if (const json* pattern = find("sliding_window_pattern")) {
            const auto p = json_read::to_integer<int>(*pattern, 1, std::numeric_limits<int>::max(), why);
            if (!p) {
                problem("sliding_window_pattern", "value " + json_read::excerpt(*pattern) + " " + why +
                                                      "; expected a positive integer");
                return;
            }
            period = *p;
        }
        if (*n > max_hf_pattern_layers) {
            problem("num_hidden_layers", "value " + std::to_string(*n) + " is more than " +
                                             std::to_string(max_hf_pattern_layers) +
                                             " layers; expected a smaller model, or layer_types listing every layer");
            return;
        }
        json kinds = json::array();
        for (int i = 0; i < *n; ++i) {
            kinds.push_back(std::string((i + 1) % period == 0 ? FullAttention::name : SlidingAttention::name));
        }
        ours[std::string(field)] = std::move(kinds);
    }

    template <class T>
    void read(const fields::HfFixed<T>& h, std::string_view field) {
        ours[std::string(field)] = h.value;
    }

    void read(fields::NotInHf, std::string_view) {}
};

// One row of the table from our config into a Hugging Face config.json.
template <class T, class V>
void write_hf(json& hf, const fields::Hf<T>& h, const V& value) {
    if constexpr (std::is_same_v<V, double>) {
        // transformers declares some such fields int and rejects 64.0; a whole value in the range
        // where doubles are exact integers is written as one, anything else stays a number.
        if (h.integral && value == std::floor(value) && std::fabs(value) <= 9007199254740992.0) {
            hf[std::string(h.name)] = static_cast<std::int64_t>(value);
            return;
        }
    }
    hf[std::string(h.name)] = value;
}

inline void write_hf(json& hf, const fields::HfRope& h, double value) {
    hf["rope_parameters"][std::string(h.kind)] = {{"rope_type", "default"}, {"rope_theta", value}};
    hf[std::string(h.legacy_name)] = value;  // older transformers read this one
}

inline void write_hf(json& hf, fields::HfLayerTypes, const LayerKinds& kinds) { hf["layer_types"] = json_value(kinds); }

template <class T, class V>
void write_hf(json&, const fields::HfFixed<T>&, const V&) {}

template <class V>
void write_hf(json&, fields::NotInHf, const V&) {}

}  // namespace detail

// The Hugging Face config.json for our model config (transformers >= 4.50 field names, and the
// older names of the RoPE bases too).
inline nlohmann::json hf_config_json(const ModelConfigFile& c, std::string_view torch_dtype = "float32") {
    nlohmann::json hf = {
        {"architectures", {"Gemma3ForCausalLM"}},
        {"model_type", "gemma3_text"},
        {"hidden_activation", "gelu_pytorch_tanh"},
        {"attn_logit_softcapping", nullptr},
        {"final_logit_softcapping", nullptr},
        {"attention_bias", false},
        {"attention_dropout", 0.0},
        {"pad_token_id", nullptr},  // no padding row: the seed has none
        // GPT-2's <|endoftext|> begins and ends a text (what its tokenizer files say too).
        {"bos_token_id", c.vocab_size == 50257 ? nlohmann::json(50256) : nlohmann::json(nullptr)},
        {"eos_token_id", c.vocab_size == 50257 ? nlohmann::json(50256) : nlohmann::json(nullptr)},
        {"use_cache", true},
        {"dtype", torch_dtype},
    };
#define GEMMA3_FIELD_TO_HF(type, name, presence, rule, hugging_face, ...) \
    detail::write_hf(hf, fields::hugging_face, c.name);
    GEMMA3_MODEL_CONFIG_FIELDS(GEMMA3_FIELD_TO_HF)
#undef GEMMA3_FIELD_TO_HF
    return hf;
}

// Our model config from a Hugging Face Gemma 3 config.json (the text model, or a multimodal
// config's "text_config"; older and newer RoPE layouts). `source` names it in messages, and the
// result's `format` is ConfigFormat::hugging_face, so later messages (require_matches) use
// Hugging Face's field names too. Throws ConfigError listing every problem.
inline ModelConfigFile model_config_from_hf_json(const nlohmann::json& hf, const std::string& source);

namespace detail {
// `problems` holds those found before (duplicate fields of the file).
inline ModelConfigFile model_config_from_hf_json(const nlohmann::json& hf, const std::string& source,
                                                 std::vector<std::string> problems) {
    if (!hf.is_object()) {
        throw ConfigError({source + ": expected a JSON object (a Hugging Face config.json) at the top level, found " +
                           json_read::kind(hf)});
    }
    const nlohmann::json* text = &hf;
    std::string prefix;
    if (const auto it = hf.find("text_config"); it != hf.end() && !it->is_null()) {
        if (!it->is_object()) {
            throw ConfigError({source + ": field \"text_config\": value " + json_read::excerpt(*it) + " is " +
                               json_read::kind(*it) + "; expected an object"});
        }
        text = &*it;
        prefix = "text_config.";
    }
    nlohmann::json ours = nlohmann::json::object();
    detail::FieldNames names;
    detail::HfReading reading{*text, prefix, source, ours, names, problems};

    for (const char* key : {"final_logit_softcapping", "attn_logit_softcapping", "rope_scaling"}) {
        if (const auto* value = reading.find(key)) {
            reading.problem(key, "is set (" + json_read::excerpt(*value) + "); this library implements Gemma 3 without it");
        }
    }
    if (const auto* bidirectional = reading.find("use_bidirectional_attention")) {
        if (!bidirectional->is_boolean()) {
            reading.problem("use_bidirectional_attention", "value " + json_read::excerpt(*bidirectional) + " is " +
                                                               json_read::kind(*bidirectional) + "; expected true or false");
        } else if (bidirectional->get<bool>()) {
            reading.problem("use_bidirectional_attention", "is true; this library implements causal attention only");
        }
    }
    if (const auto* rope = reading.find("rope_parameters"); rope && !rope->is_object()) {
        reading.problem("rope_parameters", "value " + json_read::excerpt(*rope) + " is " + json_read::kind(*rope) +
                                               "; expected an object");
    }

#define GEMMA3_FIELD_FROM_HF(type, name, presence, rule, hugging_face, ...) reading.read(fields::hugging_face, #name);
    GEMMA3_MODEL_CONFIG_FIELDS(GEMMA3_FIELD_FROM_HF)
#undef GEMMA3_FIELD_FROM_HF
    return parse_model_config(ours, source, std::move(problems), &names);
}
}  // namespace detail

inline ModelConfigFile model_config_from_hf_json(const nlohmann::json& hf, const std::string& source) {
    return detail::model_config_from_hf_json(hf, source, {});
}

// Whether a parsed JSON document looks like a Hugging Face config.json rather than our model
// config (it has fields of transformers' that ours never has).
inline bool is_hf_config(const nlohmann::json& j) {
    if (!j.is_object()) return false;
    for (const char* key : {"model_type", "architectures", "text_config", "hidden_size", "num_hidden_layers"}) {
        if (j.contains(key)) return true;
    }
    return false;
}

// Reads and checks a Hugging Face config.json (size and depth limits as for our config files).
// Throws ConfigError naming the file and every problem, with the file's own field names.
inline ModelConfigFile load_hf_model_config(const std::filesystem::path& path) {
    std::vector<std::string> problems;
    const auto j = detail::parse_config_text(detail::read_config_text(path, "Hugging Face config"), path.string(),
                                             problems);
    return detail::model_config_from_hf_json(j, path.string(), std::move(problems));
}

// Reads a model config in either format: ours (model_config.json) or Hugging Face's config.json,
// told apart by is_hf_config. What gemma3_generate_config() reads.
inline ModelConfigFile load_model_config_any_format(const std::filesystem::path& path) {
    std::vector<std::string> problems;
    const auto j = detail::parse_config_text(detail::read_config_text(path, "model config"), path.string(), problems);
    if (is_hf_config(j)) return detail::model_config_from_hf_json(j, path.string(), std::move(problems));
    return detail::parse_model_config(j, path.string(), std::move(problems));
}

}  // namespace gemma3
