// The field tables: every field of the model config and of the training config, declared once.
//
// Everything that lists the fields is expanded from these tables (X-macros, as in gemma.cpp's
// VisitFields, but usable at compile time too): the ModelConfig concept and config_file_of<C>()
// (config.hpp, config_file.hpp), the structs ModelConfigFile and TrainingConfig, reading and
// checking a JSON file, to_json, require_matches<C>(), Hugging Face's config.json both ways
// (hf_config.hpp), the header gemma3_generate_config() writes (config_header.hpp) and
// gemma3-info's printout. Adding a field is one row here plus its meaning (the cross-field rules in
// config_file.hpp and the model code that uses it).
//
// A row is X(type, name, presence, rule, hugging_face, description):
//   type          int, double, bool, std::string, std::int64_t, std::uint64_t, or LayerKinds
//                 (one attention kind per layer; a LayerPattern type list in a compiled config)
//   name          the field's name in our JSON files, in the structs and in compiled config types
//   presence      required | optional(default) | derived (computed from other fields when absent)
//   rule          the values allowed: positive, above_one, non_negative, fraction, start_factor,
//                 any (booleans), one_of(<list of spellings>), layer_kinds
//   hugging_face  how transformers' config.json holds it: hf("name"), hf("name", default when
//                 absent), hf_integral(...) (written as an integer when whole: transformers declares
//                 it an int), hf_rope("<layer kind>", "<pre-4.56 name>", default), hf_layer_types
//                 (layer_types, or sliding_window_pattern), hf_fixed(value) (implied by Gemma 3),
//                 not_in_hf
//   description   a few words for gemma3-info and the documentation
// The vocabulary of the columns (required, positive, hf, ...) lives in gemma3::fields
// (config_file.hpp); the tables are only tokens until a user of them expands them there.
#pragma once

// The architecture: what a compiled config type holds (config.hpp's ModelConfig concept).
#define GEMMA3_MODEL_ARCHITECTURE_FIELDS(X)                                                                       \
    X(int, vocab_size, required, positive, hf("vocab_size"), "tokens in the vocabulary")                          \
    X(int, context_length, required, positive, hf("max_position_embeddings"), "longest sequence, in tokens")       \
    X(int, emb_dim, required, positive, hf("hidden_size"), "width of the residual stream")                        \
    X(int, n_heads, required, positive, hf("num_attention_heads"), "query heads")                                 \
    X(int, n_layers, required, positive, hf("num_hidden_layers"), "decoder blocks")                               \
    X(int, hidden_dim, required, positive, hf("intermediate_size"), "hidden width of the GeGLU feed-forward")      \
    X(int, head_dim, derived, positive, hf("head_dim"), "width of one head (default emb_dim / n_heads)")           \
    X(bool, qk_norm, required, any, hf_fixed(true), "RMSNorm on queries and keys")                                \
    X(int, n_kv_groups, required, positive, hf("num_key_value_heads"), "key/value heads (1: multi-query)")        \
    X(double, query_pre_attn_scalar, required, positive, hf_integral("query_pre_attn_scalar", 256),               \
      "attention scores are scaled by its -1/2 power")                                                          \
    X(double, rope_local_base, required, above_one, hf_rope("sliding_attention", "rope_local_base_freq", 1e4),    \
      "RoPE base of the sliding layers")                                                                         \
    X(double, rope_base, required, above_one, hf_rope("full_attention", "rope_theta", 1e6),                       \
      "RoPE base of the full layers")                                                                            \
    X(int, sliding_window, required, positive, hf("sliding_window"), "keys a sliding layer attends to")           \
    X(LayerKinds, layer_types, required, layer_kinds, hf_layer_types, "attention kind of each layer")             \
    X(bool, tie_word_embeddings, optional(false), any, hf("tie_word_embeddings", true),                          \
      "output head shares the embedding matrix")                                                                 \
    X(double, rms_norm_eps, optional(1e-6), positive, hf("rms_norm_eps", 1e-6), "epsilon of every RMSNorm")

// Run-time settings of a model file: not architecture, so not part of a compiled config type.
#define GEMMA3_MODEL_SETTING_FIELDS(X)                                                                            \
    X(std::string, dtype, required, one_of(model_dtypes), hf_fixed("float32"), "the seed's weight dtype")       \
    X(double, initializer_range, optional(0.02), positive, hf("initializer_range", 0.02),                        \
      "standard deviation of init \"hf\"")                                                                       \
    X(std::string, init, optional("seed"), one_of(init_schemes), not_in_hf,                                     \
      "initialisation: \"seed\" (PyTorch defaults) or \"hf\" (transformers')")

#define GEMMA3_MODEL_CONFIG_FIELDS(X) GEMMA3_MODEL_ARCHITECTURE_FIELDS(X) GEMMA3_MODEL_SETTING_FIELDS(X)

// The training config; the hugging_face column is always not_in_hf.
#define GEMMA3_TRAINING_CONFIG_FIELDS(X)                                                                          \
    X(double, learning_rate, required, positive, not_in_hf, "base (peak of warmup) learning rate")              \
    X(std::int64_t, warmup_steps, required, non_negative, not_in_hf, "iterations of linear warmup")            \
    X(double, min_lr, required, non_negative, not_in_hf, "eta_min of the cosine phase")                         \
    X(std::int64_t, max_iters, required, positive, not_in_hf, "iterations (micro-batches)")                    \
    X(std::int64_t, eval_iters, required, positive, not_in_hf, "the seed's evaluation interval and batches")   \
    X(int, batch_size, required, positive, not_in_hf, "sequences per micro-batch")                              \
    X(int, block_size, required, positive, not_in_hf, "tokens per sequence")                                    \
    X(int, gradient_accumulation_steps, required, positive, not_in_hf, "micro-batches per optimizer step")      \
    X(std::string, device, required, one_of(training_devices), not_in_hf, "where to train")                    \
    X(std::string, dtype, required, one_of(training_dtypes), not_in_hf, "autocast precision")                  \
    X(std::string, ptdtype, required, one_of(training_ptdtypes), not_in_hf, "the seed's tensor dtype")         \
    X(double, beta1, optional(0.9), fraction, not_in_hf, "AdamW beta1")                                          \
    X(double, beta2, optional(0.95), fraction, not_in_hf, "AdamW beta2")                                         \
    X(double, adam_eps, optional(1e-9), positive, not_in_hf, "AdamW epsilon, added after the square root")      \
    X(double, weight_decay, optional(0.1), non_negative, not_in_hf, "AdamW decoupled weight decay")             \
    X(double, grad_clip, optional(0.5), non_negative, not_in_hf, "global gradient-norm clip; 0 disables it")    \
    X(double, warmup_start_factor, optional(1.0 / 3.0), start_factor, not_in_hf,                                \
      "warmup starts at learning_rate times this")                                                               \
    X(std::int64_t, eval_interval, derived, positive, not_in_hf, "evaluate every this many iterations")        \
    X(std::int64_t, eval_batches, derived, positive, not_in_hf, "batches per split per evaluation")            \
    X(std::uint64_t, seed, optional(42), non_negative, not_in_hf, "random seed of batch sampling")             \
    X(std::int64_t, log_interval, optional(1), positive, not_in_hf, "print progress every this many iterations")

// --- Expansions for compiled config types (used by config.hpp and config_file.hpp) ---------------

// One requirement of the ModelConfig concept per architecture field.
#define GEMMA3_CONFIG_REQUIREMENT(type, name, ...) GEMMA3_CONFIG_REQUIREMENT_##type(name)
#define GEMMA3_CONFIG_REQUIREMENT_int(name) { C::name } -> std::convertible_to<int>;
#define GEMMA3_CONFIG_REQUIREMENT_double(name) { C::name } -> std::convertible_to<double>;
#define GEMMA3_CONFIG_REQUIREMENT_bool(name) { C::name } -> std::convertible_to<bool>;
#define GEMMA3_CONFIG_REQUIREMENT_LayerKinds(name) \
    typename C::name;                              \
    requires ::gemma3::is_layer_pattern<typename C::name>::value;

// The value of a field of the compiled type C, as the run-time struct holds it.
#define GEMMA3_COMPILED_VALUE(type, C, name) GEMMA3_COMPILED_VALUE_##type(C, name)
#define GEMMA3_COMPILED_VALUE_int(C, name) C::name
#define GEMMA3_COMPILED_VALUE_double(C, name) C::name
#define GEMMA3_COMPILED_VALUE_bool(C, name) C::name
#define GEMMA3_COMPILED_VALUE_LayerKinds(C, name) \
    ::gemma3::LayerKinds(C::name::kinds.begin(), C::name::kinds.end())
