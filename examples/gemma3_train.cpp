// gemma3-train: the seed's training loop, driven by config/model_config.json and
// config/training_config.json. Every training field can be overridden on the command line.
//
//   build/bin/gemma3-train --model-config config/demo_model_config.json
//       --training-config config/demo_training_config.json --data-dir data/kjv --out-dir out/demo
//   build/bin/gemma3-train ... --resume            # continue from <out-dir>/latest
//   mpirun -np 2 build/bin/gemma3-train ...        # data-parallel over 2 processes (MPI)
//
// Ctrl-C (SIGINT) or SIGTERM: the run finishes the optimizer step under way, saves a checkpoint and
// exits with 128 + the signal number; a second signal ends it at once. Checkpoints of a model with
// GPT-2's vocabulary also hold GPT-2's tokenizer files (hf_tokenizer_files.hpp).
//
// The model's shapes are compile-time constants, so the program contains a set of compiled config
// types and picks the one that matches --model-config (compiled_configs.hpp).
#include <gemma3/io/config_file.hpp>
#include <gemma3/core/configs.hpp>
#include <gemma3/train/distributed.hpp>
#include <gemma3/text/hf_tokenizer_files.hpp>
#include <gemma3/text/tokenizer.hpp>
#include <gemma3/train/trainer.hpp>

#include "compiled_configs.hpp"
#include "find_tokenizer.hpp"
#include "loss_plot.hpp"
#include "train_instance.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#ifdef GEMMA3_HAVE_CUDA
#include "gemma3_train_cuda.hpp"
#endif

namespace {

static_assert(std::tuple_size_v<gemma3::programs::CompiledConfigs> == GEMMA3_TRAIN_CONFIG_COUNT,
              "examples/CMakeLists.txt generates trainer instances for a different number of compiled configs");

// Trains with the compiled config that matches `model` (its trainer is compiled in its own
// translation unit, train_instance.hpp); false when none does.
template <std::size_t I = 0>
bool train_matching(const gemma3::ModelConfigFile& model, const gemma3::TrainingConfig& training,
                    const gemma3::TrainOptions& options, gemma3::TrainSummary& summary) {
    using gemma3::programs::CompiledConfigs;
    if constexpr (I == std::tuple_size_v<CompiledConfigs>) {
        return false;
    } else {
        if (!gemma3::programs::matches<std::tuple_element_t<I, CompiledConfigs>>(model)) {
            return train_matching<I + 1>(model, training, options, summary);
        }
        if (training.dtype == "float64") {
            summary = gemma3::programs::train_compiled<I, double>(model, training, options);
        } else if (training.dtype == "bfloat16") {  // mixed precision: bf16 products, fp32 master weights
            summary = gemma3::programs::train_compiled<I, gemma3::bf16>(model, training, options);
        } else {
            summary = gemma3::programs::train_compiled<I, float>(model, training, options);
        }
        return true;
    }
}

// GPT-2's tokenizer in transformers' files, for the checkpoints of a model with its vocabulary.
// Without the ranks file the checkpoints go without them (a warning says so), unless --tokenizer
// named a file that is not there.
std::vector<gemma3::NamedText> checkpoint_tokenizer_files(const gemma3::ModelConfigFile& model,
                                                          const std::string& flag) {
    if (model.vocab_size != gemma3::Tokenizer::gpt2_mergeable_tokens + 1) return {};
    std::filesystem::path ranks;
    try {
        ranks = gemma3::programs::find_tokenizer(flag);
    } catch (const std::exception& e) {
        if (!flag.empty()) throw;
        std::cerr << "warning: checkpoints will hold no tokenizer files: " << e.what() << "\n";
        return {};
    }
    const auto tokenizer = gemma3::Tokenizer::from_tiktoken_file(ranks);
    std::vector<std::string> tokens;
    for (std::int32_t id = 0; id < tokenizer.eot_token(); ++id) tokens.emplace_back(tokenizer.token_bytes(id));
    auto files = gemma3::hf_tokenizer_files(tokens, gemma3::Tokenizer::eot_text, model.context_length);
    return files;
}

// Device selection: never switch silently.
std::optional<std::string> device_problem(const std::string& device) {
    if (device == "cpu") return std::nullopt;
#ifdef GEMMA3_HAVE_CUDA
    if (gemma3::programs::cuda_device_count() > 0) return std::nullopt;
    return "device \"cuda\" was requested, but no CUDA device is present on this machine. Train on the CPU with "
           "--device cpu (or set \"device\": \"cpu\" in the training config).";
#else
    return "device \"cuda\" was requested, but this gemma3-train was built without CUDA (GEMMA3_CUDA=OFF, or nvcc "
           "was not found when it was configured). Train on the CPU with --device cpu (or set \"device\": \"cpu\" "
           "in the training config).";
#endif
}

// Fault injection for the crash-safety tests: GEMMA3_KILL_AT_CHECKPOINT_PHASE="<phase>:<n>" kills
// this process with SIGKILL when the n-th checkpoint write reaches <phase> (see checkpoint.hpp);
// GEMMA3_KILL_AT_ITERATION="<rank>:<iteration>" kills that rank of a data-parallel run when it
// starts that iteration.
void install_fault_injection(gemma3::TrainOptions& options, int rank) {
    if (const char* spec = std::getenv("GEMMA3_KILL_AT_CHECKPOINT_PHASE")) {
        const std::string text = spec;
        const auto colon = text.find(':');
        const std::string phase = text.substr(0, colon);
        const int nth = colon == std::string::npos ? 1 : std::stoi(text.substr(colon + 1));
        options.checkpoint_phase = [phase, nth, seen = 0](std::string_view reached) mutable {
            if (reached == phase && ++seen == nth) std::raise(SIGKILL);
        };
    }
    if (const char* spec = std::getenv("GEMMA3_KILL_AT_ITERATION")) {
        const std::string text = spec;
        const auto colon = text.find(':');
        if (colon == std::string::npos || std::stoi(text.substr(0, colon)) != rank) return;
        const std::int64_t iteration = std::stoll(text.substr(colon + 1));
        options.before_iteration = [iteration](std::int64_t e) {
            if (e >= iteration) std::raise(SIGKILL);
        };
    }
    // GEMMA3_SIGNAL_AT_ITERATIONS="<rank>:<iteration>[,<iteration>...]:<INT|TERM>" sends that signal
    // to this process (rank) when it starts each of those iterations: the graceful-stop tests.
    if (const char* spec = std::getenv("GEMMA3_SIGNAL_AT_ITERATIONS")) {
        const std::string text = spec;
        const auto first = text.find(':'), last = text.rfind(':');
        if (first == std::string::npos || first == last || std::stoi(text.substr(0, first)) != rank) return;
        std::vector<std::int64_t> iterations;
        for (std::size_t pos = first + 1; pos < last;) {
            const auto comma = std::min(text.find(',', pos), last);
            iterations.push_back(std::stoll(text.substr(pos, comma - pos)));
            pos = comma + 1;
        }
        const int signal_number = text.substr(last + 1) == "TERM" ? SIGTERM : SIGINT;
        options.before_iteration = [iterations, signal_number](std::int64_t e) {
            if (std::find(iterations.begin(), iterations.end(), e) != iterations.end()) std::raise(signal_number);
        };
    }
}

}  // namespace

int main(int argc, char** argv) {
    // Past a file-size limit (ulimit -f) write() then fails with EFBIG and the run ends with an
    // error naming the file, its previous outputs intact; SIGXFSZ's default would kill it mid-write.
    std::signal(SIGXFSZ, SIG_IGN);
    CLI::App app{"Train a Gemma 3 model on token files (the seed's loop)"};
    std::string model_path = "config/model_config.json", training_path = "config/training_config.json";
    gemma3::TrainOptions options;
    std::string data_dir = "data", out_dir = "out", resume_from, tokenizer;
    bool resume = false;
    app.add_option("--model-config", model_path, "model config JSON")->capture_default_str();
    app.add_option("--training-config", training_path, "training config JSON")->capture_default_str();
    app.add_option("--data-dir", data_dir, "directory with train.bin and validation.bin")->capture_default_str();
    app.add_option("--out-dir", out_dir, "checkpoints, metrics.jsonl and loss.svg go here")->capture_default_str();
    app.add_flag("--resume", resume, "continue from <out-dir>/latest");
    app.add_option("--resume-from", resume_from, "continue from this checkpoint directory");
    app.add_option("--tokenizer", tokenizer,
                   "GPT-2 ranks in tiktoken format, saved into each checkpoint in transformers' formats (default: "
                   "$GEMMA3_TOKENIZER, else gpt2.tiktoken in the data folder of this program's install or checkout)");
    app.add_option("--stop-after", options.stop_after,
                   "stop after this many iterations, with a checkpoint (continue later with --resume)");

    // Data parallelism, when started by mpirun (see the README's "Data-parallel training").
    app.add_flag("--keep-global-batch", options.parallel.keep_global_batch,
                 "divide gradient_accumulation_steps among the ranks, so the tokens per optimizer step stay those of "
                 "one process");
    app.add_flag("--zero1", options.parallel.zero1,
                 "ZeRO stage 1: shard AdamW's moments across the ranks (reduce-scatter gradients, all-gather weights)");
    std::string sampling = "per-rank";
    app.add_option("--batch-sampling", sampling,
                   "per-rank: each rank draws from its own stream (seeded from seed and rank); shared: the ranks split "
                   "one stream, drawing exactly the windows of one process with ranks x batch_size")
        ->check(CLI::IsMember({"per-rank", "shared"}))
        ->capture_default_str();

    // Overrides of training_config.json, one flag per field.
    std::map<std::string, double> numbers;
    std::map<std::string, std::int64_t> integers;
    std::map<std::string, std::string> strings;
    std::map<std::string, CLI::Option*> given;
    // "--max_iters" and "--max-iters" both work.
    const auto flag_names = [](std::string field) {
        std::string names = "--" + field;
        std::replace(field.begin(), field.end(), '_', '-');
        return names.find('_') == std::string::npos ? names : names + ",--" + field;
    };
    // One flag per row of the field table (gemma3/core/config_fields.hpp), read as its type's JSON kind.
    const auto add_override = [&]<class T>(std::type_identity<T>, const std::string& field, const char* description) {
        const std::string help = "training config field " + field + ": " + description;
        if constexpr (std::is_same_v<T, double>) {
            given[field] = app.add_option(flag_names(field), numbers[field], help);
        } else if constexpr (std::is_integral_v<T>) {
            given[field] = app.add_option(flag_names(field), integers[field], help);
        } else {
            given[field] = app.add_option(flag_names(field), strings[field], help);
        }
    };
#define GEMMA3_OVERRIDE_FLAG(type, name, presence, rule, hugging_face, description) \
    add_override(std::type_identity<type>{}, #name, description);
    GEMMA3_TRAINING_CONFIG_FIELDS(GEMMA3_OVERRIDE_FLAG)
#undef GEMMA3_OVERRIDE_FLAG
    CLI11_PARSE(app, argc, argv);
    options.parallel.sampling = sampling == "shared" ? gemma3::BatchSampling::shared : gemma3::BatchSampling::per_rank;

    std::unique_ptr<gemma3::Communicator> comm;
    try {
        comm = gemma3::make_communicator(&argc, &argv);
    } catch (const std::exception& e) {
        std::cerr << "gemma3-train: " << e.what() << "\n";
        return 2;
    }
    options.parallel.communicator = comm.get();
    if (comm->rank() != 0) options.live_line = false;
    options.stop_request = gemma3::install_stop_on_signals();
    install_fault_injection(options, comm->rank());
    // Prints the error and ends. With several ranks the others may be waiting in a collective (or
    // in MPI_Finalize's synchronisation): only an abort stops them all.
    const auto fail = [&](const std::string& message, int exit_code) {
        if (comm->size() > 1) comm->abort("gemma3-train: " + message, exit_code);
        std::cerr << "gemma3-train: " << message << "\n";
        return exit_code;
    };

    try {
        const auto model = gemma3::load_model_config(model_path);
        std::vector<std::string> problems;
        auto training_json = gemma3::detail::parse_config_text(
            gemma3::detail::read_config_text(training_path, "training config"), training_path, problems);
        for (auto& [name, option] : given) {
            if (option->count() == 0) continue;
            if (numbers.count(name)) training_json[name] = numbers[name];
            if (integers.count(name)) training_json[name] = integers[name];
            if (strings.count(name)) training_json[name] = strings[name];
        }
        const bool overridden = std::any_of(given.begin(), given.end(), [](auto& g) { return g.second->count() > 0; });
        const auto training = gemma3::detail::parse_training_config(
            training_json, training_path + (overridden ? " (with command-line overrides)" : ""), std::move(problems));
        if (const auto problem = device_problem(training.device)) return fail(*problem, 2);
        options.data_dir = data_dir;
        options.out_dir = out_dir;
        options.resume = resume || !resume_from.empty();
        options.resume_from = resume_from;
        if (comm->rank() == 0) options.checkpoint_files = checkpoint_tokenizer_files(model, tokenizer);
        // <out>/loss.svg, redrawn after each checkpoint.
        options.after_checkpoint = [out = options.out_dir, title = "training loss, " + model_path](const gemma3::LossCurves& c) {
            gemma3::write_file_atomically(out / "loss.svg", [&](std::ostream& svg) { svg << gemma3::loss_curve_svg(c, title); });
        };
        bool found = false;
        gemma3::TrainSummary summary;
#ifdef GEMMA3_HAVE_CUDA
        if (training.device == "cuda") found = gemma3::programs::train_on_cuda(model, training, options, summary);
        else
#endif
            found = train_matching(model, training, options, summary);
        if (!found) return fail(gemma3::programs::no_compiled_config_message(model_path, "gemma3-train"), 2);
        if (summary.stopped_by_signal) return 128 + summary.stopped_by_signal;
    } catch (const std::exception& e) {
        return fail(e.what(), 1);
    }
    return 0;
}
