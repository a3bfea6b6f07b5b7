// The trainer (trainer.hpp) driving the CUDA model through cuda::TrainerEngine: the same loop,
// checkpoints and resume as on the CPU, against the CPU engine on the same data.
//
// Tolerance of the CUDA losses against the CPU float losses: the CUDA path rounds each of the
// m = 11 L + 2 tensors on the logits' dependency path to bf16 (test_cuda_model.cu), which moves the
// logits by a normwise relative error of about u_b sqrt(m / 3) with u_b = 2^-8; the cross-entropy is
// 1-Lipschitz in the logits' max-norm, so the loss moves by at most about that times max|logit| (< 1
// for this freshly initialised model), and the same again per AdamW step through the weights. Over
// the 6 iterations below we allow 4 u_b sqrt(m) relative, the bound test_cuda_model uses.
#include "trainer_test_support.hpp"

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;
namespace cu = ::gemma3::cuda;
using Tiny = cu::test::TrainerTiny;
using cu::test::CpuTrainer;
using cu::test::CudaTrainer;

fs::path fresh_dir(const std::string& name) {
    const auto dir = fs::temp_directory_path() /
                     ("gemma3_cuda_trainer_" GEMMA3_CUDA_BACKEND_NAME "_" + std::to_string(::getpid())) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

fs::path make_data() {
    const auto dir = fresh_dir("data");
    cu::test::write_training_data(dir);
    return dir;
}

template <class Trainer>
std::string run(const fs::path& data, const fs::path& out, std::int64_t stop_after, bool resume) {
    return cu::test::run_trainer<Trainer>(data, out, stop_after, resume);
}

auto metrics(const fs::path& out) { return cu::test::read_metrics(out); }

}  // namespace

GEMMA3_CUDA_TEST_CASE("the trainer runs the CUDA model: losses follow the CPU trainer's within bf16 tolerance") {
    const auto data = make_data();
    const auto cuda_out = fresh_dir("cuda"), cpu_out = fresh_dir("cpu");
    const auto log = run<CudaTrainer>(data, cuda_out, -1, false);
    CHECK(cu::test::contains(log, "CUDA bf16"));
    run<CpuTrainer>(data, cpu_out, -1, false);
    const auto a = metrics(cuda_out), b = metrics(cpu_out);
    REQUIRE(a.size() == b.size());
    REQUIRE(a.size() == 6 + 2);  // 6 iterations, evaluations at 3 and 6
    const double tolerance = 4 * cu::test::bf16_unit * std::sqrt(11.0 * Tiny::n_layers + 2);
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        CAPTURE(a[i].first);
        CHECK(a[i].first == b[i].first);
        for (std::size_t j = 0; j < a[i].second.size(); ++j) {
            const double rel = std::fabs(a[i].second[j] - b[i].second[j]) / std::fabs(b[i].second[j]);
            worst = std::max(worst, rel);
            CHECK(rel <= tolerance);
        }
    }
    MESSAGE("CUDA trainer vs CPU trainer: worst relative loss difference " << worst << " (tolerance " << tolerance << ")");
    CHECK(fs::exists(cuda_out / "latest" / "model.safetensors"));
}

// The optimizer and the gradients it is fed, checked directly (the losses above move by only a few
// percent over 6 iterations, so a CUDA trainer whose optimizer did nothing would pass on losses).
//
// Gradients: the CUDA backward rounds to bf16 each of the m = 11 L + 2 tensors on the forward
// path and about as many gradient tensors on the way back, 2m roundings of relative size <= u_b;
// as in test_cuda_model, the normwise relative error of the gradient is about u_b sqrt(2m / 3) and
// we allow 4 times that. It bounds the difference of the gradient norms too.
//
// Optimizer: at the first AdamW step m_hat = g and sqrt(v_hat) = |g|, so each weight moves by
// lr (|g| / (|g| + eps)) = lr a up to the common weight decay: |a| = 1 to within 1e-3 wherever
// |g| >= 1000 eps, whatever bf16 did to g. Weights with no gradient at all (embedding rows of
// tokens absent from the batch) have a = 0 on both back ends, which is checked element by element
// (|a| < 1e-2 covers the fp32 rounding of w0 (1 - lr wd) - w1). So |dW_cuda|^2 / |dW_cpu|^2 - 1 is
// at most 2e-3 plus the share of the other weights whose CPU gradient is below 1000 eps (taken
// twice: CUDA's may be there instead), which the test measures. An optimizer that does nothing, or
// steps with another learning rate, breaks it.
GEMMA3_CUDA_TEST_CASE("the CUDA trainer's gradients and first optimizer step match the CPU trainer's") {
    const auto data = make_data();
    const auto file = gemma3::config_file_of<Tiny>();
    const auto config = cu::test::training_config();
    const double gradient_tolerance = 4 * cu::test::bf16_unit * std::sqrt(2.0 * (11.0 * Tiny::n_layers + 2) / 3.0);

    // The gradient of the first micro-batch: saved with the checkpoint of a run stopped at
    // iteration 1, in the middle of the first accumulation.
    {
        const auto cuda_out = fresh_dir("cuda_gradients"), cpu_out = fresh_dir("cpu_gradients");
        run<CudaTrainer>(data, cuda_out, 1, false);
        run<CpuTrainer>(data, cpu_out, 1, false);
        const gemma3::SafetensorsFile cuda_file(cuda_out / "latest" / "gradients.safetensors"),
            cpu_file(cpu_out / "latest" / "gradients.safetensors");
        double difference = 0, norm = 0;
        for (const auto& t : gemma3::parameter_tensors<Tiny>()) {
            const auto a = cuda_file.read_all<float>("grad." + t.name), b = cpu_file.read_all<float>("grad." + t.name);
            REQUIRE(a.size() == b.size());
            for (std::size_t i = 0; i < a.size(); ++i) {
                difference += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
                norm += static_cast<double>(b[i]) * b[i];
            }
        }
        REQUIRE(norm > 0);
        const double relative = std::sqrt(difference / norm);
        MESSAGE("first micro-batch: |g_cuda - g_cpu| / |g_cpu| = " << relative << " (tolerance " << gradient_tolerance << ")");
        CHECK(relative <= gradient_tolerance);
    }

    // The gradient norm of every optimizer step of the whole run (6 iterations, accumulation 2).
    {
        const auto cuda_out = fresh_dir("cuda_norms"), cpu_out = fresh_dir("cpu_norms");
        run<CudaTrainer>(data, cuda_out, -1, false);
        run<CpuTrainer>(data, cpu_out, -1, false);
        const auto a = cu::test::read_grad_norms(cuda_out), b = cu::test::read_grad_norms(cpu_out);
        REQUIRE(b.size() == 3);
        REQUIRE(a.size() == b.size());
        for (std::size_t s = 0; s < b.size(); ++s) {
            const double relative = std::fabs(a[s] - b[s]) / b[s];
            MESSAGE("step " << s + 1 << ": gradient norm CUDA " << a[s] << ", CPU " << b[s] << ", relative difference " << relative);
            CHECK(relative <= gradient_tolerance);
        }
    }

    // The first optimizer step: runs stopped at iteration 2, after it.
    const auto cuda_out = fresh_dir("cuda_step"), cpu_out = fresh_dir("cpu_step");
    run<CudaTrainer>(data, cuda_out, 2, false);
    run<CpuTrainer>(data, cpu_out, 2, false);
    double lr = 0;
    {
        std::ifstream in(cpu_out / "metrics.jsonl");
        for (std::string line; std::getline(in, line);) {
            const auto r = nlohmann::json::parse(line);
            if (r["type"] == "train" && r["iter"] == 1) lr = r["lr"].get<double>();
        }
    }
    REQUIRE(lr > 0);
    gemma3::Parameters<Tiny, float> initial;
    gemma3::init_parameters(initial, file.init == "hf" ? gemma3::InitScheme::hf : gemma3::InitScheme::seed,
                            file.initializer_range, config.seed);
    const gemma3::SafetensorsFile cuda_weights(cuda_out / "latest" / "model.safetensors"),
        cpu_weights(cpu_out / "latest" / "model.safetensors");
    double cuda_squared = 0, cpu_squared = 0;
    std::size_t count = 0, unsaturated = 0, zero_mismatches = 0;
    for (const auto& t : gemma3::parameter_tensors<Tiny>()) {
        const auto a = cuda_weights.read_all<float>(t.name), b = cpu_weights.read_all<float>(t.name);
        REQUIRE(a.size() == t.numel());
        REQUIRE(b.size() == t.numel());
        for (std::size_t i = 0; i < t.numel(); ++i) {
            // a = (w0 (1 - lr wd) - w1) / lr: the Adam part of the step, in units of lr.
            const double decayed = initial.data()[t.offset + i] * (1 - lr * config.weight_decay);
            const double cuda_a = (decayed - a[i]) / lr, cpu_a = (decayed - b[i]) / lr;
            cuda_squared += cuda_a * cuda_a;
            cpu_squared += cpu_a * cpu_a;
            const bool cpu_zero = std::fabs(cpu_a) < 1e-2, cuda_zero = std::fabs(cuda_a) < 1e-2;
            if (cpu_zero != cuda_zero) ++zero_mismatches;
            if (!cpu_zero && std::fabs(cpu_a) < 1 - 1e-3) ++unsaturated;
            ++count;
        }
    }
    const double unsaturated_share = static_cast<double>(unsaturated) / static_cast<double>(count);
    const double ratio = cuda_squared / cpu_squared, step_tolerance = 2e-3 + 2 * unsaturated_share;
    MESSAGE("first step (lr " << lr << "): |dW_cuda|^2 / |dW_cpu|^2 = " << ratio << " (tolerance 1 +- " << step_tolerance
                              << "; CPU weights with 0 < |g| < 1000 eps: " << unsaturated_share << ")");
    CHECK(zero_mismatches == 0);
    CHECK(std::fabs(ratio - 1) <= step_tolerance);
}

GEMMA3_CUDA_TEST_CASE("the CUDA trainer stops and resumes bit-identically, and its checkpoints resume on the CPU") {
    const auto data = make_data();
    const auto straight = fresh_dir("straight"), pieces = fresh_dir("pieces");
    run<CudaTrainer>(data, straight, -1, false);
    // Stop at 5: after the evaluation at 3, between two optimizer steps (pending gradients saved).
    run<CudaTrainer>(data, pieces, 5, false);
    const auto resumed = run<CudaTrainer>(data, pieces, -1, true);
    CHECK(cu::test::contains(resumed, "at iteration 5"));
    const auto a = metrics(straight), b = metrics(pieces);
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        CAPTURE(a[i].first);
        CHECK(a[i].first == b[i].first);
        CHECK(a[i].second == b[i].second);  // bit for bit
    }
    // A CUDA checkpoint (iteration 5) continues on the CPU back end: same format, same state.
    const auto cpu_continued = fresh_dir("cpu_continued");
    run<CudaTrainer>(data, cpu_continued, 5, false);
    const auto continued_log = run<CpuTrainer>(data, cpu_continued, -1, true);
    CHECK(cu::test::contains(continued_log, "at iteration 5"));
    const auto c = metrics(cpu_continued);
    REQUIRE(c.size() == a.size());
    const double tolerance = 4 * cu::test::bf16_unit * std::sqrt(11.0 * Tiny::n_layers + 2);
    for (std::size_t i = 0; i < c.size(); ++i) {
        for (std::size_t j = 0; j < c[i].second.size(); ++j) {
            CHECK(std::fabs(c[i].second[j] - a[i].second[j]) <= tolerance * std::fabs(a[i].second[j]));
        }
    }
}
