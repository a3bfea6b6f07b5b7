// The training loop of the seed (docs/model.md §8), on any back end with an engine (CpuEngine below;
// cuda::TrainerEngine in cuda/trainer_engine.cuh).
//
//   for e in [start, max_iters):
//     every eval_interval iterations (not at 0): evaluate, save `latest` (and `best` when the
//       validation loss improved)
//     sample a batch; loss / gradient_accumulation_steps; backward (gradients accumulate)
//     at the end of each accumulation: clip the global norm, AdamW at lr(e), zero the gradients
//   finally: evaluate and save `latest`
//
// Everything a run needs to continue exactly is in its checkpoints (checkpoint.hpp), so a run
// stopped at any iteration and resumed gives bit-identical losses. Progress goes to a live line and
// <out>/metrics.jsonl; observers in TrainOptions let a program add more (gemma3-train draws
// <out>/loss.svg from the loss curves after each checkpoint).
//
// Graceful stop (TrainOptions::stop_request, set by the handler of install_stop_on_signals()):
// once the flag is set, the loop finishes the optimizer step under way, saves `latest` and returns
// with TrainSummary::stopped_by_signal; with several ranks they agree on the step (a sum of the
// ranks' flags rides along after each optimizer step), so all stop at the same one.
//
// Data parallelism (TrainOptions::parallel, a Communicator from distributed.hpp): R processes run
// this loop in lockstep, each on its own micro-batch. Each scales its loss by 1/(its micro-batches
// per update x R), so the gradients summed over the ranks (one all-reduce per optimizer step; the
// per-pass losses, a few numbers, are all-reduced too) are the mean over the whole update; every
// rank then clips by the same global norm and takes the same AdamW step, and the weights stay
// identical everywhere. Only rank 0 prints and writes metrics, plots and checkpoints. Per pass of
// the loop:
//   - default: one iteration is one global micro-batch of R x batch_size sequences (one per
//     rank); an update covers batch_size x accumulation x R sequences.
//   - keep_global_batch: the R ranks run R consecutive iterations of batch_size sequences, so an
//     update covers batch_size x accumulation sequences as with one process, and iteration
//     numbers, the schedule, evaluations and checkpoints are those of a one-process run.
// Batch sampling: BatchSampling below. Evaluation splits its batches across the ranks (every rank
// draws the same evaluation stream and computes its share) and all-reduces the loss sums. With
// zero1, AdamW's moments are sharded: gradients are reduce-scattered, each rank updates its shard of
// the weights, and an all-gather reassembles them. Checkpoints hold everything unsharded (moments
// gathered, partial gradients summed on rank 0), so they resume on any number of ranks (with
// keep_global_batch, on one whose iteration groups fit the checkpoint's iteration).
#pragma once

#include <gemma3/io/checkpoint.hpp>
#include <gemma3/io/config_file.hpp>
#include <gemma3/train/data.hpp>
#include <gemma3/train/distributed.hpp>
#include <gemma3/core/footprint.hpp>
#include <gemma3/io/json_read.hpp>
#include <gemma3/model.hpp>
#include <gemma3/train/optimizer.hpp>

#include <nlohmann/json.hpp>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace gemma3 {

class TrainingError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// How the ranks of a data-parallel run draw their training batches.
enum class BatchSampling {
    // Each rank draws from its own stream, seeded from (seed, rank); rank 0's is the stream of a
    // one-process run. The default: no rank reads another's windows.
    per_rank,
    // Every rank runs the same stream and draws the windows of all ranks, keeping its own: R ranks
    // of batch_size sequences see exactly the windows one process of R x batch_size sequences sees,
    // which makes runs with different rank counts the same training (up to summation order).
    shared,
};

inline std::string_view batch_sampling_name(BatchSampling s) { return s == BatchSampling::shared ? "shared" : "per-rank"; }

struct DataParallelOptions {
    Communicator* communicator = nullptr;  // null: this process alone
    BatchSampling sampling = BatchSampling::per_rank;
    bool keep_global_batch = false;  // divide gradient_accumulation_steps among the ranks
    bool zero1 = false;              // shard AdamW's moments across the ranks (ZeRO stage 1)
};

// The losses of a run so far, for plotting: every iteration's micro-batch loss and the evaluations.
struct LossPoint {
    std::int64_t iteration;
    double loss;
};

struct LossCurves {
    std::vector<LossPoint> train;
    std::vector<LossPoint> eval_train;
    std::vector<LossPoint> eval_val;
};

struct TrainOptions {
    std::filesystem::path data_dir = "data";
    std::filesystem::path out_dir = "out";
    std::string train_file = "train.bin";
    std::string val_file = "validation.bin";
    bool resume = false;
    std::filesystem::path resume_from;  // a checkpoint directory; empty: <out_dir>/latest
    std::int64_t stop_after = -1;       // stop after this many iterations (with a checkpoint)
    bool live_line = ::isatty(STDOUT_FILENO) != 0;
    std::ostream* log = &std::cout;
    DataParallelOptions parallel;
    // Non-zero (a signal number): stop after the current optimizer step, with a checkpoint.
    const volatile std::sig_atomic_t* stop_request = nullptr;
    // Written into every checkpoint directory besides the model and the training state; e.g. the
    // tokenizer files of hf_tokenizer_files() so transformers loads a tokenizer from it too.
    std::vector<NamedText> checkpoint_files;
    // Optional observers. gemma3-train uses them to draw the loss curve and, in its crash-safety
    // tests, to kill the process at a chosen point.
    std::function<void(std::int64_t iteration)> before_iteration;  // every rank, before each iteration
    CheckpointPhaseObserver checkpoint_phase;                      // rank 0, each phase of a checkpoint write
    std::function<void(const LossCurves&)> after_checkpoint;       // rank 0, the curves so far, after each checkpoint
};

namespace detail {
inline volatile std::sig_atomic_t stop_signal = 0;
inline void request_stop(int signal_number) {
    if (stop_signal != 0) {  // the second signal: end now, as the default action would
        std::signal(signal_number, SIG_DFL);
        std::raise(signal_number);
        return;
    }
    stop_signal = signal_number;
    static const char message[] =
        "\nstopping after the current optimizer step, with a checkpoint (signal again to stop at once)\n";
    const auto ignored = ::write(STDERR_FILENO, message, sizeof message - 1);  // async-signal-safe, unlike iostreams
    (void)ignored;
}
}  // namespace detail

// Makes the first SIGINT or SIGTERM a request to stop (see TrainOptions::stop_request, which this
// returns the flag for) and the second one end the process at once.
inline const volatile std::sig_atomic_t* install_stop_on_signals() {
    struct sigaction action{};
    action.sa_handler = detail::request_stop;
    action.sa_flags = SA_RESTART;  // reads and writes under way continue rather than fail with EINTR
    sigemptyset(&action.sa_mask);
    for (const int signal_number : {SIGINT, SIGTERM}) ::sigaction(signal_number, &action, nullptr);
    return &detail::stop_signal;
}

struct TrainSummary {
    std::int64_t iterations = 0;  // iterations run by this call
    double last_train_loss = 0;
    double last_eval_train = NAN, last_eval_val = NAN;
    double tokens_per_second = 0;
    int stopped_by_signal = 0;  // the signal number when TrainOptions::stop_request ended the run early
};

namespace detail {
inline std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "?";
    const auto s = static_cast<long long>(seconds + 0.5);
    char text[32];
    if (s >= 3600) {
        std::snprintf(text, sizeof text, "%lldh%02lldm", s / 3600, (s / 60) % 60);
    } else {
        std::snprintf(text, sizeof text, "%lldm%02llds", s / 60, s % 60);
    }
    return text;
}

// The text of a double that reads back to the same value.
inline std::string exact(double v) {
    char text[40];
    std::snprintf(text, sizeof text, "%.17g", v);
    return text;
}
}  // namespace detail

// What the training loop needs from a back end; the loop itself does not depend on one. The CPU
// engine trains in T on the host. The CUDA engine (cuda/trainer_engine.cuh) trains on the device
// and treats these host buffers as mirrors: it copies its state into them for checkpoints and error
// reports (sync_to_host) and takes them back after the loop set them (host_state_changed).
// One line of <out>/metrics.jsonl as the trainer reads it back on resume.
struct MetricsRecord {
    bool eval = false;       // "type": "eval" (train_loss, val_loss) or "train" (loss)
    std::int64_t iter = -1;
    double loss = NAN, train_loss = NAN, val_loss = NAN;  // null (a non-finite loss) reads as NaN
};

// The record on `line`, or nullopt for a line the trainer did not write: cut short by a kill,
// edited, or not a record at all. Never throws for any line.
inline std::optional<MetricsRecord> parse_metrics_line(std::string_view line) {
    nlohmann::json r;
    try {
        r = json_read::parse<TrainingError>(line, "metrics.jsonl");
    } catch (const TrainingError&) {
        return std::nullopt;
    }
    if (!r.is_object()) return std::nullopt;
    const auto iter = r.find("iter");
    const auto type = r.find("type");
    if (iter == r.end() || type == r.end() || !type->is_string()) return std::nullopt;
    std::string why;
    const auto e = json_read::to_integer<std::int64_t>(*iter, 0, std::numeric_limits<std::int64_t>::max(), why);
    if (!e) return std::nullopt;  // a string, a fraction, negative or out of range
    MetricsRecord record;
    record.iter = *e;
    const auto loss = [&](const char* key) {
        const auto found = r.find(key);
        return found != r.end() && found->is_number() ? found->get<double>() : NAN;
    };
    const auto& kind = type->get_ref<const std::string&>();
    if (kind == "eval") {
        record.eval = true;
        record.train_loss = loss("train_loss");
        record.val_loss = loss("val_loss");
    } else if (kind == "train") {
        record.loss = loss("loss");
    } else {
        return std::nullopt;
    }
    return record;
}

// P is the CPU precision (Cpu<P>): float, double, or bf16 for mixed precision, whose weights, AdamW
// moments and gradients are float (the loop's T) and whose products read a bf16 copy of the weights,
// rounded again after every change to them (an optimizer step, a checkpoint, a broadcast).
template <ModelConfig C, class P>
class CpuEngine {
public:
    using T = typename Cpu<P>::Scalar;
    // ZeRO-1 updates weight shards in the loop, out of the engine's sight: full precisions only.
    static constexpr bool supports_zero1 = !Cpu<P>::mixed_bf16;
    // The training config's dtype this engine computes in.
    static constexpr std::string_view compute_dtype =
        Cpu<P>::mixed_bf16 ? "bfloat16" : (std::is_same_v<T, double> ? "float64" : "float32");

    std::string description() const {
        if constexpr (Cpu<P>::mixed_bf16) {
            return "CPU bfloat16 mixed precision (bf16 products, fp32 master weights; " + gemm_engine_name() + ")";
        } else {
            return std::string("CPU ") + (std::is_same_v<T, double> ? "float64" : "float32");
        }
    }
    Parameters<C, T>& parameters() { return model_->parameters; }  // the weights (host)
    Parameters<C, T>& gradients() { return *grads_; }              // the accumulated gradients (host)

    void init(InitScheme scheme, double initializer_range, std::uint64_t seed) {
        model_->init(scheme, initializer_range, seed);
    }
    // The loop set the host weights, moments and gradients (fresh start, resume, rank 0's broadcast).
    void host_state_changed(const AdamW<T>&) { model_->weights_updated(); }
    // Brings the host weights (and the moments, and the gradients) up to date.
    void sync_to_host(AdamW<T>*, bool) {}

    double forward_backward(std::span<const std::int32_t> x, std::span<const std::int32_t> y, Index batch, Index seq,
                            double loss_scale) {
        return model_->forward_backward(x, y, batch, seq, *grads_, loss_scale);
    }
    double loss(std::span<const std::int32_t> x, std::span<const std::int32_t> y, Index batch, Index seq) {
        return model_->loss(x, y, batch, seq);
    }
    void allreduce_gradients(Communicator& comm) { comm.allreduce_sum(std::span<T>(grads_->data(), grads_->size())); }

    // The global gradient norm; when finite, AdamW at lr with the gradients clipped to max_norm, which
    // leaves them zero. Returns the norm.
    double clip_and_step(AdamW<T>& adamw, double lr, double max_norm) {
        const double norm = global_norm(grads_->data(), grads_->size());
        if (std::isfinite(norm)) {
            adamw.step(model_->parameters.data(), grads_->data(), lr, clip_coefficient(norm, max_norm), /*zero_grads=*/true);
            model_->weights_updated();
        }
        return norm;
    }
    // Extra text for the progress line (the CUDA engine reports MFU and memory).
    std::string progress(double /*tokens_per_second*/, Index /*seq*/) const { return {}; }

private:
    std::unique_ptr<Model<C, Cpu<P>>> model_ = std::make_unique<Model<C, Cpu<P>>>();
    std::unique_ptr<Parameters<C, T>> grads_ = std::make_unique<Parameters<C, T>>();
};

template <ModelConfig C, class T, class Engine = CpuEngine<C, T>>
class Trainer {
public:
    using D = Dims<C>;

    Trainer(ModelConfigFile model_config, TrainingConfig training_config, TrainOptions options)
        : model_config_(std::move(model_config)), config_(std::move(training_config)), options_(std::move(options)),
          schedule_{config_.learning_rate, config_.min_lr, config_.warmup_steps, config_.max_iters,
                    config_.warmup_start_factor},
          comm_(options_.parallel.communicator ? options_.parallel.communicator : &single_process_),
          plan_(plan_data_parallel()) {
        require_matches<C>(model_config_);
        check_compatible(model_config_, config_);
        if (plan_.zero1 && !Engine::supports_zero1) {
            throw TrainingError("--zero1 is implemented for the CPU back end in float32 and float64 only; run without it");
        }
    }
    Trainer(const Trainer&) = delete;  // holds a pointer to its own single-process communicator
    Trainer& operator=(const Trainer&) = delete;

    TrainSummary run() {
        Communicator& comm = *comm_;
        const bool lead = plan_.rank == 0;
        std::ostream null_log(nullptr);
        auto& log = lead ? *options_.log : null_log;  // only rank 0 speaks
        if (lead) std::filesystem::create_directories(options_.out_dir);
        const std::int64_t batch = config_.batch_size, block = config_.block_size;
        const TokenFile train(options_.data_dir / options_.train_file, D::vocab, block + 1);
        const TokenFile val(options_.data_dir / options_.val_file, D::vocab, block + 1);

        engine_ = std::make_unique<Engine>();
        const std::size_t n = engine_->gradients().size();
        // With ZeRO-1 this rank's AdamW holds only its shard of the moments.
        const Shard shard = plan_.zero1 ? shard_of(n, plan_.rank, plan_.ranks) : Shard{0, n};
        AdamW<T> adamw(shard.count, {config_.beta1, config_.beta2, config_.adam_eps, config_.weight_decay});
        BatchSampler train_sampler(train, batch, block, train_stream_seed());
        BatchSampler eval_train_sampler(train, batch, block, derived_seed(1));
        BatchSampler eval_val_sampler(val, batch, block, derived_seed(2));

        TrainerState state;
        if (options_.resume) {
            const auto from = options_.resume_from.empty() ? options_.out_dir / "latest" : options_.resume_from;
            state = load_checkpoint_sharded(from, adamw, shard);
            restore_train_sampler(train_sampler, state, log);
            eval_train_sampler.restore(state.eval_train_sampler);
            eval_val_sampler.restore(state.eval_val_sampler);
            log << "resumed from " << std::filesystem::weakly_canonical(from).string() << " at iteration "
                << state.iteration << " (" << state.optimizer_steps << " optimizer steps)\n";
            if (state.iteration % plan_.iterations_per_pass != 0) {
                throw TrainingError("--keep-global-batch with " + std::to_string(plan_.ranks) +
                                    " ranks runs iterations in groups of " + std::to_string(plan_.ranks) +
                                    ", but the checkpoint is at iteration " + std::to_string(state.iteration) +
                                    "; resume it with a rank count that divides " + std::to_string(state.iteration));
            }
            if (lead) truncate_metrics(state.iteration);
        } else {
            const InitScheme scheme = model_config_.init == "hf" ? InitScheme::hf : InitScheme::seed;
            engine_->init(scheme, model_config_.initializer_range, config_.seed);
            if (lead) std::filesystem::remove(metrics_path());
        }
        if (plan_.ranks > 1) {
            agree_across_ranks(state, train, val);
            // Rank 0's weights are the run's weights; partial gradients saved mid-accumulation are
            // a sum over all ranks and count once, on rank 0.
            comm.broadcast(std::span<T>(engine_->parameters().data(), n), 0);
            if (!lead) engine_->gradients().set_zero();
        }
        engine_->host_state_changed(adamw);
        print_header(train, val);
        if (state.iteration >= config_.max_iters) {
            log << "nothing to do: the checkpoint is at iteration " << state.iteration << ", max_iters is "
                << config_.max_iters << "\n";
            return {};
        }

        const std::int64_t per_pass = plan_.iterations_per_pass;
        const auto tokens_per_pass = static_cast<double>(batch * block * plan_.ranks);
        const auto tokens = static_cast<std::size_t>(batch * block);
        std::vector<std::int32_t> x(tokens), y(tokens);
        std::ofstream metrics;
        if (lead) metrics.open(metrics_path(), std::ios::app);
        TrainSummary summary;
        double seconds_per_pass = 0;  // moving average
        auto last_print = std::chrono::steady_clock::now() - std::chrono::hours(1);
        const auto started = std::chrono::steady_clock::now();
        const std::int64_t accumulation = config_.gradient_accumulation_steps;
        double comm_seconds = 0;  // time in the collectives of the current pass

        const auto evaluate = [&](std::int64_t e) {
            const double train_loss = mean_loss(eval_train_sampler, x, y);
            const double val_loss = mean_loss(eval_val_sampler, x, y);
            state.last_eval_iteration = e;
            summary.last_eval_train = train_loss;
            summary.last_eval_val = val_loss;
            curves_.eval_train.push_back({e, train_loss});
            curves_.eval_val.push_back({e, val_loss});
            if (lead) {
                metrics << nlohmann::json{{"type", "eval"}, {"iter", e}, {"train_loss", train_loss}, {"val_loss", val_loss}}.dump()
                        << "\n"
                        << std::flush;
            }
            if (options_.live_line) log << "\n";
            log << "eval at iteration " << e << ": train loss " << train_loss << ", validation loss " << val_loss;
            const bool improved = val_loss < state.best_val_loss;
            if (improved) state.best_val_loss = val_loss;
            log << (improved ? " (best so far)" : "") << "\n";
            return improved;
        };
        // Collective: every rank calls it; rank 0 writes.
        const auto checkpoint = [&](std::int64_t next_iteration, bool best) {
            state.iteration = next_iteration;
            const bool mid_accumulation = next_iteration % accumulation != 0 && next_iteration < config_.max_iters;
            engine_->sync_to_host(&adamw, mid_accumulation);
            if (mid_accumulation && plan_.ranks > 1) {
                // Gather the partial sums on rank 0 (it saves them; the others continue from zero).
                comm.allreduce_sum(std::span<T>(engine_->gradients().data(), n));
                if (!lead) engine_->gradients().set_zero();
                engine_->host_state_changed(adamw);
            }
            collect_train_samplers(state, train_sampler);
            state.eval_train_sampler = eval_train_sampler.state();
            state.eval_val_sampler = eval_val_sampler.state();
            const AdamW<T> gathered = plan_.zero1 ? gather_moments(adamw, shard) : AdamW<T>();
            if (!lead) return;
            const Parameters<C, T>* pending = mid_accumulation ? &engine_->gradients() : nullptr;
            const auto dir = save_checkpoint(options_.out_dir, "latest", engine_->parameters(), plan_.zero1 ? gathered : adamw,
                                             state, model_config_, config_, pending, options_.checkpoint_files,
                                             options_.checkpoint_phase);
            if (best) detail::replace_symlink(options_.out_dir / "best", std::filesystem::relative(dir, options_.out_dir));
            remove_unlinked_checkpoints(options_.out_dir);
            if (options_.after_checkpoint) options_.after_checkpoint(curves_);
        };
        // A collective, timed (the time includes waiting for the slowest rank).
        const auto collective = [&](auto&& call) {
            const auto t = std::chrono::steady_clock::now();
            call();
            comm_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
        };

        std::vector<double> rank_losses(static_cast<std::size_t>(plan_.ranks));
        std::int64_t e = state.iteration;
        for (; e < config_.max_iters; e += per_pass) {
            if (e % config_.eval_interval == 0 && e != 0 && state.last_eval_iteration != e) {
                const bool best = evaluate(e);
                checkpoint(e, best);
            }
            if (options_.before_iteration) options_.before_iteration(e);
            const auto t0 = std::chrono::steady_clock::now();
            comm_seconds = 0;
            draw_train_batch(train_sampler, x, y);
            const double loss = engine_->forward_backward(x, y, batch, block, plan_.loss_scale);
            // Every rank learns every rank's loss, so all of them agree on what to report and on
            // whether to stop for a non-finite value.
            std::fill(rank_losses.begin(), rank_losses.end(), 0.0);
            rank_losses[static_cast<std::size_t>(plan_.rank)] = loss;
            if (plan_.ranks > 1) collective([&] { comm.allreduce_sum(std::span<double>(rank_losses)); });
            const std::vector<double> losses = iteration_losses(rank_losses);
            for (std::size_t i = 0; i < losses.size(); ++i) {
                const auto iteration = e + static_cast<std::int64_t>(i);
                if (!std::isfinite(losses[i])) {
                    engine_->sync_to_host(nullptr, false);
                    fail_non_finite(iteration, "loss", losses[i], engine_->parameters(), "weight");
                }
            }
            const std::int64_t last_of_pass = e + per_pass - 1;
            const double lr = schedule_.at(last_of_pass);
            double norm = NAN;
            if ((last_of_pass + 1) % accumulation == 0 || last_of_pass + 1 == config_.max_iters) {
                norm = optimizer_step(adamw, shard, lr, last_of_pass, collective);  // leaves the gradients zero
                ++state.optimizer_steps;
            }
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            seconds_per_pass = summary.iterations == 0 ? dt : 0.9 * seconds_per_pass + 0.1 * dt;
            summary.iterations += per_pass;
            summary.last_train_loss = losses.back();
            summary.tokens_per_second = tokens_per_pass / seconds_per_pass;
            for (std::size_t i = 0; i < losses.size(); ++i) {
                const auto iteration = e + static_cast<std::int64_t>(i);
                nlohmann::json record = {{"type", "train"}, {"iter", iteration}, {"loss", losses[i]}, {"lr", schedule_.at(iteration)}};
                if (iteration == last_of_pass) {
                    if (!std::isnan(norm)) record["grad_norm"] = norm;
                    record["tokens_per_s"] = summary.tokens_per_second;
                    if (plan_.ranks > 1) record["comm_s"] = comm_seconds, record["pass_s"] = dt;
                }
                if (lead) metrics << record.dump() << "\n";
                curves_.train.push_back({iteration, losses[i]});
            }

            const auto now = std::chrono::steady_clock::now();
            const bool last = last_of_pass + 1 == config_.max_iters;
            const double since_print = std::chrono::duration<double>(now - last_print).count();
            if (options_.live_line ? (since_print > 0.2 || last)
                                   : ((last_of_pass + 1) % config_.log_interval == 0 && since_print > 5) || last) {
                last_print = now;
                char line[200];
                const double passes_left = static_cast<double>(config_.max_iters - last_of_pass - 1) / static_cast<double>(per_pass);
                std::snprintf(line, sizeof line, "iter %lld/%lld | loss %.4f | lr %.3e | %.0f tok/s | ETA %s",
                              static_cast<long long>(last_of_pass + 1), static_cast<long long>(config_.max_iters),
                              losses.back(), lr, summary.tokens_per_second,
                              detail::format_duration(seconds_per_pass * passes_left).c_str());
                log << (options_.live_line ? "\r\033[K" : "") << line
                    << engine_->progress(summary.tokens_per_second, block) << (options_.live_line ? "" : "\n") << std::flush;
            }
            if (options_.stop_after >= 0 && last_of_pass + 1 >= options_.stop_after && !last) {
                e += per_pass;
                break;
            }
            if (options_.stop_request && !std::isnan(norm) && !last) {
                // Every rank takes the same optimizer steps, so all of them agree here.
                double signalled[2] = {*options_.stop_request != 0 ? 1.0 : 0.0,
                                       static_cast<double>(*options_.stop_request)};
                if (plan_.ranks > 1) collective([&] { comm.allreduce_sum(std::span<double>(signalled)); });
                if (signalled[0] > 0) {
                    // The signal number if one rank (or every rank, the same one) was signalled.
                    summary.stopped_by_signal = static_cast<int>(signalled[1] / signalled[0]);
                    e += per_pass;
                    break;
                }
            }
        }
        if (options_.live_line) log << "\n";
        if (lead) metrics.flush();
        bool best = false;
        if (e == config_.max_iters && state.last_eval_iteration != e) best = evaluate(e);
        checkpoint(e, best);
        // A rank that exits non-zero makes mpirun end the others: none leaves before rank 0 has
        // written the checkpoint.
        if (summary.stopped_by_signal && plan_.ranks > 1) comm.barrier();
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        log << (e == config_.max_iters ? "finished" : "stopped") << " at iteration " << e << " after "
            << detail::format_duration(elapsed) << "; checkpoint " << (options_.out_dir / "latest").string() << "\n";
        if (summary.stopped_by_signal) {
            log << "stopped by signal " << summary.stopped_by_signal << " after optimizer step " << state.optimizer_steps
                << "; run the same command with --resume to continue from iteration " << e << "\n";
        }
        return summary;
    }

private:
    // What data parallelism changes in the loop, from the rank count and the options.
    struct ParallelPlan {
        int rank = 0, ranks = 1;
        bool zero1 = false;                    // only meaningful with more than one rank
        std::int64_t iterations_per_pass = 1;  // ranks with keep_global_batch (one iteration per rank)
        std::int64_t micro_batches_per_update = 1;  // on each rank
        double loss_scale = 1;                 // 1 / (micro-batches per update x ranks)
    };

    ParallelPlan plan_data_parallel() const {
        const auto& parallel = options_.parallel;
        ParallelPlan plan;
        plan.rank = comm_->rank();
        plan.ranks = comm_->size();
        plan.zero1 = parallel.zero1 && plan.ranks > 1;
        const std::int64_t ranks = plan.ranks, accumulation = config_.gradient_accumulation_steps;
        if (parallel.keep_global_batch) {
            const auto require_multiple = [&](const char* what, std::int64_t value) {
                if (value % ranks != 0) {
                    throw TrainingError(std::string("--keep-global-batch: ") + what + " " + std::to_string(value) +
                                        " is not divisible by the " + std::to_string(ranks) +
                                        " ranks (they share each update's micro-batches and run iterations in groups of " +
                                        std::to_string(ranks) + "); use a rank count that divides it, or change " + what);
                }
            };
            require_multiple("gradient_accumulation_steps", accumulation);
            require_multiple("eval_interval", config_.eval_interval);
            require_multiple("max_iters", config_.max_iters);
            if (options_.stop_after >= 0) require_multiple("--stop-after iteration", options_.stop_after);
            plan.iterations_per_pass = ranks;
        }
        plan.micro_batches_per_update = accumulation / plan.iterations_per_pass;
        plan.loss_scale = 1.0 / (static_cast<double>(plan.micro_batches_per_update) * static_cast<double>(ranks));
        return plan;
    }

    std::uint64_t derived_seed(std::uint64_t stream) const {
        return detail::splitmix64(config_.seed * 0x100000001B3ull + stream);
    }

    // The training batch stream of this rank: the one-process stream on rank 0 and with shared
    // sampling, else one derived from (seed, rank).
    std::uint64_t train_stream_seed() const {
        if (plan_.rank == 0 || options_.parallel.sampling == BatchSampling::shared) return derived_seed(0);
        return detail::splitmix64(derived_seed(0) + static_cast<std::uint64_t>(plan_.rank));
    }

    // This rank's micro-batch. Shared sampling draws every rank's rows in rank order and keeps its
    // own (the others' windows are read and dropped: a few kilobytes, far cheaper than drawing
    // differently from a one-process run).
    void draw_train_batch(BatchSampler& sampler, std::vector<std::int32_t>& x, std::vector<std::int32_t>& y) {
        if (options_.parallel.sampling != BatchSampling::shared || plan_.ranks == 1) {
            sampler.next(x, y);
            return;
        }
        other_x_.resize(x.size());
        other_y_.resize(y.size());
        for (int r = 0; r < plan_.ranks; ++r) {
            sampler.next(r == plan_.rank ? std::span(x) : std::span(other_x_), r == plan_.rank ? std::span(y) : std::span(other_y_));
        }
    }

    // The losses of the iterations one pass ran, from each rank's micro-batch loss: one per rank
    // with keep_global_batch, else one iteration whose loss is the mean over the ranks (equal
    // micro-batches, so the mean of means is the mean over all tokens).
    std::vector<double> iteration_losses(const std::vector<double>& rank_losses) const {
        if (plan_.iterations_per_pass > 1) return rank_losses;
        double sum = 0;
        for (double l : rank_losses) sum += l;
        return {sum / static_cast<double>(plan_.ranks)};
    }

    // Gradients summed over the ranks, clipped by their global norm, then AdamW: the same update
    // on every rank. Returns the norm before clipping and leaves the gradients zero.
    template <class Collective>
    double optimizer_step(AdamW<T>& adamw, const Shard& shard, double lr, std::int64_t e, Collective&& collective) {
        Communicator& comm = *comm_;
        if (!plan_.zero1) {
            if (plan_.ranks > 1) collective([&] { engine_->allreduce_gradients(comm); });
            const double norm = engine_->clip_and_step(adamw, lr, config_.grad_clip);
            if (!std::isfinite(norm)) {
                engine_->sync_to_host(nullptr, true);
                fail_non_finite(e, "gradient norm", norm, engine_->gradients(), "gradient");
            }
            return norm;
        }
        T* params = engine_->parameters().data();
        T* grads = engine_->gradients().data();
        const std::size_t n = engine_->gradients().size();
        // ZeRO-1: this rank needs only its shard of the summed gradients and updates only its shard
        // of the weights; the all-gather gives every rank all of them.
        collective([&] { comm.reduce_scatter_sum(std::span<T>(grads, n)); });
        T* grad_shard = grads + shard.begin;
        const double shard_norm = global_norm(grad_shard, shard.count);
        double squares = shard_norm * shard_norm;
        collective([&] { comm.allreduce_sum(std::span<double>(&squares, 1)); });
        const double norm = std::sqrt(squares);
        if (!std::isfinite(norm)) {
            // Every rank is here (the norm is all-reduced): assemble the summed gradients, so the
            // report names the first offending tensor of the whole model, not of one shard.
            comm.allgather(std::span<T>(grads, n));
            fail_non_finite(e, "gradient norm", norm, engine_->gradients(), "gradient");
        }
        adamw.step(params + shard.begin, grad_shard, lr, clip_coefficient(norm, config_.grad_clip));
        collective([&] { comm.allgather(std::span<T>(params, n)); });
        engine_->gradients().set_zero();
        return norm;
    }

    // The whole AdamW state on rank 0 (an empty one elsewhere), from the ZeRO-1 shards.
    AdamW<T> gather_moments(AdamW<T>& adamw, const Shard& shard) {
        const std::size_t n = engine_->gradients().size();
        const bool lead = plan_.rank == 0;
        AdamW<T> full = lead ? AdamW<T>(n, adamw.settings()) : AdamW<T>();
        const auto shard_of_moment = [&](Buffer<T>& m) { return std::span<const T>(m.data(), shard.count); };
        comm_->gather(n, shard_of_moment(adamw.first_moment()), std::span<T>(full.first_moment()), 0);
        comm_->gather(n, shard_of_moment(adamw.second_moment()), std::span<T>(full.second_moment()), 0);
        full.set_steps(adamw.steps());
        return full;
    }

    // load_checkpoint, keeping only this rank's shard of the moments with ZeRO-1 (checkpoints
    // always hold all of them). Every rank reads the checkpoint itself.
    TrainerState load_checkpoint_sharded(const std::filesystem::path& from, AdamW<T>& adamw, const Shard& shard) {
        if (!plan_.zero1) return load_checkpoint(from, engine_->parameters(), adamw, engine_->gradients());
        AdamW<T> full(engine_->gradients().size(), adamw.settings());
        const TrainerState state = load_checkpoint(from, engine_->parameters(), full, engine_->gradients());
        const auto begin = static_cast<std::ptrdiff_t>(shard.begin), end = static_cast<std::ptrdiff_t>(shard.end());
        std::copy(full.first_moment().begin() + begin, full.first_moment().begin() + end, adamw.first_moment().begin());
        std::copy(full.second_moment().begin() + begin, full.second_moment().begin() + end, adamw.second_moment().begin());
        adamw.set_steps(full.steps());
        return state;
    }

    // Which saved stream each rank continues: with shared sampling (or on rank 0) the saved
    // train_sampler; with per-rank sampling, rank r > 0 the saved stream of rank r, or a fresh one
    // (seeded from (seed, r)) when the checkpoint was written by fewer ranks.
    void restore_train_sampler(BatchSampler& sampler, const TrainerState& state, std::ostream& log) const {
        const auto sampling = options_.parallel.sampling;
        const std::string saved_sampling = state.batch_sampling.empty() ? "per-rank" : state.batch_sampling;
        if (saved_sampling != batch_sampling_name(sampling) && plan_.ranks > 1) {
            log << "note: the checkpoint was written with " << saved_sampling << " batch sampling, this run uses "
                << batch_sampling_name(sampling) << "; rank 0 continues the saved stream\n";
        }
        if (plan_.rank == 0 || sampling == BatchSampling::shared) {
            sampler.restore(state.train_sampler);
        } else if (static_cast<std::size_t>(plan_.rank) <= state.rank_train_samplers.size()) {
            sampler.restore(state.rank_train_samplers[static_cast<std::size_t>(plan_.rank) - 1]);
        }
    }

    // Every rank's training stream into `state` (collective). Streams of ranks this run does not
    // have stay as they were loaded.
    void collect_train_samplers(TrainerState& state, const BatchSampler& sampler) const {
        state.ranks = plan_.ranks;
        if (plan_.ranks > 1 || !state.batch_sampling.empty()) state.batch_sampling = batch_sampling_name(options_.parallel.sampling);
        if (options_.parallel.sampling == BatchSampling::shared || plan_.ranks == 1) {
            state.train_sampler = sampler.state();
            return;
        }
        const auto streams = comm_->gather_text(sampler.state(), 0);
        if (plan_.rank != 0) return;
        state.train_sampler = streams[0];
        if (state.rank_train_samplers.size() < streams.size() - 1) state.rank_train_samplers.resize(streams.size() - 1);
        std::copy(streams.begin() + 1, streams.end(), state.rank_train_samplers.begin());
    }

    // Stops the run if any rank runs with other configs, options, data sizes or checkpoint than
    // rank 0 (a wrong path on one machine would otherwise train silently apart): that rank throws,
    // and its MPI_Abort (gemma3-train) ends the others.
    void agree_across_ranks(const TrainerState& state, const TokenFile& train, const TokenFile& val) {
        const auto fnv1a = [](std::string_view text) {
            std::uint64_t hash = 0xcbf29ce484222325ull;
            for (const unsigned char c : text) hash = (hash ^ c) * 0x100000001b3ull;
            return hash;
        };
        std::string streams = state.train_sampler + state.eval_train_sampler + state.eval_val_sampler;
        for (const auto& s : state.rank_train_samplers) streams += s;
        const nlohmann::json mine = {
            {"model_config", to_json(model_config_)},
            {"training_config", to_json(config_)},
            {"batch_sampling", batch_sampling_name(options_.parallel.sampling)},
            {"keep_global_batch", options_.parallel.keep_global_batch},
            {"zero1", options_.parallel.zero1},
            {"stop_after", options_.stop_after},  // decides when a rank leaves the loop
            // The resumed checkpoint: two copies at the same iteration that differ (node-local
            // disks) differ in their sampler states or evaluation record.
            {"iteration", state.iteration},
            {"optimizer_steps", state.optimizer_steps},
            {"last_eval_iteration", state.last_eval_iteration},
            {"best_val_loss", std::isfinite(state.best_val_loss) ? nlohmann::json(state.best_val_loss) : nlohmann::json()},
            {"sampler_states_hash", fnv1a(streams)},  // kilobytes of generator state: hashed
            {"train_tokens", train.size()},
            {"validation_tokens", val.size()},
        };
        const std::uint64_t hash = fnv1a(mine.dump());
        std::uint64_t lead_hash = hash;
        comm_->broadcast(std::span<std::uint64_t>(&lead_hash, 1), 0);
        if (lead_hash != hash) {
            throw TrainingError("rank " + std::to_string(plan_.rank) +
                                " runs with other settings than rank 0 (model config, training config, data-parallel "
                                "options, data token counts or resumed checkpoint differ); every rank must run the same. "
                                "This rank's: " + mine.dump());
        }
    }

    // The mean loss over eval_batches iterations' worth of batches, split across the ranks: every
    // rank draws the same stream, computes the batch_size-sequence pieces c with c % ranks == rank,
    // and the sums are all-reduced. An iteration's worth is R pieces by default (the global
    // micro-batch) and one with keep_global_batch. One process computes exactly what it always did.
    double mean_loss(BatchSampler& sampler, std::vector<std::int32_t>& x, std::vector<std::int32_t>& y) {
        const std::int64_t pieces = config_.eval_batches * (plan_.iterations_per_pass > 1 ? 1 : plan_.ranks);
        if (plan_.ranks > 1) other_x_.resize(x.size()), other_y_.resize(y.size());
        double total = 0;
        for (std::int64_t i = 0; i < pieces; ++i) {
            const bool mine = i % plan_.ranks == plan_.rank;
            sampler.next(mine ? std::span(x) : std::span(other_x_), mine ? std::span(y) : std::span(other_y_));
            if (mine) total += engine_->loss(x, y, config_.batch_size, config_.block_size);
        }
        if (plan_.ranks > 1) comm_->allreduce_sum(std::span<double>(&total, 1));
        return total / static_cast<double>(pieces);
    }

    std::filesystem::path metrics_path() const { return options_.out_dir / "metrics.jsonl"; }

    // On resume: keep only the records of iterations before the checkpoint, so the file reads as
    // one uninterrupted run. Also reloads the curves for the plot.
    void truncate_metrics(std::int64_t iteration) {
        std::ifstream in(metrics_path());
        std::string kept, line;
        while (std::getline(in, line)) {
            const auto r = parse_metrics_line(line);
            if (!r) continue;  // a line cut short by a kill, or not the trainer's
            if (r->eval ? r->iter > iteration : r->iter >= iteration) continue;
            kept += line + "\n";
            if (r->eval) {
                curves_.eval_train.push_back({r->iter, r->train_loss});
                curves_.eval_val.push_back({r->iter, r->val_loss});
            } else {
                curves_.train.push_back({r->iter, r->loss});
            }
        }
        write_file_atomically(metrics_path(), [&](std::ostream& out) { out << kept; });
    }

    [[noreturn]] void fail_non_finite(std::int64_t e, const char* what, double value, const Parameters<C, T>& tensors,
                                      const char* kind) const {
        std::string culprit = "no " + std::string(kind) + " tensor is non-finite";
        for (const auto& t : parameter_tensors<C>()) {
            const T* p = tensors.data() + t.offset;
            std::size_t bad = 0;
            while (bad < t.numel() && std::isfinite(p[bad])) ++bad;
            if (bad < t.numel()) {
                culprit = "the first non-finite " + std::string(kind) + " is " + t.name + "[" + std::to_string(bad) +
                          "] = " + detail::exact(static_cast<double>(p[bad]));
                break;
            }
        }
        throw TrainingError("non-finite " + std::string(what) + " (" + detail::exact(value) + ") at iteration " +
                            std::to_string(e) + "; " + culprit +
                            ". Training stopped before the optimizer step; no checkpoint was written from this state. "
                            "Try a lower learning_rate or grad_clip, or resume from the last checkpoint.");
    }

    void print_header(const TokenFile& train, const TokenFile& val) const {
        if (plan_.rank != 0) return;
        auto& log = *options_.log;
        log << "gemma3-train: " << config_name<C>() << ", " << parameter_count<C> << " parameters, "
            << engine_->description() << "\n"
            << "data: " << train.path().string() << " (" << train.size() << " tokens), " << val.path().string() << " ("
            << val.size() << " tokens)\n";
        if (plan_.ranks == 1) {
            const auto tokens_per_update =
                static_cast<long long>(config_.batch_size) * config_.block_size * config_.gradient_accumulation_steps;
            log << "batch " << config_.batch_size << " x " << config_.block_size << " tokens, "
                << config_.gradient_accumulation_steps << " micro-batches per update: " << tokens_per_update
                << " tokens per optimizer step\n";
            if constexpr (std::is_same_v<Engine, CpuEngine<C, T>>) {  // the CUDA engine reports its own
                log << "memory: ";
                print_memory();
            }
        } else {
            print_parallel_header();
        }
        log << "schedule: warmup " << config_.warmup_steps << " iterations to lr " << config_.learning_rate
            << ", cosine to " << config_.min_lr << " at iteration " << config_.max_iters << "\n";
        for (const auto& w : model_config_.warnings) log << "warning: " << w << "\n";
        for (const auto& w : config_.warnings) log << "warning: " << w << "\n";
        for (const auto& w : compatibility_warnings(model_config_, config_)) log << "warning: " << w << "\n";
        if (options_.parallel.zero1 && plan_.ranks == 1) log << "note: ZeRO-1 needs several ranks; one process keeps the whole optimizer\n";
        if constexpr (requires { Engine::compute_dtype; }) {
            if (config_.device == "cpu" && config_.dtype != Engine::compute_dtype) {
                log << "note: dtype \"" << config_.dtype << "\" has no CPU engine here; this run computes in "
                    << Engine::compute_dtype << " (gemma3-train picks float32, float64 or bfloat16 from the dtype)\n";
            }
        }
    }

    // "<total> MiB = weights + gradients + AdamW moments + activations", for this process: what the
    // CPU back end allocates (footprint.hpp), told before the first step so an oversized block_size
    // is seen before it runs out of memory.
    void print_memory() const {
        auto& log = *options_.log;
        const auto mib = [](double bytes) { return std::to_string(std::llround(bytes / (1024.0 * 1024.0))); };
        const double s = sizeof(T), n = static_cast<double>(ParameterLayout<C>::total);
        const double shard = plan_.zero1 ? static_cast<double>(shard_of(ParameterLayout<C>::total, 0, plan_.ranks).count) : n;
        const double activations =
            static_cast<double>(activation_elements(model_config_, config_.batch_size, config_.block_size)) * s;
        const double moments = 2 * shard * s;
        log << mib(2 * n * s + moments + activations) << " MiB = weights " << mib(n * s) << " + gradients " << mib(n * s)
            << " + AdamW moments " << mib(moments);
        if (plan_.zero1) log << " (1/" << plan_.ranks << " of " << mib(2 * n * s) << ")";
        log << " + activations " << mib(activations) << " MiB (batch " << config_.batch_size << " x "
            << config_.block_size << " tokens)\n";
    }

    // The effective batch, the memory of one rank and the bytes each rank sends per optimizer step.
    void print_parallel_header() const {
        auto& log = *options_.log;
        const long long ranks = plan_.ranks, per_rank = plan_.micro_batches_per_update;
        const long long sequences = static_cast<long long>(config_.batch_size) * per_rank * ranks;
        log << "data parallel: " << ranks << " ranks (" << comm_->name() << "), "
            << batch_sampling_name(options_.parallel.sampling) << " batch sampling"
            << (plan_.zero1 ? ", ZeRO-1 (AdamW moments sharded)" : "") << "\n"
            << "effective batch: " << config_.batch_size << " sequences x " << per_rank << " micro-batches x " << ranks
            << " ranks = " << sequences << " sequences of " << config_.block_size << " tokens = "
            << sequences * config_.block_size << " tokens per optimizer step";
        if (options_.parallel.keep_global_batch) {
            log << " (--keep-global-batch: " << config_.gradient_accumulation_steps << " accumulation steps shared by "
                << ranks << " ranks)";
        }
        log << "\n";
        log << "memory per rank: ";
        print_memory();
        const auto mib = [](double bytes) { return std::to_string(std::llround(bytes / (1024.0 * 1024.0))); };
        const double s = sizeof(T), n = static_cast<double>(ParameterLayout<C>::total);
        // A ring all-reduce sends 2 (R-1)/R of the buffer from each rank; reduce-scatter and
        // all-gather send (R-1)/R each, the same total.
        const double sent = 2.0 * static_cast<double>(ranks - 1) / static_cast<double>(ranks) * n * s;
        log << "communication per optimizer step: " << mib(sent) << " MiB sent by each rank ("
            << (plan_.zero1 ? "reduce-scatter of the gradients + all-gather of the weights" : "ring all-reduce of the gradients")
            << ")\n";
    }

    ModelConfigFile model_config_;
    TrainingConfig config_;
    TrainOptions options_;
    LearningRateSchedule schedule_;
    SingleProcessCommunicator single_process_;
    Communicator* comm_;
    ParallelPlan plan_;
    std::unique_ptr<Engine> engine_;
    std::vector<std::int32_t> other_x_, other_y_;  // windows drawn for other ranks (shared streams)
    LossCurves curves_;
};

}  // namespace gemma3
