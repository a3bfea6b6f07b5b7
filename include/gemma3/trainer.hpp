// The training loop of the seed (spec §8), on the CPU back end.
//
//   for e in [start, max_iters):
//     every eval_interval iterations (not at 0): evaluate, save `latest` (and `best` when the
//       validation loss improved)
//     sample a batch; loss / gradient_accumulation_steps; backward (gradients accumulate)
//     at the end of each accumulation: clip the global norm, AdamW at lr(e), zero the gradients
//   finally: evaluate and save `latest`
//
// Everything a run needs to continue exactly is in its checkpoints (checkpoint.hpp), so a run
// stopped at any iteration and resumed gives bit-identical losses. Progress goes to a live line,
// <out>/metrics.jsonl and <out>/loss.svg.
#pragma once

#include "checkpoint.hpp"
#include "config_file.hpp"
#include "data.hpp"
#include "loss_plot.hpp"
#include "model.hpp"
#include "optimizer.hpp"

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace gemma3 {

class TrainingError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
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
};

struct TrainSummary {
    std::int64_t iterations = 0;  // iterations run by this call
    double last_train_loss = 0;
    double last_eval_train = NAN, last_eval_val = NAN;
    double tokens_per_second = 0;
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

template <ModelConfig C, class T>
class Trainer {
public:
    using D = Dims<C>;

    Trainer(ModelConfigFile model_config, TrainingConfig training_config, TrainOptions options)
        : model_config_(std::move(model_config)), config_(std::move(training_config)), options_(std::move(options)),
          schedule_{config_.learning_rate, config_.min_lr, config_.warmup_steps, config_.max_iters,
                    config_.warmup_start_factor} {
        require_matches<C>(model_config_);
        check_compatible(model_config_, config_);
    }

    TrainSummary run() {
        auto& log = *options_.log;
        std::filesystem::create_directories(options_.out_dir);
        const std::int64_t batch = config_.batch_size, block = config_.block_size;
        const TokenFile train(options_.data_dir / options_.train_file, D::vocab, block + 1);
        const TokenFile val(options_.data_dir / options_.val_file, D::vocab, block + 1);

        model_ = std::make_unique<Model<C, Cpu<T>>>();
        grads_ = std::make_unique<Parameters<C, T>>();
        AdamW<T> adamw(grads_->size(), {config_.beta1, config_.beta2, config_.adam_eps, config_.weight_decay});
        BatchSampler train_sampler(train, batch, block, derived_seed(0));
        BatchSampler eval_train_sampler(train, batch, block, derived_seed(1));
        BatchSampler eval_val_sampler(val, batch, block, derived_seed(2));

        TrainerState state;
        if (options_.resume) {
            const auto from = options_.resume_from.empty() ? options_.out_dir / "latest" : options_.resume_from;
            state = load_checkpoint(from, model_->parameters, adamw, *grads_);
            train_sampler.restore(state.train_sampler);
            eval_train_sampler.restore(state.eval_train_sampler);
            eval_val_sampler.restore(state.eval_val_sampler);
            log << "resumed from " << std::filesystem::weakly_canonical(from).string() << " at iteration "
                << state.iteration << " (" << state.optimizer_steps << " optimizer steps)\n";
            truncate_metrics(state.iteration);
        } else {
            const InitScheme scheme = model_config_.init == "hf" ? InitScheme::hf : InitScheme::seed;
            model_->init(scheme, model_config_.initializer_range, config_.seed);
            std::filesystem::remove(metrics_path());
        }
        print_header(train, val);
        if (state.iteration >= config_.max_iters) {
            log << "nothing to do: the checkpoint is at iteration " << state.iteration << ", max_iters is "
                << config_.max_iters << "\n";
            return {};
        }

        const auto tokens_per_iteration = static_cast<double>(batch * block);
        const auto n = static_cast<std::size_t>(batch * block);
        std::vector<std::int32_t> x(n), y(n);
        std::ofstream metrics(metrics_path(), std::ios::app);
        TrainSummary summary;
        double seconds_per_iteration = 0;  // moving average
        auto last_print = std::chrono::steady_clock::now() - std::chrono::hours(1);
        const auto started = std::chrono::steady_clock::now();
        const std::int64_t accumulation = config_.gradient_accumulation_steps;

        const auto evaluate = [&](std::int64_t e) {
            const double train_loss = mean_loss(eval_train_sampler, x, y);
            const double val_loss = mean_loss(eval_val_sampler, x, y);
            state.last_eval_iteration = e;
            summary.last_eval_train = train_loss;
            summary.last_eval_val = val_loss;
            curves_.eval_train.push_back({e, train_loss});
            curves_.eval_val.push_back({e, val_loss});
            metrics << nlohmann::json{{"type", "eval"}, {"iter", e}, {"train_loss", train_loss}, {"val_loss", val_loss}}.dump()
                    << "\n"
                    << std::flush;
            if (options_.live_line) log << "\n";
            log << "eval at iteration " << e << ": train loss " << train_loss << ", validation loss " << val_loss;
            const bool improved = val_loss < state.best_val_loss;
            if (improved) state.best_val_loss = val_loss;
            log << (improved ? " (best so far)" : "") << "\n";
            return improved;
        };
        const auto checkpoint = [&](std::int64_t next_iteration, bool best) {
            state.iteration = next_iteration;
            state.train_sampler = train_sampler.state();
            state.eval_train_sampler = eval_train_sampler.state();
            state.eval_val_sampler = eval_val_sampler.state();
            const bool mid_accumulation = next_iteration % accumulation != 0 && next_iteration < config_.max_iters;
            const Parameters<C, T>* pending = mid_accumulation ? grads_.get() : nullptr;
            const auto dir = save_checkpoint(options_.out_dir, "latest", model_->parameters, adamw, state, model_config_,
                                             config_, pending);
            if (best) detail::replace_symlink(options_.out_dir / "best", std::filesystem::relative(dir, options_.out_dir));
            remove_unlinked_checkpoints(options_.out_dir);
            write_plot();
        };

        std::int64_t e = state.iteration;
        for (; e < config_.max_iters; ++e) {
            if (e % config_.eval_interval == 0 && e != 0 && state.last_eval_iteration != e) {
                const bool best = evaluate(e);
                checkpoint(e, best);
            }
            const auto t0 = std::chrono::steady_clock::now();
            train_sampler.next(x, y);
            const double loss = model_->forward_backward(x, y, batch, block, *grads_, 1.0 / static_cast<double>(accumulation));
            if (!std::isfinite(loss)) fail_non_finite(e, "loss", loss, model_->parameters, "weight");
            const double lr = schedule_.at(e);
            nlohmann::json record = {{"type", "train"}, {"iter", e}, {"loss", loss}, {"lr", lr}};
            if ((e + 1) % accumulation == 0 || e + 1 == config_.max_iters) {
                const double norm = clip_grad_norm(grads_->data(), grads_->size(), config_.grad_clip);
                if (!std::isfinite(norm)) fail_non_finite(e, "gradient norm", norm, *grads_, "gradient");
                adamw.step(model_->parameters.data(), grads_->data(), lr);
                grads_->set_zero();
                ++state.optimizer_steps;
                record["grad_norm"] = norm;
            }
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            seconds_per_iteration = summary.iterations == 0 ? dt : 0.9 * seconds_per_iteration + 0.1 * dt;
            summary.iterations += 1;
            summary.last_train_loss = loss;
            summary.tokens_per_second = tokens_per_iteration / seconds_per_iteration;
            record["tokens_per_s"] = summary.tokens_per_second;
            metrics << record.dump() << "\n";
            curves_.train.push_back({e, loss});

            const auto now = std::chrono::steady_clock::now();
            const bool last = e + 1 == config_.max_iters;
            const double since_print = std::chrono::duration<double>(now - last_print).count();
            if (options_.live_line ? (since_print > 0.2 || last)
                                   : ((e + 1) % config_.log_interval == 0 && since_print > 5) || last) {
                last_print = now;
                char line[200];
                std::snprintf(line, sizeof line, "iter %lld/%lld | loss %.4f | lr %.3e | %.0f tok/s | ETA %s",
                              static_cast<long long>(e + 1), static_cast<long long>(config_.max_iters), loss, lr,
                              summary.tokens_per_second,
                              detail::format_duration(seconds_per_iteration * static_cast<double>(config_.max_iters - e - 1)).c_str());
                log << (options_.live_line ? "\r\033[K" : "") << line << (options_.live_line ? "" : "\n") << std::flush;
            }
            if (options_.stop_after >= 0 && e + 1 >= options_.stop_after && !last) {
                ++e;
                break;
            }
        }
        if (options_.live_line) log << "\n";
        metrics.flush();
        bool best = false;
        if (e == config_.max_iters && state.last_eval_iteration != e) best = evaluate(e);
        checkpoint(e, best);
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        log << (e == config_.max_iters ? "finished" : "stopped") << " at iteration " << e << " after "
            << detail::format_duration(elapsed) << "; checkpoint " << (options_.out_dir / "latest").string() << "\n";
        return summary;
    }

    const Model<C, Cpu<T>>& model() const { return *model_; }

private:
    std::uint64_t derived_seed(std::uint64_t stream) const {
        return detail::splitmix64(config_.seed * 0x100000001B3ull + stream);
    }

    double mean_loss(BatchSampler& sampler, std::vector<std::int32_t>& x, std::vector<std::int32_t>& y) {
        double total = 0;
        for (std::int64_t i = 0; i < config_.eval_batches; ++i) {
            sampler.next(x, y);
            total += model_->loss(x, y, config_.batch_size, config_.block_size);
        }
        return total / static_cast<double>(config_.eval_batches);
    }

    std::filesystem::path metrics_path() const { return options_.out_dir / "metrics.jsonl"; }

    // On resume: keep only the records of iterations before the checkpoint, so the file reads as
    // one uninterrupted run. Also reloads the curves for the plot.
    void truncate_metrics(std::int64_t iteration) {
        std::ifstream in(metrics_path());
        std::string kept, line;
        while (std::getline(in, line)) {
            nlohmann::json r;
            try {
                r = nlohmann::json::parse(line);
            } catch (const nlohmann::json::exception&) {
                continue;  // a line cut short by a kill
            }
            const auto e = r.value("iter", std::int64_t{-1});
            const bool eval = r.value("type", "") == "eval";
            if (eval ? e > iteration : e >= iteration) continue;
            kept += line + "\n";
            if (eval) {
                curves_.eval_train.push_back({e, r.value("train_loss", NAN)});
                curves_.eval_val.push_back({e, r.value("val_loss", NAN)});
            } else {
                curves_.train.push_back({e, r.value("loss", NAN)});
            }
        }
        write_file_atomically(metrics_path(), [&](std::ostream& out) { out << kept; });
    }

    void write_plot() const {
        write_file_atomically(options_.out_dir / "loss.svg", [&](std::ostream& out) {
            out << loss_curve_svg(curves_, std::string(config_name<C>()) + " training loss");
        });
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
        auto& log = *options_.log;
        const auto tokens_per_update =
            static_cast<long long>(config_.batch_size) * config_.block_size * config_.gradient_accumulation_steps;
        log << "gemma3-train: " << config_name<C>() << ", " << parameter_count<C> << " parameters, CPU "
            << (std::is_same_v<T, double> ? "float64" : "float32") << "\n"
            << "data: " << train.path().string() << " (" << train.size() << " tokens), " << val.path().string() << " ("
            << val.size() << " tokens)\n"
            << "batch " << config_.batch_size << " x " << config_.block_size << " tokens, "
            << config_.gradient_accumulation_steps << " micro-batches per update: " << tokens_per_update
            << " tokens per optimizer step\n"
            << "schedule: warmup " << config_.warmup_steps << " iterations to lr " << config_.learning_rate
            << ", cosine to " << config_.min_lr << " at iteration " << config_.max_iters << "\n";
        for (const auto& w : model_config_.warnings) log << "warning: " << w << "\n";
        for (const auto& w : config_.warnings) log << "warning: " << w << "\n";
        for (const auto& w : compatibility_warnings(model_config_, config_)) log << "warning: " << w << "\n";
        if (config_.dtype != "float32" && config_.dtype != "float64") {
            log << "note: dtype \"" << config_.dtype << "\" applies to the CUDA back end; the CPU back end trains in "
                << (std::is_same_v<T, double> ? "float64" : "float32") << "\n";
        }
    }

    ModelConfigFile model_config_;
    TrainingConfig config_;
    TrainOptions options_;
    LearningRateSchedule schedule_;
    std::unique_ptr<Model<C, Cpu<T>>> model_;
    std::unique_ptr<Parameters<C, T>> grads_;
    LossCurves curves_;
};

}  // namespace gemma3
