// Shared by the CUDA trainer tests (test_cuda_trainer.cu, test_cuda_trainer_mpi.cu): a small token
// file, a short training run with accumulation and evaluations, and the metrics it writes.
#pragma once

#include "kernel_test_support.hpp"
#include "../trainer_run.hpp"

#include <gemma3/cuda/trainer_engine.cuh>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

GEMMA3_CUDA_NAMESPACE_BEGIN
namespace test {

using TrainerTiny = gemma3::configs::Gemma3Tiny;
using CudaTrainer = gemma3::Trainer<TrainerTiny, float, TrainerEngine<TrainerTiny>>;
using CpuTrainer = gemma3::Trainer<TrainerTiny, float>;

// train.bin and validation.bin of 3000 tokens each: a repeating pattern with noise, below 512.
inline void write_training_data(const std::filesystem::path& dir) {
    std::mt19937 rng(5);
    for (const char* file : {"train.bin", "validation.bin"}) {
        std::ofstream out(dir / file, std::ios::binary);
        for (int i = 0; i < 3000; ++i) {
            const auto id = static_cast<std::uint16_t>((i * 7 + rng() % 3) % 512);
            out.put(static_cast<char>(id & 0xFF)).put(static_cast<char>(id >> 8));
        }
    }
}

// 6 iterations of batch_size x 16 tokens, 2 micro-batches per optimizer step, evaluations at 3 and 6.
inline gemma3::TrainingConfig training_config(int batch_size = 2) {
    return gemma3::parse_training_config(
        nlohmann::json{{"learning_rate", 3e-3}, {"warmup_steps", 2}, {"min_lr", 3e-4}, {"max_iters", 6},
                       {"eval_iters", 3}, {"eval_batches", 1}, {"batch_size", batch_size}, {"block_size", 16},
                       {"gradient_accumulation_steps", 2}, {"device", "cuda"}, {"dtype", "bfloat16"},
                       {"ptdtype", "float32"}, {"seed", 3}},
        "test training config");
}

// Runs a trainer quietly and returns what it printed.
template <class Trainer>
std::string run_trainer(const std::filesystem::path& data, const std::filesystem::path& out, std::int64_t stop_after,
                        bool resume, const gemma3::TrainingConfig& config = training_config(),
                        gemma3::DataParallelOptions parallel = {}) {
    return gemma3::test::run_quietly<Trainer>(gemma3::config_file_of<TrainerTiny>(), config, data, out, stop_after, resume,
                                              parallel);
}

// One row per line of <out>/metrics.jsonl, full precision: "train <iter>" with {loss}, "eval <iter>"
// with {train loss, validation loss}.
using MetricRows = std::vector<std::pair<std::string, std::vector<double>>>;

inline MetricRows read_metrics(const std::filesystem::path& out) {
    MetricRows rows;
    std::ifstream in(out / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
        const auto r = nlohmann::json::parse(line);
        if (r["type"] == "eval") {
            rows.push_back({"eval " + r["iter"].dump(), {r["train_loss"].get<double>(), r["val_loss"].get<double>()}});
        } else {
            rows.push_back({"train " + r["iter"].dump(), {r["loss"].get<double>()}});
        }
    }
    return rows;
}

// The gradient norm (before clipping) of each optimizer step, in order.
inline std::vector<double> read_grad_norms(const std::filesystem::path& out) {
    std::vector<double> norms;
    std::ifstream in(out / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
        const auto r = nlohmann::json::parse(line);
        if (r.contains("grad_norm")) norms.push_back(r["grad_norm"].get<double>());
    }
    return norms;
}

}  // namespace test
GEMMA3_CUDA_NAMESPACE_END
