// The CUDA trainer engine data-parallel, run by CTest under mpirun with 2 ranks: the engine's
// gradient all-reduce is served by MPI (the emulator has no NCCL, so the engine takes its host
// path: download, MPI all-reduce, upload), with rank 0's initial weights broadcast through the
// engine's host_state_changed. 2 ranks x 1 sequence per micro-batch (shared batch sampling) must
// train exactly as 1 rank x 2 sequences, up to the order of floating-point additions.
//
// Tolerances.
//  - The first optimizer step starts from identical weights, and each sequence's forward and
//    backward pass is the same computation in both runs. What differs is how the fp32 gradient
//    sums over the n = 64 tokens of the update (2 micro-batches x 2 sequences x 16) are grouped
//    (each rank's 32 plus an all-reduce, against one sum), which moves each element by at most
//    n u sum|terms| with u = 2^-23 (cuBLASLt's accumulation, kernel_test_support.hpp), i.e. the
//    norm by n u kappa relative, kappa the ratio between sum|terms| and |sum|. We allow 1e-3: kappa
//    up to 130, and still 300 times smaller than the change of about a third to a half that a
//    missing, doubled or mis-scaled all-reduce makes (measured with the all-reduce removed: 0.29).
//    The losses before that step (iterations 0 and 1) get the same bound.
//  - Later losses: once the weights have moved, a bf16 rounding of a weight may land on the other
//    side in one run, so they get the bf16 bound of test_cuda_trainer.cu.
#include "trainer_test_support.hpp"

#include <gemma3/train/distributed.hpp>

#include <filesystem>
#include <string>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;
namespace cu = ::gemma3::cuda;
using Tiny = cu::test::TrainerTiny;
using cu::test::CudaTrainer;

gemma3::MpiCommunicator& world() {
    static int argc = 0;
    static char** argv = nullptr;
    static gemma3::MpiCommunicator comm(&argc, &argv);
    return comm;
}

// A directory every rank sees: named after rank 0's process id, made afresh by rank 0.
fs::path shared_dir(const std::string& name) {
    auto& comm = world();
    std::uint64_t id = static_cast<std::uint64_t>(::getpid());
    comm.broadcast(std::span<std::uint64_t>(&id, 1), 0);
    const auto dir = fs::temp_directory_path() / ("gemma3_cuda_trainer_mpi_" GEMMA3_CUDA_BACKEND_NAME "_" + std::to_string(id)) / name;
    if (comm.rank() == 0) {
        fs::remove_all(dir);
        fs::create_directories(dir);
    }
    comm.barrier();
    return dir;
}

double relative(double a, double b) { return std::fabs(a - b) / std::fabs(b); }

}  // namespace

GEMMA3_CUDA_TEST_CASE("data-parallel CUDA trainer: 2 ranks x 1 sequence train as 1 rank x 2 sequences") {
    auto& comm = world();
    REQUIRE(comm.size() == 2);
    const auto data = shared_dir("data");
    if (comm.rank() == 0) cu::test::write_training_data(data);
    comm.barrier();
    const auto two_ranks = shared_dir("two_ranks"), one_rank = shared_dir("one_rank");

    gemma3::DataParallelOptions parallel;
    parallel.communicator = &comm;
    parallel.sampling = gemma3::BatchSampling::shared;
    const auto log = cu::test::run_trainer<CudaTrainer>(data, two_ranks, -1, false, cu::test::training_config(1), parallel);
    comm.barrier();
    if (comm.rank() != 0) {
        CHECK(log.empty());  // only rank 0 speaks
        return;
    }
    CHECK(cu::test::contains(log, "data parallel: 2 ranks (MPI)"));
    CHECK(cu::test::contains(log, "effective batch: 1 sequences x 2 micro-batches x 2 ranks = 4 sequences"));
    cu::test::run_trainer<CudaTrainer>(data, one_rank, -1, false, cu::test::training_config(2));

    const auto a = cu::test::read_metrics(two_ranks), b = cu::test::read_metrics(one_rank);
    REQUIRE(a.size() == b.size());
    REQUIRE(a.size() == 6 + 2);
    const double sum_order_tolerance = 1e-3;
    const double bf16_tolerance = 4 * cu::test::bf16_unit * std::sqrt(11.0 * Tiny::n_layers + 2);
    double worst_first = 0, worst_later = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        CAPTURE(a[i].first);
        REQUIRE(a[i].first == b[i].first);
        const bool before_first_step = a[i].first == "train 0" || a[i].first == "train 1";
        for (std::size_t j = 0; j < a[i].second.size(); ++j) {
            const double rel = relative(a[i].second[j], b[i].second[j]);
            (before_first_step ? worst_first : worst_later) = std::max(before_first_step ? worst_first : worst_later, rel);
            CHECK(rel <= (before_first_step ? sum_order_tolerance : bf16_tolerance));
        }
    }
    const auto norms_a = cu::test::read_grad_norms(two_ranks), norms_b = cu::test::read_grad_norms(one_rank);
    REQUIRE(norms_a.size() == 3);
    REQUIRE(norms_b.size() == 3);
    const double first_norm = relative(norms_a[0], norms_b[0]);
    CHECK(first_norm <= sum_order_tolerance);
    MESSAGE("2 ranks vs 1 (CUDA engine, MPI all-reduce): first gradient norm " << first_norm << ", losses before it "
                                                                                << worst_first << " (tolerance "
                                                                                << sum_order_tolerance << "), later losses "
                                                                                << worst_later << " (tolerance "
                                                                                << bf16_tolerance << ")");
    CHECK(fs::exists(two_ranks / "latest" / "model.safetensors"));
}
