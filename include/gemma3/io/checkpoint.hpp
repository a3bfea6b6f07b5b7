// Training checkpoints: a directory that Hugging Face transformers loads as it is, plus the state
// to resume training exactly.
//
//   <dir>/model.safetensors      weights, HF Gemma 3 names (fp32 master weights)
//   <dir>/config.json            HF Gemma3TextConfig (Gemma3ForCausalLM.from_pretrained(dir) works)
//   <dir>/gemma3_config.json     our model config (config/model_config.json format)
//   <dir>/optimizer.safetensors  AdamW moments, "exp_avg.<name>" and "exp_avg_sq.<name>"
//   <dir>/trainer_state.json     iteration, optimizer steps, sampler states, best validation loss,
//                                and the training config the run used; for a data-parallel run
//                                also the rank count and every rank's batch stream
//   <dir>/gradients.safetensors  only when saved between two optimizer steps: the gradients
//                                accumulated so far ("grad.<name>")
//   <dir>/generation_config.json with GPT-2's vocabulary: <|endoftext|> as bos, eos and pad
//   <dir>/tokenizer.json, tokenizer_config.json, vocab.json, merges.txt
//                                the tokenizer, when the caller passes its files (gemma3-train
//                                does, from hf_tokenizer_files.hpp), so that AutoTokenizer and
//                                pipeline("text-generation") load the directory as it is
//
// Safety against a kill at any moment: a checkpoint is written into a fresh directory
// <out>/checkpoints/iter-NNNNNNNN, every file atomically (temp + fsync + rename), the directory is
// fsynced, and only then does the symlink <out>/latest (or <out>/best) switch to it, by an atomic
// rename of a new symlink. Until that rename, `latest` still names the previous complete checkpoint.
#pragma once

#include <gemma3/io/config_file.hpp>
#include <gemma3/train/data.hpp>
#include <gemma3/io/file_io.hpp>
#include <gemma3/io/hf_config.hpp>
#include <gemma3/text/hf_tokenizer_files.hpp>
#include <gemma3/io/json_read.hpp>
#include <gemma3/train/optimizer.hpp>
#include <gemma3/core/parameters.hpp>
#include <gemma3/io/safetensors.hpp>
#include <gemma3/io/weights_io.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace gemma3 {

class CheckpointError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct TrainerState {
    std::int64_t iteration = 0;        // the next iteration (micro-batch) to run
    std::int64_t optimizer_steps = 0;  // AdamW steps taken (bias correction uses this)
    std::int64_t last_eval_iteration = -1;  // evaluation at this iteration already ran
    bool pending_gradients = false;    // saved mid-accumulation: gradients.safetensors holds the partial sum
    double best_val_loss = std::numeric_limits<double>::infinity();
    std::string train_sampler;         // generator states of the batch samplers
    std::string eval_train_sampler;
    std::string eval_val_sampler;
    // Data parallelism (written only by runs with several ranks, or resumed from one): the number
    // of ranks and the batch sampling of the run that wrote it, and the training batch streams of
    // ranks 1, 2, ... with per-rank sampling (rank 0's stream is train_sampler). Streams of ranks a
    // later run does not have are kept here unchanged, so they continue if those ranks return.
    int ranks = 1;
    std::string batch_sampling;
    std::vector<std::string> rank_train_samplers;
};

// The model config of a checkpoint directory: gemma3_config.json when present (written by
// gemma3-train), else Hugging Face's config.json. Throws ConfigError for a bad config file (naming
// the file and every problem), CheckpointError when the directory has neither.
inline ModelConfigFile checkpoint_model_config(const std::filesystem::path& dir);

namespace detail {

template <class T>
TensorSource tensor_source(const T* data, std::size_t n) {
    return std::span<const T>(data, n);
}

inline void write_json_atomically(const std::filesystem::path& path, const nlohmann::json& j) {
    write_file_atomically(path, [&](std::ostream& out) { out << j.dump(2) << "\n"; });
}

inline nlohmann::json read_json(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw CheckpointError(path.string() + ": cannot open (incomplete or missing checkpoint?)");
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        throw CheckpointError(path.string() + ": not valid JSON: " + e.what());
    }
}

// Points the symlink `link` at `target` (a path relative to the link's directory) atomically.
inline void replace_symlink(const std::filesystem::path& link, const std::filesystem::path& target) {
    const auto temporary = link.parent_path() / ("." + link.filename().string() + ".tmp." + std::to_string(::getpid()));
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    std::filesystem::create_symlink(target, temporary);
    std::filesystem::rename(temporary, link);  // rename(2): atomic replacement
    fsync_directory(link.parent_path());
}

}  // namespace detail

inline ModelConfigFile checkpoint_model_config(const std::filesystem::path& dir) {
    if (std::filesystem::exists(dir / "gemma3_config.json")) return load_model_config(dir / "gemma3_config.json");
    if (std::filesystem::exists(dir / "config.json")) {
        return load_hf_model_config(dir / "config.json");
    }
    throw CheckpointError(dir.string() + ": neither gemma3_config.json nor config.json found (expected a directory "
                                         "written by gemma3-train or by transformers' save_pretrained)");
}

// Reads a checkpoint directory's model config (ours or transformers', as checkpoint_model_config)
// and checks it against the compiled config C, naming every field that differs. Returns it.
template <ModelConfig C>
ModelConfigFile require_checkpoint_matches(const std::filesystem::path& dir) {
    if (!std::filesystem::is_directory(dir)) {
        throw CheckpointError(dir.string() + ": not a directory (expected a checkpoint directory with config.json and "
                                             "model.safetensors; for a bare safetensors file use load_weights)");
    }
    auto config = checkpoint_model_config(dir);
    try {
        require_matches<C>(config);
    } catch (const ConfigError& e) {
        throw CheckpointError(dir.string() + ": the checkpoint is for a different model than the compiled " +
                              std::string(config_name<C>()) + ":\n" + e.what());
    }
    return config;
}

// The normal way to load a trained model: a checkpoint directory written by gemma3-train or by
// transformers' save_pretrained (config.json + model.safetensors). The config is checked against
// the model's compiled type first (window, layer types, RoPE bases, ... which shapes alone cannot
// tell), then the weights are read. `Model` is Model<C, Cpu<T>> or Model<C, Cuda> (whose load()
// also uploads them); load_weights(file, model.parameters) reads a bare safetensors file without a
// config.
template <class Model>
void load_pretrained(Model& model, const std::filesystem::path& dir) {
    require_checkpoint_matches<typename Model::Config>(dir);
    if constexpr (requires { model.load(dir); }) {
        model.load(dir / "model.safetensors");
    } else {
        load_weights(dir / "model.safetensors", model.parameters);
        if constexpr (requires { model.weights_updated(); }) model.weights_updated();  // Cpu<bf16>'s copy
    }
}

// Optional observer of a checkpoint write: called with the name of each phase ("model",
// "optimizer", "gradients", "state", "directory", "link") before it happens (gemma3-train's
// crash-safety tests kill the process there).
using CheckpointPhaseObserver = std::function<void(std::string_view phase)>;

template <ModelConfig C, class T>
void write_checkpoint_files(const std::filesystem::path& dir, const Parameters<C, T>& params, const AdamW<T>& adamw,
                            const TrainerState& state, const ModelConfigFile& model_config,
                            const TrainingConfig& training_config, const Parameters<C, T>* pending_grads,
                            std::span<const NamedText> extra_files = {}, const CheckpointPhaseObserver& on_phase = {}) {
    const auto hook = [&](std::string_view phase) {
        if (on_phase) on_phase(phase);
    };
    std::filesystem::create_directories(dir);
    const auto tensors = parameter_tensors<C>();
    const DType stored = std::is_same_v<T, double> ? DType::F64 : DType::F32;

    hook("model");
    std::vector<TensorToWrite> weights;
    for (const auto& t : tensors) {
        weights.push_back({t.name, t.shape, detail::tensor_source(params.data() + t.offset, t.numel()), stored});
    }
    write_safetensors(dir / "model.safetensors", weights, {{"format", "pt"}});

    hook("optimizer");
    std::vector<TensorToWrite> moments;
    for (const auto& t : tensors) {
        moments.push_back({"exp_avg." + t.name, t.shape,
                           detail::tensor_source(adamw.first_moment().data() + t.offset, t.numel()), stored});
        moments.push_back({"exp_avg_sq." + t.name, t.shape,
                           detail::tensor_source(adamw.second_moment().data() + t.offset, t.numel()), stored});
    }
    write_safetensors(dir / "optimizer.safetensors", moments,
                      {{"adamw_steps", std::to_string(adamw.steps())}});

    if (pending_grads) {
        hook("gradients");
        std::vector<TensorToWrite> grads;
        for (const auto& t : tensors) {
            grads.push_back({"grad." + t.name, t.shape, detail::tensor_source(pending_grads->data() + t.offset, t.numel()),
                             stored});
        }
        write_safetensors(dir / "gradients.safetensors", grads);
    }

    hook("state");
    if (model_config.qk_norm) {  // HF's Gemma 3 always has q/k norms; without them it cannot load the model
        detail::write_json_atomically(dir / "config.json", hf_config_json(model_config));
    }
    detail::write_json_atomically(dir / "gemma3_config.json", to_json(model_config));
    if (model_config.vocab_size == 50257) {
        const auto generation = hf_generation_config(50256);
        write_file_atomically(dir / generation.name, [&](std::ostream& out) { out << generation.contents; });
    }
    for (const auto& file : extra_files) {
        write_file_atomically(dir / file.name, [&](std::ostream& out) { out << file.contents; });
    }
    nlohmann::json s = {
        {"format", "gemma3-trainer-state"},
        {"version", 1},
        {"config_type", std::string(config_name<C>())},
        {"scalar", std::is_same_v<T, double> ? "float64" : "float32"},
        {"iteration", state.iteration},
        {"optimizer_steps", state.optimizer_steps},
        {"last_eval_iteration", state.last_eval_iteration},
        {"pending_gradients", pending_grads != nullptr},
        {"best_val_loss", std::isfinite(state.best_val_loss) ? nlohmann::json(state.best_val_loss) : nlohmann::json(nullptr)},
        {"train_sampler", state.train_sampler},
        {"eval_train_sampler", state.eval_train_sampler},
        {"eval_val_sampler", state.eval_val_sampler},
        {"training_config", to_json(training_config)},
    };
    if (state.ranks > 1 || !state.rank_train_samplers.empty()) {
        s["data_parallel"] = {{"ranks", state.ranks},
                              {"batch_sampling", state.batch_sampling},
                              {"rank_train_samplers", state.rank_train_samplers}};
    }
    detail::write_json_atomically(dir / "trainer_state.json", s);
    hook("directory");
    detail::fsync_directory(dir);
}

// Writes <out>/checkpoints/iter-NNNNNNNN and points <out>/<link_name> at it. Returns the directory.
template <ModelConfig C, class T>
std::filesystem::path save_checkpoint(const std::filesystem::path& out_dir, const std::string& link_name,
                                      const Parameters<C, T>& params, const AdamW<T>& adamw, const TrainerState& state,
                                      const ModelConfigFile& model_config, const TrainingConfig& training_config,
                                      const Parameters<C, T>* pending_grads = nullptr,
                                      std::span<const NamedText> extra_files = {},
                                      const CheckpointPhaseObserver& on_phase = {}) {
    char name[32];
    std::snprintf(name, sizeof name, "iter-%08lld", static_cast<long long>(state.iteration));
    const auto relative = std::filesystem::path("checkpoints") / name;
    const auto dir = out_dir / relative;
    // A directory of this name can only be the remains of a save that was interrupted; if a link
    // points at it, it is complete and current (same iteration, same contents), so reuse it.
    bool linked = false;
    for (const char* other : {"latest", "best"}) {
        std::error_code ec;
        const auto target = std::filesystem::read_symlink(out_dir / other, ec);
        if (!ec && target == relative) linked = true;
    }
    if (!linked) {
        std::filesystem::remove_all(dir);
        write_checkpoint_files(dir, params, adamw, state, model_config, training_config, pending_grads, extra_files,
                               on_phase);
        detail::fsync_directory(dir.parent_path());
    }
    if (on_phase) on_phase("link");
    detail::replace_symlink(out_dir / link_name, relative);
    return dir;
}

// Removes checkpoint directories that neither `latest` nor `best` points at.
inline void remove_unlinked_checkpoints(const std::filesystem::path& out_dir) {
    std::set<std::filesystem::path> keep;
    for (const char* link : {"latest", "best"}) {
        std::error_code ec;
        const auto target = std::filesystem::read_symlink(out_dir / link, ec);
        if (!ec) keep.insert((out_dir / target).lexically_normal());
    }
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(out_dir / "checkpoints", ec)) {
        if (!keep.count(entry.path().lexically_normal())) std::filesystem::remove_all(entry.path(), ec);
    }
}

// Restores weights, AdamW moments, the partial gradients (zero unless saved mid-accumulation) and
// the trainer state from a checkpoint directory written for the same architecture (config C).
// All or nothing: any problem is a CheckpointError naming the file (and field or tensor), and
// leaves params, adamw and grads as they were.
template <ModelConfig C, class T>
TrainerState load_checkpoint(const std::filesystem::path& dir, Parameters<C, T>& params, AdamW<T>& adamw,
                             Parameters<C, T>& grads) {
    std::error_code not_a_directory;
    if (!std::filesystem::is_directory(dir, not_a_directory)) {
        throw CheckpointError(dir.string() + ": no such checkpoint directory");
    }
    ModelConfigFile saved_config;
    try {
        saved_config = load_model_config(dir / "gemma3_config.json");  // size and depth limits, every value checked
    } catch (const ConfigError& e) {
        throw CheckpointError(dir.string() + ": cannot read the checkpoint's model config:\n" + e.what());
    }
    try {
        require_matches<C>(saved_config);
    } catch (const ConfigError& e) {
        throw CheckpointError(dir.string() + ": the checkpoint was written for a different model:\n" + e.what());
    }
    // Every number through json_read: range-checked, whole, and named with file, field and value.
    const auto state_path = dir / "trainer_state.json";
    const auto state_json = json_read::read_file<CheckpointError>(state_path, "trainer state");
    const json_read::ObjectReader<CheckpointError> saved(state_json, state_path.string());
    if (saved.string("format") != "gemma3-trainer-state" || saved.integer<int>("version") != 1) {
        throw CheckpointError(state_path.string() + ": unknown format or version (expected \"gemma3-trainer-state\" "
                                                    "version 1)");
    }
    TrainerState state;
    state.iteration = saved.integer<std::int64_t>("iteration", 0);
    state.optimizer_steps = saved.integer<std::int64_t>("optimizer_steps", 0);
    state.last_eval_iteration = saved.integer<std::int64_t>("last_eval_iteration", -1);
    state.pending_gradients = saved.boolean("pending_gradients");
    state.best_val_loss = saved.at("best_val_loss").is_null() ? std::numeric_limits<double>::infinity()
                                                                : saved.number("best_val_loss");
    state.train_sampler = saved.string("train_sampler");
    state.eval_train_sampler = saved.string("eval_train_sampler");
    state.eval_val_sampler = saved.string("eval_val_sampler");
    if (saved.has("data_parallel")) {
        const auto parallel = saved.object("data_parallel");
        state.ranks = parallel.integer<int>("ranks", 1);
        state.batch_sampling = parallel.string("batch_sampling");
        const auto& streams = parallel.array("rank_train_samplers");
        for (std::size_t r = 0; r < streams.size(); ++r) {
            if (!streams[r].is_string()) {
                parallel.fail("rank_train_samplers", "element " + std::to_string(r) + " is " +
                                                         json_read::kind(streams[r]) + "; expected a string");
            }
            state.rank_train_samplers.push_back(streams[r].get<std::string>());
        }
    }
    // The sampler states are restored after this function returns; a bad one must fail here,
    // before anything of the caller's has changed.
    const auto check_sampler = [&](const std::string& field, const std::string& text) {
        if (!BatchSampler::is_valid_state(text)) {
            throw CheckpointError((dir / "trainer_state.json").string() + ": " + field +
                                  " is not a batch sampler state (" + std::to_string(text.size()) + " bytes)");
        }
    };
    check_sampler("train_sampler", state.train_sampler);
    check_sampler("eval_train_sampler", state.eval_train_sampler);
    check_sampler("eval_val_sampler", state.eval_val_sampler);
    for (std::size_t r = 0; r < state.rank_train_samplers.size(); ++r) {
        check_sampler("data_parallel.rank_train_samplers[" + std::to_string(r) + "]", state.rank_train_samplers[r]);
    }

    // Read everything into temporaries first, so a bad file leaves params and adamw untouched.
    Parameters<C, T> new_params, new_grads;
    AdamW<T> new_adamw(params.size(), adamw.settings());
    try {
        // new_params is a scratch copy already: read into it directly.
        detail::read_weights<C>(dir / "model.safetensors", std::span<T>(new_params.data(), new_params.size()));
        const SafetensorsFile moments(dir / "optimizer.safetensors");
        for (const auto& t : parameter_tensors<C>()) {
            moments.read<T>("exp_avg." + t.name, t.shape,
                            std::span<T>(new_adamw.first_moment().data() + t.offset, t.numel()));
            moments.read<T>("exp_avg_sq." + t.name, t.shape,
                            std::span<T>(new_adamw.second_moment().data() + t.offset, t.numel()));
        }
        if (state.pending_gradients) {
            const SafetensorsFile saved_grads(dir / "gradients.safetensors");
            for (const auto& t : parameter_tensors<C>()) {
                saved_grads.read<T>("grad." + t.name, t.shape, std::span<T>(new_grads.data() + t.offset, t.numel()));
            }
        }
    } catch (const std::exception& e) {
        throw CheckpointError(dir.string() + ": cannot load the checkpoint: " + e.what());
    }
    new_adamw.set_steps(state.optimizer_steps);
    params = std::move(new_params);
    adamw = std::move(new_adamw);
    grads = std::move(new_grads);
    return state;
}

}  // namespace gemma3
