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
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.hpp"
#include "detail/text.hpp"

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

// The model described by a model_config.json.
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
    int vocab_size = 0;
    int context_length = 0;
    int emb_dim = 0;
    int n_heads = 0;
    int n_layers = 0;
    int hidden_dim = 0;
    int head_dim = 0;
    bool qk_norm = false;
    int n_kv_groups = 0;
    double query_pre_attn_scalar = 0;
    double rope_local_base = 0;
    double rope_base = 0;
    int sliding_window = 0;
    std::vector<AttentionKind> layer_types;
    std::string dtype;

    bool tie_word_embeddings = false;
    double rms_norm_eps = 1e-6;
    double initializer_range = 0.02;
    std::string init = "seed";

    std::string source;                 // where the values came from, for messages
    std::vector<std::string> warnings;  // non-fatal observations, for the program to print

    // Compares every member, source and warnings included.
    bool operator==(const ModelConfigFile&) const = default;
};

// The training run described by a training_config.json.
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
    double learning_rate = 0;
    std::int64_t warmup_steps = 0;
    double min_lr = 0;
    std::int64_t max_iters = 0;
    std::int64_t eval_iters = 0;
    int batch_size = 0;
    int block_size = 0;
    int gradient_accumulation_steps = 0;
    std::string device;
    std::string dtype;
    std::string ptdtype;

    double beta1 = 0.9;
    double beta2 = 0.95;
    double adam_eps = 1e-9;
    double weight_decay = 0.1;
    double grad_clip = 0.5;
    double warmup_start_factor = 1.0 / 3.0;
    std::int64_t eval_interval = 0;  // parse_training_config sets it to eval_iters when absent
    std::int64_t eval_batches = 0;   // likewise
    std::uint64_t seed = 42;
    std::int64_t log_interval = 1;

    std::string source;
    std::vector<std::string> warnings;

    bool operator==(const TrainingConfig&) const = default;
};

inline constexpr std::array<std::string_view, 19> model_config_fields{
    "vocab_size", "context_length", "emb_dim",         "n_heads",           "n_layers",
    "hidden_dim", "head_dim",       "qk_norm",         "n_kv_groups",       "query_pre_attn_scalar",
    "rope_local_base", "rope_base", "sliding_window",   "layer_types",       "dtype",
    "tie_word_embeddings", "rms_norm_eps", "initializer_range", "init"};

inline constexpr std::array<std::string_view, 21> training_config_fields{
    "learning_rate", "warmup_steps", "min_lr", "max_iters", "eval_iters", "batch_size", "block_size",
    "gradient_accumulation_steps", "device", "dtype", "ptdtype", "beta1", "beta2", "adam_eps",
    "weight_decay", "grad_clip", "warmup_start_factor", "eval_interval", "eval_batches", "seed",
    "log_interval"};

constexpr std::string_view attention_kind_name(AttentionKind kind) {
    return kind == AttentionKind::sliding ? SlidingAttention::name : FullAttention::name;
}

namespace detail {

using nlohmann::json;

// A number as JSON writes it: the shortest text that reads back to the same double.
inline std::string number_text(double value) { return json(value).dump(); }

// The offending value for a message: JSON text, shortened so a huge array cannot flood the output.
inline std::string value_text(const json& value) {
    if (value.is_number_float() && !std::isfinite(value.get<double>())) {
        const double d = value.get<double>();
        return std::isnan(d) ? "nan" : (d > 0 ? "inf" : "-inf");  // JSON would write these as null
    }
    std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
    constexpr std::size_t max_length = 60;
    if (text.size() > max_length) text = text.substr(0, max_length) + "...";
    return text;
}

inline std::string kind_text(const json& value) {
    switch (value.type()) {
        case json::value_t::null: return "null";
        case json::value_t::boolean: return "a boolean";
        case json::value_t::string: return "a string";
        case json::value_t::array: return "an array";
        case json::value_t::object: return "an object";
        case json::value_t::number_float: return "a number with a fraction";
        default: return "a number";
    }
}

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

// Hugging Face's names for our fields: people paste those from a config.json.
inline constexpr std::array<std::pair<std::string_view, std::string_view>, 14> field_aliases{{
    {"hidden_size", "emb_dim"},
    {"intermediate_size", "hidden_dim"},
    {"num_attention_heads", "n_heads"},
    {"num_key_value_heads", "n_kv_groups"},
    {"n_kv_heads", "n_kv_groups"},
    {"num_hidden_layers", "n_layers"},
    {"max_position_embeddings", "context_length"},
    {"rope_theta", "rope_base"},
    {"rope_local_base_freq", "rope_local_base"},
    {"torch_dtype", "dtype"},
    {"lr", "learning_rate"},
    {"warmup_iters", "warmup_steps"},
    {"max_steps", "max_iters"},
    {"eps", "adam_eps"},
}};

inline std::string unknown_field_advice(std::string_view name, std::span<const std::string_view> known) {
    for (const auto& [alias, ours] : field_aliases) {
        if (alias == name && std::find(known.begin(), known.end(), ours) != known.end()) {
            return "unknown field; this format calls it " + quoted(ours);
        }
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

// Reads the fields of one JSON object, recording a problem for each field that is missing, has
// the wrong JSON type or is out of range. Each accessor returns nullopt when the value is unusable,
// so the cross-field rules run only on values that passed their own checks.
class FieldReader {
public:
    FieldReader(const json& object, std::string_view source, std::vector<std::string>& problems)
        : object_(object), source_(source), problems_(problems) {}

    void problem(std::string_view field, const std::string& text) {
        problems_.push_back(source_ + ": field \"" + std::string(field) + "\": " + text);
    }

    void reject_unknown_fields(std::span<const std::string_view> known) {
        for (const auto& item : object_.items()) {
            const std::string& key = item.key();
            if (std::find(known.begin(), known.end(), key) == known.end()) {
                problem(key, unknown_field_advice(key, known));
            }
        }
    }

    bool has(std::string_view field) const { return object_.contains(std::string(field)); }

    // An integer in [low, high]. Accepts a JSON number with a fraction part only when it is
    // whole (so 1e3 reads as 1000); rejects strings, booleans and fractions.
    std::optional<std::int64_t> integer(std::string_view field, bool required, std::int64_t low,
                                        std::int64_t high, const std::string& expected) {
        const json* value = find(field, required, expected);
        if (value == nullptr) return std::nullopt;
        std::int64_t n = 0;
        if (value->is_number_unsigned()) {
            const auto u = value->get<std::uint64_t>();
            if (u > static_cast<std::uint64_t>(high)) return out_of_range(field, *value, expected);
            n = static_cast<std::int64_t>(u);
        } else if (value->is_number_integer()) {
            n = value->get<std::int64_t>();
        } else if (value->is_number_float()) {
            const double d = value->get<double>();
            if (!std::isfinite(d)) return wrong(field, *value, "is not a finite number", expected);
            if (d != std::floor(d)) return wrong(field, *value, "is not a whole number", expected);
            // 2^53: beyond it a double no longer holds every integer, and every range here is smaller.
            if (std::fabs(d) > 9007199254740992.0) return out_of_range(field, *value, expected);
            n = static_cast<std::int64_t>(d);
        } else {
            return wrong(field, *value, "is " + kind_text(*value), expected);
        }
        if (n < low || n > high) return out_of_range(field, *value, expected);
        return n;
    }

    std::optional<int> positive_int(std::string_view field, bool required = true) {
        const auto n = integer(field, required, 1, std::numeric_limits<int>::max(), "a positive integer");
        if (!n) return std::nullopt;
        return static_cast<int>(*n);
    }

    // A number (integer or with a fraction) for which `valid` holds.
    template <class Valid>
    std::optional<double> number(std::string_view field, bool required, const std::string& expected,
                                 Valid valid) {
        const json* value = find(field, required, expected);
        if (value == nullptr) return std::nullopt;
        if (!value->is_number()) return wrong(field, *value, "is " + kind_text(*value), expected);
        const double d = value->get<double>();
        if (!std::isfinite(d)) return wrong(field, *value, "is not a finite number", expected);
        if (!valid(d)) return out_of_range(field, *value, expected);
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

    const json* find(std::string_view field, bool required, const std::string& expected) {
        const auto it = object_.find(std::string(field));
        if (it == object_.end()) {
            if (required) problem(field, "missing; expected " + expected);
            return nullptr;
        }
        return &*it;
    }

private:
    std::nullopt_t wrong(std::string_view field, const json& value, const std::string& what,
                         const std::string& expected) {
        problem(field, "value " + value_text(value) + " " + what + "; expected " + expected);
        return std::nullopt;
    }
    std::nullopt_t out_of_range(std::string_view field, const json& value, const std::string& expected) {
        return wrong(field, value, "is out of range", expected);
    }

    const json& object_;
    std::string source_;
    std::vector<std::string>& problems_;
};

inline void require_object(const json& j, std::string_view source, std::string_view what,
                           std::vector<std::string>& problems) {
    if (!j.is_object()) {
        problems.push_back(std::string(source) + ": expected a JSON object with the " + std::string(what) +
                           " fields at the top level, found " + kind_text(j));
        throw ConfigError(std::move(problems));
    }
}

// At most this many entries of one array are reported individually.
inline constexpr int max_reported_entries = 8;

inline ModelConfigFile parse_model_config(const json& j, std::string_view source,
                                          std::vector<std::string> problems) {
    require_object(j, source, "model", problems);
    FieldReader r(j, source, problems);
    r.reject_unknown_fields(model_config_fields);

    ModelConfigFile c;
    c.source = std::string(source);
    const auto vocab_size = r.positive_int("vocab_size");
    const auto context_length = r.positive_int("context_length");
    const auto emb_dim = r.positive_int("emb_dim");
    const auto n_heads = r.positive_int("n_heads");
    const auto n_layers = r.positive_int("n_layers");
    const auto hidden_dim = r.positive_int("hidden_dim");
    const auto head_dim = r.positive_int("head_dim", /*required=*/false);
    const auto qk_norm = r.boolean("qk_norm", true);
    const auto n_kv_groups = r.positive_int("n_kv_groups");
    const auto positive = [](double x) { return x > 0; };
    const auto above_one = [](double x) { return x > 1; };
    const auto query_pre_attn_scalar = r.number("query_pre_attn_scalar", true, "a positive number", positive);
    const auto rope_local_base = r.number("rope_local_base", true, "a number greater than 1", above_one);
    const auto rope_base = r.number("rope_base", true, "a number greater than 1", above_one);
    const auto sliding_window = r.positive_int("sliding_window");
    const auto dtype = r.choice("dtype", true, model_dtypes);
    const auto tie = r.boolean("tie_word_embeddings", false);
    const auto rms_norm_eps = r.number("rms_norm_eps", false, "a positive number", positive);
    const auto initializer_range = r.number("initializer_range", false, "a positive number", positive);
    const auto init = r.choice("init", false, init_schemes);

    // layer_types: an array of known kinds, exactly n_layers long.
    std::optional<std::vector<AttentionKind>> layer_types;
    const std::string kinds_expected =
        "an array of " + quoted_list(std::array<std::string_view, 2>{SlidingAttention::name, FullAttention::name}, " or ");
    if (const json* value = r.find("layer_types", true, kinds_expected)) {
        if (!value->is_array()) {
            r.problem("layer_types", "value " + value_text(*value) + " is " + kind_text(*value) +
                                         "; expected " + kinds_expected);
        } else {
            std::vector<AttentionKind> kinds;
            int bad = 0;
            for (std::size_t i = 0; i < value->size(); ++i) {
                const json& entry = (*value)[i];
                if (entry.is_string() && entry.get_ref<const std::string&>() == SlidingAttention::name) {
                    kinds.push_back(AttentionKind::sliding);
                } else if (entry.is_string() && entry.get_ref<const std::string&>() == FullAttention::name) {
                    kinds.push_back(AttentionKind::full);
                } else if (++bad <= max_reported_entries) {
                    r.problem("layer_types[" + std::to_string(i) + "]",
                              "value " + value_text(entry) + " is not a layer kind; expected " +
                                  quoted(SlidingAttention::name) + " or " + quoted(FullAttention::name));
                }
            }
            if (bad > max_reported_entries) {
                r.problem("layer_types", std::to_string(bad - max_reported_entries) +
                                             " more entries are not layer kinds");
            }
            if (n_layers && value->size() != static_cast<std::size_t>(*n_layers)) {
                r.problem("layer_types", "has " + std::to_string(value->size()) +
                                             " entries; expected exactly n_layers (" +
                                             std::to_string(*n_layers) + ")");
            }
            if (bad == 0) layer_types = std::move(kinds);
        }
    }

    // head_dim: given, or emb_dim / n_heads (the seed's rule); even either way.
    std::optional<int> resolved_head_dim = head_dim;
    if (!r.has("head_dim") && emb_dim && n_heads) {
        if (*emb_dim % *n_heads != 0) {
            r.problem("head_dim", "not set, so it would be emb_dim / n_heads, but emb_dim (" +
                                      std::to_string(*emb_dim) + ") is not a multiple of n_heads (" +
                                      std::to_string(*n_heads) + "); set head_dim explicitly");
        } else {
            resolved_head_dim = *emb_dim / *n_heads;
        }
    }
    if (resolved_head_dim && *resolved_head_dim % 2 != 0) {
        if (r.has("head_dim")) {
            r.problem("head_dim", "value " + std::to_string(*resolved_head_dim) +
                                      " is odd; expected an even number (RoPE rotates pairs of dimensions)");
        } else {
            r.problem("head_dim", "not set, so it is emb_dim / n_heads = " + std::to_string(*emb_dim) + " / " +
                                      std::to_string(*n_heads) + " = " + std::to_string(*resolved_head_dim) +
                                      ", which is odd; expected an even number (RoPE rotates pairs of "
                                      "dimensions); set head_dim explicitly");
        }
        resolved_head_dim.reset();
    }

    if (n_heads && n_kv_groups && *n_heads % *n_kv_groups != 0) {
        r.problem("n_heads", "value " + std::to_string(*n_heads) + " is not a multiple of n_kv_groups (" +
                                 std::to_string(*n_kv_groups) + ")");
    }
    if (sliding_window && context_length) {
        if (*sliding_window >= *context_length) {
            r.problem("sliding_window", "value " + std::to_string(*sliding_window) +
                                            " is not smaller than context_length (" +
                                            std::to_string(*context_length) + ")");
        } else if (*sliding_window > *context_length / 2) {
            c.warnings.push_back(c.source + ": field \"sliding_window\": value " + std::to_string(*sliding_window) +
                                 " is more than half of context_length (" + std::to_string(*context_length) +
                                 "); the window should be significantly smaller than the context, or the "
                                 "sliding layers save little over full attention");
        }
    }

    if (!problems.empty()) throw ConfigError(std::move(problems));

    c.vocab_size = *vocab_size;
    c.context_length = *context_length;
    c.emb_dim = *emb_dim;
    c.n_heads = *n_heads;
    c.n_layers = *n_layers;
    c.hidden_dim = *hidden_dim;
    c.head_dim = *resolved_head_dim;
    c.qk_norm = *qk_norm;
    c.n_kv_groups = *n_kv_groups;
    c.query_pre_attn_scalar = *query_pre_attn_scalar;
    c.rope_local_base = *rope_local_base;
    c.rope_base = *rope_base;
    c.sliding_window = *sliding_window;
    c.layer_types = std::move(*layer_types);
    c.dtype = *dtype;
    if (tie) c.tie_word_embeddings = *tie;
    if (rms_norm_eps) c.rms_norm_eps = *rms_norm_eps;
    if (initializer_range) c.initializer_range = *initializer_range;
    if (init) c.init = *init;
    return c;
}

inline TrainingConfig parse_training_config(const json& j, std::string_view source,
                                            std::vector<std::string> problems) {
    require_object(j, source, "training", problems);
    FieldReader r(j, source, problems);
    r.reject_unknown_fields(training_config_fields);

    constexpr std::int64_t int64_max = std::numeric_limits<std::int64_t>::max();
    const auto positive = [](double x) { return x > 0; };
    const auto non_negative = [](double x) { return x >= 0; };
    const auto fraction = [](double x) { return x >= 0 && x < 1; };

    TrainingConfig t;
    t.source = std::string(source);
    const auto learning_rate = r.number("learning_rate", true, "a positive number", positive);
    const auto warmup_steps = r.integer("warmup_steps", true, 0, int64_max, "an integer >= 0");
    const auto min_lr = r.number("min_lr", true, "a number >= 0", non_negative);
    const auto max_iters = r.integer("max_iters", true, 1, int64_max, "a positive integer");
    const auto eval_iters = r.integer("eval_iters", true, 1, int64_max, "a positive integer");
    const auto batch_size = r.positive_int("batch_size");
    const auto block_size = r.positive_int("block_size");
    const auto accumulation = r.positive_int("gradient_accumulation_steps");
    const auto device = r.choice("device", true, training_devices);
    const auto dtype = r.choice("dtype", true, training_dtypes);
    const auto ptdtype = r.choice("ptdtype", true, training_ptdtypes);

    const auto beta1 = r.number("beta1", false, "a number in [0, 1)", fraction);
    const auto beta2 = r.number("beta2", false, "a number in [0, 1)", fraction);
    const auto adam_eps = r.number("adam_eps", false, "a positive number", positive);
    const auto weight_decay = r.number("weight_decay", false, "a number >= 0", non_negative);
    const auto grad_clip = r.number("grad_clip", false, "a number >= 0 (0 disables clipping)", non_negative);
    const auto start_factor = r.number("warmup_start_factor", false, "a number in (0, 1]",
                                       [](double x) { return x > 0 && x <= 1; });
    const auto eval_interval = r.integer("eval_interval", false, 1, int64_max, "a positive integer");
    const auto eval_batches = r.integer("eval_batches", false, 1, int64_max, "a positive integer");
    const auto seed = r.integer("seed", false, 0, int64_max, "an integer >= 0");
    const auto log_interval = r.integer("log_interval", false, 1, int64_max, "a positive integer");

    if (warmup_steps && max_iters && *warmup_steps > *max_iters) {
        r.problem("warmup_steps", "value " + std::to_string(*warmup_steps) + " is larger than max_iters (" +
                                      std::to_string(*max_iters) + ")");
    }

    if (!problems.empty()) throw ConfigError(std::move(problems));

    t.learning_rate = *learning_rate;
    t.warmup_steps = *warmup_steps;
    t.min_lr = *min_lr;
    t.max_iters = *max_iters;
    t.eval_iters = *eval_iters;
    t.batch_size = *batch_size;
    t.block_size = *block_size;
    t.gradient_accumulation_steps = *accumulation;
    t.device = *device;
    t.dtype = *dtype;
    t.ptdtype = *ptdtype;
    if (beta1) t.beta1 = *beta1;
    if (beta2) t.beta2 = *beta2;
    if (adam_eps) t.adam_eps = *adam_eps;
    if (weight_decay) t.weight_decay = *weight_decay;
    if (grad_clip) t.grad_clip = *grad_clip;
    if (start_factor) t.warmup_start_factor = *start_factor;
    t.eval_interval = eval_interval ? *eval_interval : t.eval_iters;
    t.eval_batches = eval_batches ? *eval_batches : t.eval_iters;
    if (seed) t.seed = static_cast<std::uint64_t>(*seed);
    if (log_interval) t.log_interval = *log_interval;

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
    return t;
}

// Reads a whole file, refusing anything that cannot be a config file.
inline std::string read_config_text(const std::filesystem::path& path, std::string_view what) {
    const std::string name = path.string();
    const std::string expected = "expected a " + std::string(what) + " JSON file";
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (status.type() == std::filesystem::file_type::not_found) {
        throw ConfigError({name + ": no such file (" + expected + ")"});
    }
    if (ec) throw ConfigError({name + ": cannot be examined: " + ec.message() + " (" + expected + ")"});
    if (std::filesystem::is_directory(status)) throw ConfigError({name + ": is a directory (" + expected + ")"});
    errno = 0;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        const int error = errno;
        throw ConfigError({name + ": cannot be opened for reading" +
                           (error != 0 ? ": " + std::generic_category().message(error) : std::string())});
    }
    // Config files are a few hundred bytes. Reading stops past this cap, so a wrong path (say,
    // train.bin, or /dev/zero) fails fast instead of filling memory; pipes still work.
    constexpr std::size_t max_bytes = std::size_t{16} << 20;
    std::string text;
    std::array<char, 1 << 16> chunk{};
    while (in && text.size() <= max_bytes) {
        in.read(chunk.data(), chunk.size());
        text.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
    }
    if (in.bad()) throw ConfigError({name + ": read error (" + expected + ")"});
    if (text.size() > max_bytes) {
        throw ConfigError({name + ": is larger than " + std::to_string(max_bytes) + " bytes, too large for a " +
                           std::string(what) + " JSON file"});
    }
    return text;
}

// Parses JSON text. Duplicate top-level keys go into `problems`: a JSON parser keeps only one of
// the values, so such a file does not say what it means.
inline json parse_config_text(const std::string& text, const std::string& name, std::vector<std::string>& problems) {
    std::vector<std::string> seen;
    const json::parser_callback_t note_duplicates = [&](int depth, json::parse_event_t event, json& parsed) {
        if (event == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
            const auto& key = parsed.get_ref<const std::string&>();
            if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
                problems.push_back(name + ": field \"" + key +
                                   "\": appears more than once; expected each field once");
            } else {
                seen.push_back(key);
            }
        }
        return true;
    };
    try {
        return json::parse(text, note_duplicates);
    } catch (const json::exception& e) {
        // nlohmann's message starts with "[json.exception.parse_error.101] "; keep what follows,
        // which has the line and column.
        std::string message = e.what();
        if (const auto end = message.find("] "); message.starts_with("[json.") && end != std::string::npos) {
            message.erase(0, end + 2);
        }
        throw ConfigError({name + ": not valid JSON: " + message});
    }
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
// unreadable or not JSON, and listing every problem of its contents otherwise.
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
    c.vocab_size = C::vocab_size;
    c.context_length = C::context_length;
    c.emb_dim = C::emb_dim;
    c.n_heads = C::n_heads;
    c.n_layers = C::n_layers;
    c.hidden_dim = C::hidden_dim;
    c.head_dim = C::head_dim;
    c.qk_norm = C::qk_norm;
    c.n_kv_groups = C::n_kv_groups;
    c.query_pre_attn_scalar = C::query_pre_attn_scalar;
    c.rope_local_base = C::rope_local_base;
    c.rope_base = C::rope_base;
    c.sliding_window = C::sliding_window;
    c.layer_types.assign(C::layer_types::kinds.begin(), C::layer_types::kinds.end());
    c.dtype = "float32";
    c.tie_word_embeddings = C::tie_word_embeddings;
    c.rms_norm_eps = C::rms_norm_eps;
    c.source = std::string(config_name<C>());
    return c;
}

// Throws ConfigError when the file's architecture differs from the compiled type C, listing every
// differing field and saying how to build a matching type. Doubles are compared exactly: both
// come from the same decimal text (the generator copies the JSON's numbers into C++).
template <ModelConfig C>
void require_matches(const ModelConfigFile& file) {
    const ModelConfigFile compiled = config_file_of<C>();
    const std::string type_name(config_name<C>());
    std::vector<std::string> problems;
    auto differ = [&](std::string_view field, const std::string& in_file, const std::string& in_type) {
        problems.push_back(file.source + ": field \"" + std::string(field) + "\": the file has " + in_file +
                           ", the compiled type " + type_name + " has " + in_type);
    };
    auto compare_int = [&](std::string_view field, int a, int b) {
        if (a != b) differ(field, std::to_string(a), std::to_string(b));
    };
    auto compare_double = [&](std::string_view field, double a, double b) {
        if (a != b) differ(field, detail::number_text(a), detail::number_text(b));
    };
    auto compare_bool = [&](std::string_view field, bool a, bool b) {
        if (a != b) differ(field, a ? "true" : "false", b ? "true" : "false");
    };
    compare_int("vocab_size", file.vocab_size, compiled.vocab_size);
    compare_int("context_length", file.context_length, compiled.context_length);
    compare_int("emb_dim", file.emb_dim, compiled.emb_dim);
    compare_int("n_heads", file.n_heads, compiled.n_heads);
    compare_int("n_layers", file.n_layers, compiled.n_layers);
    compare_int("hidden_dim", file.hidden_dim, compiled.hidden_dim);
    compare_int("head_dim", file.head_dim, compiled.head_dim);
    compare_bool("qk_norm", file.qk_norm, compiled.qk_norm);
    compare_int("n_kv_groups", file.n_kv_groups, compiled.n_kv_groups);
    compare_double("query_pre_attn_scalar", file.query_pre_attn_scalar, compiled.query_pre_attn_scalar);
    compare_double("rope_local_base", file.rope_local_base, compiled.rope_local_base);
    compare_double("rope_base", file.rope_base, compiled.rope_base);
    compare_int("sliding_window", file.sliding_window, compiled.sliding_window);
    compare_bool("tie_word_embeddings", file.tie_word_embeddings, compiled.tie_word_embeddings);
    compare_double("rms_norm_eps", file.rms_norm_eps, compiled.rms_norm_eps);
    if (file.layer_types.size() != compiled.layer_types.size()) {
        differ("layer_types", std::to_string(file.layer_types.size()) + " entries",
               std::to_string(compiled.layer_types.size()) + " entries");
    }
    const std::size_t common = std::min(file.layer_types.size(), compiled.layer_types.size());
    for (std::size_t i = 0; i < common; ++i) {
        if (file.layer_types[i] != compiled.layer_types[i]) {
            differ("layer_types[" + std::to_string(i) + "]",
                   detail::quoted(attention_kind_name(file.layer_types[i])),
                   detail::quoted(attention_kind_name(compiled.layer_types[i])));
        }
    }
    if (problems.empty()) return;
    const std::string advice =
        "The model's architecture is compiled in; to run with " + file.source +
        ", build with a config type that matches it. Generate one in CMake with\n"
        "    gemma3_generate_config(NAME MyConfig JSON " + file.source +
        " OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/my_config.hpp)\n"
        "(cmake/gemma3GenerateConfig.cmake; it defines gemma3::configs::MyConfig in my_config.hpp), "
        "or write a struct like those in include/gemma3/configs.hpp.";
    throw ConfigError(std::move(problems), advice);
}

// The seed's field names; parse_*_config reads these back to an equal struct (apart from source
// and warnings).
inline nlohmann::json to_json(const ModelConfigFile& c) {
    nlohmann::json layer_types = nlohmann::json::array();
    for (AttentionKind kind : c.layer_types) layer_types.push_back(std::string(attention_kind_name(kind)));
    return nlohmann::json{
        {"vocab_size", c.vocab_size},
        {"context_length", c.context_length},
        {"emb_dim", c.emb_dim},
        {"n_heads", c.n_heads},
        {"n_layers", c.n_layers},
        {"hidden_dim", c.hidden_dim},
        {"head_dim", c.head_dim},
        {"qk_norm", c.qk_norm},
        {"n_kv_groups", c.n_kv_groups},
        {"query_pre_attn_scalar", c.query_pre_attn_scalar},
        {"rope_local_base", c.rope_local_base},
        {"rope_base", c.rope_base},
        {"sliding_window", c.sliding_window},
        {"layer_types", std::move(layer_types)},
        {"dtype", c.dtype},
        {"tie_word_embeddings", c.tie_word_embeddings},
        {"rms_norm_eps", c.rms_norm_eps},
        {"initializer_range", c.initializer_range},
        {"init", c.init},
    };
}

inline nlohmann::json to_json(const TrainingConfig& t) {
    return nlohmann::json{
        {"learning_rate", t.learning_rate},
        {"warmup_steps", t.warmup_steps},
        {"min_lr", t.min_lr},
        {"max_iters", t.max_iters},
        {"eval_iters", t.eval_iters},
        {"batch_size", t.batch_size},
        {"block_size", t.block_size},
        {"gradient_accumulation_steps", t.gradient_accumulation_steps},
        {"device", t.device},
        {"dtype", t.dtype},
        {"ptdtype", t.ptdtype},
        {"beta1", t.beta1},
        {"beta2", t.beta2},
        {"adam_eps", t.adam_eps},
        {"weight_decay", t.weight_decay},
        {"grad_clip", t.grad_clip},
        {"warmup_start_factor", t.warmup_start_factor},
        {"eval_interval", t.eval_interval},
        {"eval_batches", t.eval_batches},
        {"seed", t.seed},
        {"log_interval", t.log_interval},
    };
}

}  // namespace gemma3
