// Run-time configuration files: the seed's config/model_config.json and config/training_config.json.
//
// The compiled config types (config.hpp) fix the architecture at compile time. These structs hold
// what a JSON file says. Loading checks every field and every cross-field rule and reports all
// problems at once (file, field, offending value, what was expected), so a user fixes a file in one
// go instead of one error per run. Unknown fields are errors, never ignored: a misspelt optional
// field would otherwise silently fall back to its default. `require_matches<C>()` then checks that
// a file describes the architecture compiled into the program, and says how to build one that does.
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <gemma3/core/config.hpp>
#include <gemma3/core/config_fields.hpp>
#include <gemma3/detail/text.hpp>
#include <gemma3/io/json_read.hpp>

namespace gemma3 {

// Every problem found in one or more config files. what() lists them one per line (each line
// names the file and the field), followed by advice on how to fix them when there is some.
class ConfigError : public std::runtime_error {
public:
    explicit ConfigError(std::vector<std::string> problems, const std::string& advice = {})
        : std::runtime_error(join(problems, advice)), problems_(std::move(problems)) {}

    const std::vector<std::string>& problems() const noexcept { return problems_; }

private:
    static std::string join(const std::vector<std::string>& problems, const std::string& advice) {
        std::string text;
        for (const auto& p : problems) {
            if (!text.empty()) text += '\n';
            text += p;
        }
        if (!advice.empty()) text += "\n" + advice;
        return text;
    }
    std::vector<std::string> problems_;
};

// The accepted spellings of the string-valued fields.
inline constexpr std::array<std::string_view, 4> model_dtypes{"bfloat16", "float32", "float16", "float64"};
inline constexpr std::array<std::string_view, 2> init_schemes{"seed", "hf"};
inline constexpr std::array<std::string_view, 2> training_devices{"cpu", "cuda"};
inline constexpr std::array<std::string_view, 4> training_dtypes{"bfloat16", "float32", "float16", "float64"};
inline constexpr std::array<std::string_view, 3> training_ptdtypes{"float32", "bfloat16", "float16"};

// The attention kind of each layer, in order (a compiled config's `layer_types` type list at run time).
using LayerKinds = std::vector<AttentionKind>;

// Which format a model config was read from: ours (model_config.json) or Hugging Face's
// config.json. Messages name the fields as that format spells them.
enum class ConfigFormat { gemma3, hugging_face };

// The vocabulary of the field tables' columns (config_fields.hpp).
namespace fields {

// presence
struct Required {};
inline constexpr Required required{};
struct Derived {};
inline constexpr Derived derived{};
template <class T>
struct Optional {
    T value;
};
template <class T>
constexpr Optional<T> optional(T value) {
    return {value};
}

template <class T>
T initial_value(Required) {
    return T{};
}
template <class T>
T initial_value(Derived) {
    return T{};
}
template <class T, class V>
T initial_value(Optional<V> presence) {
    return T(presence.value);
}
constexpr bool is_required(Required) { return true; }
template <class P>
constexpr bool is_required(P) {
    return false;
}

// rules: numeric ranges, with the words messages use for numbers and integers
struct Range {
    double low;
    bool low_inclusive;
    double high;
    bool high_inclusive;
    std::string_view number_text;
    std::string_view integer_text;

    constexpr bool contains(double x) const {
        return (low_inclusive ? x >= low : x > low) && (high_inclusive ? x <= high : x < high);
    }
    // The integers of the range that T holds.
    template <std::integral T>
    T integer_low() const {
        const double first = low_inclusive ? std::ceil(low) : std::floor(low) + 1;
        return first <= static_cast<double>(std::numeric_limits<T>::min()) ? std::numeric_limits<T>::min()
                                                                            : static_cast<T>(first);
    }
    template <std::integral T>
    T integer_high() const {
        const double last = high_inclusive ? std::floor(high) : std::ceil(high) - 1;
        return last >= static_cast<double>(std::numeric_limits<T>::max()) ? std::numeric_limits<T>::max()
                                                                           : static_cast<T>(last);
    }
};
inline constexpr double unbounded = std::numeric_limits<double>::infinity();
inline constexpr Range positive{0, false, unbounded, false, "a positive number", "a positive integer"};
inline constexpr Range above_one{1, false, unbounded, false, "a number greater than 1", "an integer greater than 1"};
inline constexpr Range non_negative{0, true, unbounded, false, "a number >= 0", "an integer >= 0"};
inline constexpr Range fraction{0, true, 1, false, "a number in [0, 1)", "the integer 0"};
inline constexpr Range start_factor{0, false, 1, true, "a number in (0, 1]", "the integer 1"};
struct Any {};  // any value of the field's type (booleans)
inline constexpr Any any{};
struct OneOf {
    std::span<const std::string_view> allowed;
};
constexpr OneOf one_of(std::span<const std::string_view> allowed) { return {allowed}; }
struct LayerKindsRule {};
inline constexpr LayerKindsRule layer_kinds{};

// Hugging Face's config.json
template <class T = std::nullptr_t>
struct Hf {
    std::string_view name;
    std::optional<T> fallback;  // transformers' default when the file lacks the field
    bool integral = false;      // written as an integer when whole
};
inline Hf<> hf(std::string_view name) { return {name, std::nullopt}; }
template <class T>
Hf<T> hf(std::string_view name, T fallback) {
    return {name, fallback};
}
template <class T>
Hf<T> hf_integral(std::string_view name, T fallback) {
    return {name, fallback, true};
}
struct HfRope {
    std::string_view kind;         // key in rope_parameters (transformers >= 4.56)
    std::string_view legacy_name;  // the older top-level field
    double fallback;
};
constexpr HfRope hf_rope(std::string_view kind, std::string_view legacy_name, double fallback) {
    return {kind, legacy_name, fallback};
}
struct HfLayerTypes {};  // layer_types, or num_hidden_layers and sliding_window_pattern
inline constexpr HfLayerTypes hf_layer_types{};
template <class T>
struct HfFixed {
    T value;
};
template <class T>
constexpr HfFixed<T> hf_fixed(T value) {
    return {value};
}
struct NotInHf {};
inline constexpr NotInHf not_in_hf{};

// How a Hugging Face config.json names a field in messages.
template <class T>
std::string hf_name(const Hf<T>& h, std::string_view) {
    return std::string(h.name);
}
inline std::string hf_name(const HfRope& h, std::string_view) {
    return "rope_parameters." + std::string(h.kind) + ".rope_theta";
}
inline std::string hf_name(HfLayerTypes, std::string_view) { return "layer_types"; }
template <class T>
std::string hf_name(const HfFixed<T>&, std::string_view ours) {
    return std::string(ours);
}
inline std::string hf_name(NotInHf, std::string_view ours) { return std::string(ours); }

// Whether a config.json key is this field's name there (the current or the older one).
template <class T>
bool is_hf_spelling(const Hf<T>& h, std::string_view key) {
    return h.name == key;
}
inline bool is_hf_spelling(const HfRope& h, std::string_view key) { return h.legacy_name == key; }
template <class H>
bool is_hf_spelling(const H&, std::string_view) {
    return false;
}

}  // namespace fields

#define GEMMA3_DECLARE_FIELD(type, name, presence, ...) type name = fields::initial_value<type>(fields::presence);

// The model described by a model_config.json: one member per row of GEMMA3_MODEL_CONFIG_FIELDS
// (config_fields.hpp), which says each field's type, default and allowed values.
//
// Required fields (all of the seed's): vocab_size, context_length, emb_dim, n_heads, n_layers,
// hidden_dim, qk_norm, n_kv_groups (the number of key/value heads; 1 = multi-query attention),
// query_pre_attn_scalar (scores are scaled by its -1/2 power), rope_local_base (RoPE base of the
// sliding layers), rope_base (RoPE base of the full layers), sliding_window, layer_types (n_layers
// entries, each "sliding_attention" or "full_attention"), dtype (one of model_dtypes).
//
// Optional fields and their defaults (chosen to reproduce the seed):
//   head_dim             emb_dim / n_heads, which must then divide exactly (the seed's rule);
//                        must be even either way, because RoPE rotates pairs of dimensions.
//   tie_word_embeddings  false: the seed's output head is a separate matrix (Google ties it).
//   rms_norm_eps         1e-6.
//   init                 "seed": PyTorch's default init as the seed gets it: embedding N(0, 1),
//                        Linear weights U(-1/sqrt(fan_in), +1/sqrt(fan_in)), RMSNorm weights 0.
//                        "hf": Hugging Face's init: matrices and embedding N(0, initializer_range),
//                        RMSNorm weights 0.
//   initializer_range    0.02 (used by init "hf" only).
// dtype, init and initializer_range are run-time settings, not architecture.
struct ModelConfigFile {
    GEMMA3_MODEL_CONFIG_FIELDS(GEMMA3_DECLARE_FIELD)

    ConfigFormat format = ConfigFormat::gemma3;  // the format it was read from, for messages
    std::string source;                          // where the values came from, for messages
    std::vector<std::string> warnings;           // non-fatal observations, for the program to print

    // Compares every member, format, source and warnings included.
    bool operator==(const ModelConfigFile&) const = default;
};

// The training run described by a training_config.json: one member per row of
// GEMMA3_TRAINING_CONFIG_FIELDS (config_fields.hpp).
//
// Required fields (all of the seed's):
//   learning_rate                base (peak of warmup) learning rate, > 0.
//   warmup_steps                 iterations of linear warmup, 0 <= warmup_steps <= max_iters.
//   min_lr                       eta_min of the cosine phase, >= 0. The seed has min_lr >
//                                learning_rate, which makes the cosine phase rise (a warning).
//   max_iters                    iterations (micro-batches), > 0. The schedule counts these, not
//                                optimizer steps, as the seed does.
//   eval_iters                   the seed's evaluation interval and batch count, > 0.
//   batch_size                   sequences per micro-batch, > 0.
//   block_size                   tokens per sequence, > 0 and <= the model's context_length.
//   gradient_accumulation_steps  micro-batches per optimizer step, > 0.
//   device                       "cpu" or "cuda".
//   dtype                        one of training_dtypes: the autocast precision.
//   ptdtype                      one of training_ptdtypes: the seed's tensor dtype.
//
// Optional fields and their defaults (chosen to reproduce the seed):
//   beta1 0.9, beta2 0.95        AdamW betas, each in [0, 1).
//   adam_eps 1e-9                AdamW epsilon (added after the square root), > 0.
//   weight_decay 0.1             AdamW decoupled weight decay, >= 0, applied to every parameter.
//   grad_clip 0.5                global gradient-norm clip, >= 0; 0 disables clipping.
//   warmup_start_factor 1/3      warmup starts at learning_rate * this (PyTorch LinearLR's
//                                default, which the seed relies on), in (0, 1].
//   eval_interval = eval_iters   evaluate every this many iterations (the seed uses eval_iters).
//   eval_batches = eval_iters    batches per split per evaluation (the seed uses eval_iters).
//   seed 42                      random seed of batch sampling (the seed's torch.manual_seed(42)).
//   log_interval 1               print progress every this many iterations, > 0.
struct TrainingConfig {
    GEMMA3_TRAINING_CONFIG_FIELDS(GEMMA3_DECLARE_FIELD)

    std::string source;
    std::vector<std::string> warnings;

    bool operator==(const TrainingConfig&) const = default;
};

#undef GEMMA3_DECLARE_FIELD

#define GEMMA3_FIELD_NAME(type, name, ...) std::string_view{#name},
inline constexpr std::array model_config_fields{GEMMA3_MODEL_CONFIG_FIELDS(GEMMA3_FIELD_NAME)};
inline constexpr std::array training_config_fields{GEMMA3_TRAINING_CONFIG_FIELDS(GEMMA3_FIELD_NAME)};
#undef GEMMA3_FIELD_NAME

constexpr std::string_view attention_kind_name(AttentionKind kind) {
    return kind == AttentionKind::sliding ? SlidingAttention::name : FullAttention::name;
}

namespace detail {

using nlohmann::json;

// A number as JSON writes it: the shortest text that reads back to the same double.
inline std::string number_text(double value) { return json(value).dump(); }

// The offending value for a message: a short ASCII prefix of its JSON text (json_read.hpp).
inline std::string value_text(const json& value) { return json_read::excerpt(value); }
inline std::string kind_text(const json& value) { return json_read::kind(value); }

// "name", built by appending: GCC 12 warns falsely (-Wrestrict) about `"\"" + std::string(...)`.
inline std::string quoted(std::string_view text) {
    std::string result;
    result.reserve(text.size() + 2);
    result += '"';
    result += text;
    result += '"';
    return result;
}

inline std::string quoted_list(std::span<const std::string_view> names, std::string_view last_separator) {
    std::string text;
    for (std::size_t i = 0; i < names.size(); ++i) {
        if (i > 0) text += (i + 1 == names.size()) ? std::string(last_separator) : std::string(", ");
        text += quoted(names[i]);
    }
    return text;
}

// Other names people use for our fields (Hugging Face's own come from the field table).
inline constexpr std::array<std::pair<std::string_view, std::string_view>, 6> field_aliases{{
    {"n_kv_heads", "n_kv_groups"},
    {"torch_dtype", "dtype"},
    {"lr", "learning_rate"},
    {"warmup_iters", "warmup_steps"},
    {"max_steps", "max_iters"},
    {"eps", "adam_eps"},
}};

// The field of ours that Hugging Face's config.json calls `name` ("" when none): people paste
// those from a config.json.
inline std::string_view field_for_hf_name(std::string_view name) {
#define GEMMA3_HF_ALIAS(type, field, presence, rule, hugging_face, ...) \
    if (fields::is_hf_spelling(fields::hugging_face, name)) return #field;
    GEMMA3_MODEL_CONFIG_FIELDS(GEMMA3_HF_ALIAS)
#undef GEMMA3_HF_ALIAS
    return {};
}

inline std::string unknown_field_advice(std::string_view name, std::span<const std::string_view> known) {
    if (name.size() > 64) return "unknown field";  // no field is that long; spare the edit distances
    const auto known_as = [&](std::string_view ours) {
        return !ours.empty() && std::find(known.begin(), known.end(), ours) != known.end();
    };
    if (const auto ours = field_for_hf_name(name); known_as(ours)) {
        return "unknown field; this format calls it " + quoted(ours);
    }
    for (const auto& [alias, ours] : field_aliases) {
        if (alias == name && known_as(ours)) return "unknown field; this format calls it " + quoted(ours);
    }
    std::string_view best;
    std::size_t best_distance = std::numeric_limits<std::size_t>::max();
    for (std::string_view candidate : known) {
        const std::size_t d = text::edit_distance(name, candidate);
        if (d < best_distance) {
            best_distance = d;
            best = candidate;
        }
    }
    const std::size_t allowed = std::max<std::size_t>(2, name.size() / 3);
    if (best_distance <= allowed) return "unknown field; did you mean " + quoted(best) + "?";
    return "unknown field; the known fields are " + quoted_list(known, " and ");
}

// How the fields of a document are named in its messages, when that differs from ours (a Hugging
// Face config.json converted to our fields keeps the user's names).
using FieldNames = std::map<std::string, std::string, std::less<>>;

// Reads the fields of one JSON object, recording a problem for each field that is missing, has
// the wrong JSON type or is out of range. Each accessor returns nullopt when the value is unusable,
// so the cross-field rules run only on values that passed their own checks.
class FieldReader {
public:
    FieldReader(const json& object, std::string_view source, std::vector<std::string>& problems,
                const FieldNames* names = nullptr)
        : object_(object), source_(source), problems_(problems), names_(names) {}

    // The field as the document calls it. An unknown key is the file's text: it is quoted as a
    // short ASCII prefix, like a bad value.
    std::string name(std::string_view field) const {
        if (names_ != nullptr) {
            if (const auto it = names_->find(field); it != names_->end()) return it->second;
        }
        const bool plain = field.size() <= json_read::max_quoted_chars &&
                           std::all_of(field.begin(), field.end(), [](char c) { return c >= 0x20 && c < 0x7f && c != '"'; });
        if (plain) return std::string(field);
        std::string text = json_read::excerpt(json(std::string(field.substr(0, json_read::max_quoted_chars + 1))));
        text.erase(0, 1);  // the quotes of the JSON string
        if (text.ends_with('"')) text.pop_back();
        return text;
    }

    void problem(std::string_view field, const std::string& text) {
        problems_.push_back(source_ + ": field \"" + name(field) + "\": " + text);
    }

    void reject_unknown_fields(std::span<const std::string_view> known) {
        for (const auto& item : object_.items()) {
            const std::string& key = item.key();
            if (std::find(known.begin(), known.end(), key) == known.end()) {
                problem(key, unknown_field_advice(key, known));
            }
        }
    }

    bool has(std::string_view field) const { return object_.contains(field); }

    // An integer in [low, high]: whole, finite and in range (json_read::to_integer).
    template <std::integral T>
    std::optional<T> integer(std::string_view field, bool required, T low, T high, std::string_view expected) {
        const json* value = find(field, required, expected);
        if (value == nullptr) return std::nullopt;
        std::string why;
        const auto n = json_read::to_integer<T>(*value, low, high, why);
        if (!n) return wrong(field, *value, why, expected);
        return n;
    }

    // A finite number for which `valid` holds.
    template <class Valid>
    std::optional<double> number(std::string_view field, bool required, std::string_view expected, Valid valid) {
        const json* value = find(field, required, expected);
        if (value == nullptr) return std::nullopt;
        std::string why;
        const auto d = json_read::to_number(*value, why);
        if (!d) return wrong(field, *value, why, expected);
        if (!valid(*d)) return wrong(field, *value, "is out of range", expected);
        return d;
    }

    std::optional<bool> boolean(std::string_view field, bool required) {
        const json* value = find(field, required, "true or false");
        if (value == nullptr) return std::nullopt;
        if (!value->is_boolean()) return wrong(field, *value, "is " + kind_text(*value), "true or false");
        return value->get<bool>();
    }

    // A string from `allowed`.
    std::optional<std::string> choice(std::string_view field, bool required,
                                      std::span<const std::string_view> allowed) {
        const std::string expected = "one of " + quoted_list(allowed, " or ");
        const json* value = find(field, required, expected);
        if (value == nullptr) return std::nullopt;
        if (!value->is_string()) return wrong(field, *value, "is " + kind_text(*value), expected);
        const auto& text = value->get_ref<const std::string&>();
        if (std::find(allowed.begin(), allowed.end(), text) == allowed.end()) {
            return wrong(field, *value, "is not allowed", expected);
        }
        return text;
    }

    // An array of layer kinds (its length is a cross-field rule, checked by the caller).
    std::optional<LayerKinds> layer_kinds(std::string_view field, bool required) {
        const std::string expected =
            "an array of " +
            quoted_list(std::array<std::string_view, 2>{SlidingAttention::name, FullAttention::name}, " or ");
        const json* value = find(field, required, expected);
        if (value == nullptr) return std::nullopt;
        if (!value->is_array()) return wrong(field, *value, "is " + kind_text(*value), expected);
        LayerKinds kinds;
        int bad = 0;
        for (std::size_t i = 0; i < value->size(); ++i) {
            const json& entry = (*value)[i];
            if (entry.is_string() && entry.get_ref<const std::string&>() == SlidingAttention::name) {
                kinds.push_back(AttentionKind::sliding);
            } else if (entry.is_string() && entry.get_ref<const std::string&>() == FullAttention::name) {
                kinds.push_back(AttentionKind::full);
            } else if (++bad <= max_reported_entries) {
                problem(name(field) + "[" + std::to_string(i) + "]",
                        "value " + value_text(entry) + " is not a layer kind; expected " +
                            quoted(SlidingAttention::name) + " or " + quoted(FullAttention::name));
            }
        }
        if (bad > max_reported_entries) {
            problem(field, std::to_string(bad - max_reported_entries) + " more entries are not layer kinds");
        }
        if (bad > 0) return std::nullopt;
        return kinds;
    }

    // One field of a table row: the reader that its type and rule call for.
    template <class T, class Presence, class Rule>
    std::optional<T> field(std::string_view field, Presence presence, const Rule& rule) {
        const bool required = fields::is_required(presence);
        if constexpr (std::is_same_v<T, bool>) {
            static_assert(std::is_same_v<Rule, fields::Any>);
            return boolean(field, required);
        } else if constexpr (std::integral<T>) {
            return integer<T>(field, required, rule.template integer_low<T>(), rule.template integer_high<T>(),
                              rule.integer_text);
        } else if constexpr (std::is_same_v<T, double>) {
            return number(field, required, rule.number_text, [&](double x) { return rule.contains(x); });
        } else if constexpr (std::is_same_v<T, std::string>) {
            return choice(field, required, rule.allowed);
        } else {
            static_assert(std::is_same_v<T, LayerKinds>);
            return layer_kinds(field, required);
        }
    }

    const json* find(std::string_view field, bool required, std::string_view expected) {
        const auto it = object_.find(field);
        if (it == object_.end()) {
            if (required) problem(field, "missing; expected " + std::string(expected));
            return nullptr;
        }
        return &*it;
    }

    // At most this many entries of one array are reported individually.
    static constexpr int max_reported_entries = 8;

private:
    std::nullopt_t wrong(std::string_view field, const json& value, std::string_view what, std::string_view expected) {
        problem(field, "value " + value_text(value) + " " + std::string(what) + "; expected " + std::string(expected));
        return std::nullopt;
    }

    const json& object_;
    std::string source_;
    std::vector<std::string>& problems_;
    const FieldNames* names_;
};

inline void require_object(const json& j, std::string_view source, std::string_view what,
                           std::vector<std::string>& problems) {
    if (!j.is_object()) {
        problems.push_back(std::string(source) + ": expected a JSON object with the " + std::string(what) +
                           " fields at the top level, found " + kind_text(j));
        throw ConfigError(std::move(problems));
    }
}

// Reads every field of the table into a local of the field's name (std::optional of its type).
#define GEMMA3_READ_FIELD(type, name, presence, rule, ...) \
    const std::optional<type> name = r.field<type>(#name, fields::presence, fields::rule);
// Copies a field that was read (or keeps the default of an absent optional one).
#define GEMMA3_ASSIGN_FIELD(type, name, ...) \
    if (name) result.name = *name;

inline ModelConfigFile parse_model_config(const json& j, std::string_view source, std::vector<std::string> problems,
                                          const FieldNames* names = nullptr) {
    require_object(j, source, "model", problems);
    FieldReader r(j, source, problems, names);
    if (names == nullptr) r.reject_unknown_fields(model_config_fields);

    ModelConfigFile result;
    result.source = std::string(source);
    result.format = names == nullptr ? ConfigFormat::gemma3 : ConfigFormat::hugging_face;
    GEMMA3_MODEL_CONFIG_FIELDS(GEMMA3_READ_FIELD)

    // The cross-field rules; messages name the fields as the document does.
    const auto n = [&](std::string_view field) { return r.name(field); };
    // (counted even when some entries are not layer kinds)
    const json* kinds = r.find("layer_types", /*required=*/false, {});
    if (kinds && kinds->is_array() && n_layers && kinds->size() != static_cast<std::size_t>(*n_layers)) {
        r.problem("layer_types", "has " + std::to_string(kinds->size()) + " entries; expected exactly " +
                                     n("n_layers") + " (" + std::to_string(*n_layers) + ")");
    }

    // head_dim: given, or emb_dim / n_heads (the seed's rule); even either way.
    // A plain int, 0 while unknown: GCC 12 warns falsely that an optional's value "may be used
    // uninitialized" here (-Wmaybe-uninitialized).
    int resolved_head_dim = head_dim.value_or(0);
    if (!r.has("head_dim") && emb_dim && n_heads) {
        if (*emb_dim % *n_heads != 0) {
            r.problem("head_dim", "not set, so it would be " + n("emb_dim") + " / " + n("n_heads") + ", but " +
                                      n("emb_dim") + " (" + std::to_string(*emb_dim) + ") is not a multiple of " +
                                      n("n_heads") + " (" + std::to_string(*n_heads) + "); set " + n("head_dim") +
                                      " explicitly");
        } else {
            resolved_head_dim = *emb_dim / *n_heads;
        }
    }
    if (resolved_head_dim % 2 != 0) {
        if (r.has("head_dim")) {
            r.problem("head_dim", "value " + std::to_string(resolved_head_dim) +
                                      " is odd; expected an even number (RoPE rotates pairs of dimensions)");
        } else {
            r.problem("head_dim", "not set, so it is " + n("emb_dim") + " / " + n("n_heads") + " = " +
                                      std::to_string(*emb_dim) + " / " + std::to_string(*n_heads) + " = " +
                                      std::to_string(resolved_head_dim) +
                                      ", which is odd; expected an even number (RoPE rotates pairs of "
                                      "dimensions); set " + n("head_dim") + " explicitly");
        }
        resolved_head_dim = 0;
    }

    if (n_heads && n_kv_groups && *n_heads % *n_kv_groups != 0) {
        r.problem("n_heads", "value " + std::to_string(*n_heads) + " is not a multiple of " + n("n_kv_groups") +
                                 " (" + std::to_string(*n_kv_groups) + ")");
    }
    if (sliding_window && context_length) {
        if (*sliding_window >= *context_length) {
            r.problem("sliding_window", "value " + std::to_string(*sliding_window) + " is not smaller than " +
                                            n("context_length") + " (" + std::to_string(*context_length) + ")");
        } else if (*sliding_window > *context_length / 2) {
            result.warnings.push_back(result.source + ": field \"" + n("sliding_window") + "\": value " +
                                      std::to_string(*sliding_window) + " is more than half of " +
                                      n("context_length") + " (" + std::to_string(*context_length) +
                                      "); the window should be significantly smaller than the context, or the "
                                      "sliding layers save little over full attention");
        }
    }

    if (!problems.empty()) throw ConfigError(std::move(problems));

    GEMMA3_MODEL_CONFIG_FIELDS(GEMMA3_ASSIGN_FIELD)
    result.head_dim = resolved_head_dim;  // nonzero: a missing or odd one is a problem above
    return result;
}

inline TrainingConfig parse_training_config(const json& j, std::string_view source,
                                            std::vector<std::string> problems) {
    require_object(j, source, "training", problems);
    FieldReader r(j, source, problems);
    r.reject_unknown_fields(training_config_fields);

    TrainingConfig result;
    result.source = std::string(source);
    GEMMA3_TRAINING_CONFIG_FIELDS(GEMMA3_READ_FIELD)

    if (warmup_steps && max_iters && *warmup_steps > *max_iters) {
        r.problem("warmup_steps", "value " + std::to_string(*warmup_steps) + " is larger than max_iters (" +
                                      std::to_string(*max_iters) + ")");
    }

    if (!problems.empty()) throw ConfigError(std::move(problems));

    GEMMA3_TRAINING_CONFIG_FIELDS(GEMMA3_ASSIGN_FIELD)
    // The seed uses eval_iters as both the evaluation interval and its batch count.
    if (!eval_interval) result.eval_interval = result.eval_iters;
    if (!eval_batches) result.eval_batches = result.eval_iters;

    TrainingConfig& t = result;
    // docs/model.md §8.5: with eta_min above the base rate, CosineAnnealingLR anneals upward.
    if (t.min_lr > t.learning_rate) {
        t.warnings.push_back(
            t.source + ": field \"min_lr\": value " + number_text(t.min_lr) + " is greater than learning_rate (" +
            number_text(t.learning_rate) + "), so after the " + std::to_string(t.warmup_steps) +
            " warmup steps the cosine phase raises the learning rate from " + number_text(t.learning_rate) +
            " to " + number_text(t.min_lr) + " over the remaining " + std::to_string(t.max_iters - t.warmup_steps) +
            " iterations instead of decaying it (the seed's schedule does the same); min_lr is the final and "
            "largest rate. Set min_lr below learning_rate for a decaying schedule");
    }
    if (t.eval_interval >= t.max_iters) {
        t.warnings.push_back(t.source + ": field \"eval_interval\": value " + std::to_string(t.eval_interval) +
                             " is not smaller than max_iters (" + std::to_string(t.max_iters) +
                             "), so no evaluation runs during training");
    }
    return result;
}

#undef GEMMA3_READ_FIELD
#undef GEMMA3_ASSIGN_FIELD

// The document limits of a config file: a few hundred bytes and two levels in practice.
inline constexpr json_read::Limits config_limits{};

// Reads a whole config file (json_read::read_text), refusing anything that cannot be one.
inline std::string read_config_text(const std::filesystem::path& path, std::string_view what) {
    return json_read::read_text<ConfigError>(path, what, config_limits.max_bytes);
}

// Parses JSON text within config_limits. Duplicate top-level keys go into `problems`: a JSON
// parser keeps only one of the values, so such a file does not say what it means.
inline json parse_config_text(const std::string& text, const std::string& name, std::vector<std::string>& problems) {
    std::vector<std::string> duplicates;
    json j = json_read::parse<ConfigError>(text, name, config_limits, &duplicates);
    for (const auto& key : duplicates) {
        problems.push_back(name + ": field \"" + key + "\": appears more than once; expected each field once");
    }
    return j;
}

}  // namespace detail

// Checks a parsed model config; `source` names it in messages. Throws ConfigError listing every
// problem. Warnings go into the result's `warnings`.
inline ModelConfigFile parse_model_config(const nlohmann::json& j, std::string_view source) {
    return detail::parse_model_config(j, source, {});
}

inline TrainingConfig parse_training_config(const nlohmann::json& j, std::string_view source) {
    return detail::parse_training_config(j, source, {});
}

// Reads and checks a model config file. Throws ConfigError naming the file when it is missing,
// unreadable, too large, too deeply nested or not JSON, and listing every problem of its contents
// otherwise.
inline ModelConfigFile load_model_config(const std::filesystem::path& path) {
    std::vector<std::string> problems;
    const auto j = detail::parse_config_text(detail::read_config_text(path, "model config"), path.string(), problems);
    return detail::parse_model_config(j, path.string(), std::move(problems));
}

inline TrainingConfig load_training_config(const std::filesystem::path& path) {
    std::vector<std::string> problems;
    const auto j = detail::parse_config_text(detail::read_config_text(path, "training config"), path.string(), problems);
    return detail::parse_training_config(j, path.string(), std::move(problems));
}

// Rules that involve both files. Throws ConfigError listing every problem.
inline void check_compatible(const ModelConfigFile& model, const TrainingConfig& training) {
    std::vector<std::string> problems;
    if (training.block_size > model.context_length) {
        problems.push_back(training.source + ": field \"block_size\": value " + std::to_string(training.block_size) +
                           " is larger than context_length (" + std::to_string(model.context_length) + ") of " +
                           model.source);
    }
    if (!problems.empty()) throw ConfigError(std::move(problems));
}

// Observations about the pair that are not errors (docs/model.md §10.5).
inline std::vector<std::string> compatibility_warnings(const ModelConfigFile& model, const TrainingConfig& training) {
    std::vector<std::string> warnings;
    const bool has_sliding =
        std::find(model.layer_types.begin(), model.layer_types.end(), AttentionKind::sliding) != model.layer_types.end();
    if (has_sliding && training.block_size <= model.sliding_window) {
        warnings.push_back(training.source + ": field \"block_size\": value " + std::to_string(training.block_size) +
                           " is not larger than sliding_window (" + std::to_string(model.sliding_window) + ") of " +
                           model.source + ", so the sliding layers attend exactly like full ones during training");
    }
    return warnings;
}

// The compiled config type as a ModelConfigFile (dtype "float32", init "seed": run-time settings
// a type does not carry).
template <ModelConfig C>
ModelConfigFile config_file_of() {
    static_assert(check_config<C>());
    ModelConfigFile c;
#define GEMMA3_COPY_COMPILED(type, name, ...) c.name = GEMMA3_COMPILED_VALUE(type, C, name);
    GEMMA3_MODEL_ARCHITECTURE_FIELDS(GEMMA3_COPY_COMPILED)
#undef GEMMA3_COPY_COMPILED
    c.dtype = "float32";
    c.source = std::string(config_name<C>());
    return c;
}

namespace detail {

// A field as the config's format names it (Hugging Face's name for a converted config.json).
inline std::string field_name_in(ConfigFormat format, std::string_view field) {
    if (format == ConfigFormat::gemma3) return std::string(field);
#define GEMMA3_HF_NAME(type, name, presence, rule, hugging_face, ...) \
    if (field == #name) return fields::hf_name(fields::hugging_face, #name);
    GEMMA3_MODEL_CONFIG_FIELDS(GEMMA3_HF_NAME)
#undef GEMMA3_HF_NAME
    return std::string(field);
}

// A field's value as messages and generated code write it.
inline std::string value_text(int v) { return std::to_string(v); }
inline std::string value_text(double v) { return number_text(v); }
inline std::string value_text(bool v) { return v ? "true" : "false"; }

}  // namespace detail

// Throws ConfigError when the file's architecture differs from the compiled type C, listing every
// differing field (as the file's format names it) and saying how to build a matching type.
// Doubles are compared exactly: both come from the same decimal text (the generator copies the
// file's numbers into C++).
template <ModelConfig C>
void require_matches(const ModelConfigFile& file) {
    const ModelConfigFile compiled = config_file_of<C>();
    const std::string type_name(config_name<C>());
    std::vector<std::string> problems;
    auto differ = [&](const std::string& field, const std::string& in_file, const std::string& in_type) {
        problems.push_back(file.source + ": field \"" + field + "\": the file has " + in_file +
                           ", the compiled type " + type_name + " has " + in_type);
    };
    auto compare = [&]<class T>(std::string_view field, const T& in_file, const T& in_type) {
        const std::string name = detail::field_name_in(file.format, field);
        if constexpr (std::is_same_v<T, LayerKinds>) {
            if (in_file.size() != in_type.size()) {
                differ(name, std::to_string(in_file.size()) + " entries", std::to_string(in_type.size()) + " entries");
            }
            const std::size_t common = std::min(in_file.size(), in_type.size());
            for (std::size_t i = 0; i < common; ++i) {
                if (in_file[i] != in_type[i]) {
                    differ(name + "[" + std::to_string(i) + "]", detail::quoted(attention_kind_name(in_file[i])),
                           detail::quoted(attention_kind_name(in_type[i])));
                }
            }
        } else if (in_file != in_type) {
            differ(name, detail::value_text(in_file), detail::value_text(in_type));
        }
    };
#define GEMMA3_COMPARE_FIELD(type, name, ...) compare(#name, file.name, compiled.name);
    GEMMA3_MODEL_ARCHITECTURE_FIELDS(GEMMA3_COMPARE_FIELD)
#undef GEMMA3_COMPARE_FIELD
    if (problems.empty()) return;
    const std::string advice =
        "The model's architecture is compiled in; to run with " + file.source +
        ", build with a config type that matches it. Generate one in CMake with\n"
        "    gemma3_generate_config(NAME MyConfig JSON " + file.source +
        " OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/my_config.hpp)\n"
        "which reads our model config and Hugging Face's config.json alike and defines "
        "gemma3::configs::MyConfig in my_config.hpp (add ${CMAKE_CURRENT_BINARY_DIR} to the include path). "
        "find_package(gemma3) provides it, from lib/cmake/gemma3/gemma3GenerateConfig.cmake under the install "
        "prefix (cmake/gemma3GenerateConfig.cmake in a source checkout). Or write a struct like those in "
        "<gemma3/core/configs.hpp> (include/gemma3/core/configs.hpp under the install prefix).";
    throw ConfigError(std::move(problems), advice);
}

namespace detail {
inline json json_value(const LayerKinds& kinds) {
    json names = json::array();
    for (AttentionKind kind : kinds) names.push_back(std::string(attention_kind_name(kind)));
    return names;
}
template <class T>
json json_value(const T& value) {
    return json(value);
}
}  // namespace detail

// The seed's field names; parse_*_config reads these back to an equal struct (apart from source
// and warnings).
inline nlohmann::json to_json(const ModelConfigFile& c) {
    nlohmann::json j = nlohmann::json::object();
#define GEMMA3_FIELD_TO_JSON(type, name, ...) j[#name] = detail::json_value(c.name);
    GEMMA3_MODEL_CONFIG_FIELDS(GEMMA3_FIELD_TO_JSON)
    return j;
}

inline nlohmann::json to_json(const TrainingConfig& t) {
    nlohmann::json j = nlohmann::json::object();
    const TrainingConfig& c = t;
    GEMMA3_TRAINING_CONFIG_FIELDS(GEMMA3_FIELD_TO_JSON)
#undef GEMMA3_FIELD_TO_JSON
    return j;
}

}  // namespace gemma3
