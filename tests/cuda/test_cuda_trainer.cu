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
