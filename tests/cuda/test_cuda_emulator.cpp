// Behaviour of the CPU emulator that has no device counterpart to compare with: divergence and
// deadlock detection, launch and memory misuse, shared-memory isolation, determinism, stack
// overflow reporting, the emulated cuBLASLt's argument checks. Built only for the emulator.
#include "cuda_test.hpp"

#include <gemma3/cuda/blas_lt.hpp>
#include <gemma3/io/safetensors.hpp>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <string>
#include <vector>

namespace cu = ::gemma3::cuda;
namespace emulator = ::gemma3::cuda::emulator;
using cu::test::contains;

// Kernels with external linkage, so that the executable exports their names (ENABLE_EXPORTS) and
// fault messages can name them.
namespace emulator_tests {

// --- Kernels that break the rules -----------------------------------------------------------------
__global__ void exit_before_barrier(int* out) {
    if (threadIdx.x >= 8) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void two_different_barriers(int* out) {
    if (threadIdx.x % 2 == 0) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

__global__ void syncwarp_against_barrier(int* out) {
    if (threadIdx.x < 16) {
        __syncwarp();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

__global__ void shuffle_from_exited_lane(int* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_sync(0xFFFF'FFFFu, static_cast<int>(threadIdx.x), 0);
}

__global__ void shuffle_outside_mask(int* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_down_sync(0x0000'FFFFu, static_cast<int>(threadIdx.x), 8);
}

__global__ void mask_without_caller(int* out) {
    out[threadIdx.x] = __shfl_sync(0x0000'0001u, 1, 0);
}

__global__ void full_mask_in_partial_warp(int* out) {
    out[threadIdx.x] = __any_sync(0xFFFF'FFFFu, 1);
}

__global__ void mismatched_warp_intrinsics(int* out) {
    if (threadIdx.x % 2 == 0) {
        out[threadIdx.x] = static_cast<int>(__ballot_sync(0xFFFF'FFFFu, 1));
    } else {
        out[threadIdx.x] = __any_sync(0xFFFF'FFFFu, 1);
    }
}

__global__ void trapping_kernel(int* out) {
    if (threadIdx.x == 3) __trap();
    out[threadIdx.x] = 1;
}

__global__ void fill_kernel(int* out, int value) { out[blockIdx.x * blockDim.x + threadIdx.x] = value; }
__global__ void touch_kernel(int* out) { out[0] = 1; }

// --- Kernels for the model's guarantees -------------------------------------------------------------
// Each block fills its static shared array with its own index and, across many barriers, counts
// entries that changed: a block seeing another block's writes would count them.
__global__ void shared_isolation(int* foreign_values) {
    __shared__ int owner[128];
    for (int round = 0; round < 20; ++round) {
        owner[threadIdx.x] = static_cast<int>(blockIdx.x);
        __syncthreads();
        for (int j = 0; j < 128; ++j)
            if (owner[j] != static_cast<int>(blockIdx.x)) atomicAdd(foreign_values, 1);
        __syncthreads();
    }
}

__global__ void read_dynamic_shared(unsigned* out) {
    const unsigned* shared = cu::dynamic_shared<unsigned>();
    out[threadIdx.x] = shared[threadIdx.x];
}

__global__ void float_atomic_sum(const float* x, int n, float* total) {
    for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += static_cast<int>(gridDim.x * blockDim.x))
        atomicAdd(total, x[i]);
}

// Recursion that needs far more stack than a fiber has: 1 KiB per level. The result goes through
// the volatile frame after the call, so the compiler cannot turn the recursion into a loop.
[[gnu::noinline]] __device__ int deep_recursion(int depth) {
    volatile char frame[1024];
    frame[0] = static_cast<char>(depth);
    if (depth == 0) return frame[0];
    frame[1] = static_cast<char>(deep_recursion(depth - 1));
    return frame[0] + frame[1];
}

__global__ void stack_hungry(int depth, int* out) { out[threadIdx.x] = deep_recursion(depth); }

// --- Kernels for the access checker (emulator/checker.hpp) ---------------------------------------
// Three deliberately broken kernels, which the checker must report, and correct ones, which it must
// not. Emulator-only: the broken ones are never run on a device.

// BROKEN ON PURPOSE: a tree reduction without the __syncthreads() inside its loop, so a thread reads
// partial[tid + stride] before (or after) its owner updated it: a shared-memory race.
// block_sums[b] = sum of x[b * kThreads, (b + 1) * kThreads) when it happens to work.
template <int kThreads>
__global__ void racy_block_sum(const float* __restrict__ x, float* __restrict__ block_sums) {
    __shared__ float partial[kThreads];
    const int tid = static_cast<int>(threadIdx.x);
    partial[tid] = x[blockIdx.x * kThreads + tid];
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
        if (tid < stride) partial[tid] += partial[tid + stride];
        // missing: __syncthreads();
    }
    if (tid == 0) block_sums[blockIdx.x] = partial[0];
}

// The correct reduction, for comparison.
template <int kThreads>
__global__ void block_sum(const float* __restrict__ x, float* __restrict__ block_sums) {
    __shared__ float partial[kThreads];
    const int tid = static_cast<int>(threadIdx.x);
    partial[tid] = x[blockIdx.x * kThreads + tid];
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
        if (tid < stride) partial[tid] += partial[tid + stride];
        __syncthreads();
    }
    if (tid == 0) block_sums[blockIdx.x] = partial[0];
}

// BROKEN ON PURPOSE: out[i] = x[i - 1] within a block through dynamic shared memory (blockDim.x
// floats) without a __syncthreads() between the writes and the reads: thread t reads what thread
// t - 1 wrote in the same barrier interval.
__global__ void racy_shift(const float* __restrict__ x, float* __restrict__ out) {
    float* values = cu::dynamic_shared<float>();
    const int tid = static_cast<int>(threadIdx.x);
    const int i = static_cast<int>(blockIdx.x * blockDim.x) + tid;
    values[tid] = x[i];
    // missing: __syncthreads();
    if (tid > 0) out[i] = values[tid - 1];
}

// BROKEN ON PURPOSE: out[0] = the sum of a 64-float shared array of which only the first `written`
// entries were stored: the rest is uninitialised shared memory. One block of 64 threads.
__global__ void sum_with_unwritten_shared(int written, float* __restrict__ out) {
    __shared__ float values[64];
    const int tid = static_cast<int>(threadIdx.x);
    if (tid < written) values[tid] = static_cast<float>(tid);
    __syncthreads();
    if (tid == 0) {
        float sum = 0.0f;
        for (int j = 0; j < 64; ++j) sum += values[j];
        out[0] = sum;
    }
}

// Correct: neighbours in a warp swap values through static shared memory, ordered by __syncwarp()
// (no block barrier needed), then the slots are reused for a second swap after another
// __syncwarp(). out[i] = x[i ^ 1] + (x[i ^ 3] + x[i ^ 2]); blocks of 64 threads.
__global__ void warp_swap(const float* __restrict__ x, float* __restrict__ out) {
    __shared__ float slots[64];
    const int tid = static_cast<int>(threadIdx.x);
    const int i = static_cast<int>(blockIdx.x * blockDim.x) + tid;
    slots[tid] = x[i];
    __syncwarp();
    const float first = slots[tid ^ 1];
    __syncwarp();
    slots[tid] = x[i ^ 1] + x[i];  // overwrites what a neighbour read: fine after the __syncwarp()
    __syncwarp();
    out[i] = first + slots[tid ^ 2];
}

// Results that depend on the schedule, with no shared memory involved (so no checker finding):
// the thread of each block that stores last, and the block that claims the slot first.
__global__ void last_writer(int* out) { out[blockIdx.x] = static_cast<int>(threadIdx.x); }
__global__ void first_block(int* slot) {
    if (threadIdx.x == 0) atomicCAS(slot, -1, static_cast<int>(blockIdx.x));
}

template <class Kernel>
std::string launch_failure(Kernel kernel, dim3 grid, dim3 block, std::size_t shared_bytes = 0) {
    cu::DeviceBuffer<int> out(static_cast<std::size_t>(grid.x) * grid.y * grid.z * block.x * block.y * block.z);
    cu::Stream stream;
    return cu::test::thrown_message<cu::CudaError>([&] { cu::launch(kernel, grid, block, shared_bytes, stream, out.data()); });
}

}  // namespace emulator_tests

using namespace emulator_tests;

GEMMA3_CUDA_TEST_CASE("a __syncthreads that some threads skipped by returning is reported, not a hang") {
    const std::string message = launch_failure(exit_before_barrier, 2, 64);
    CHECK(contains(message, "cudaErrorLaunchFailure"));
    CHECK(contains(message, "divergent __syncthreads()"));
    CHECK(contains(message, "test_cuda_emulator.cpp:"));
    CHECK(contains(message, "8 of 64 threads wait at the barrier, but 56 have already exited"));
    CHECK(contains(message, "exit_before_barrier"));
}

GEMMA3_CUDA_TEST_CASE("threads waiting at different __syncthreads calls are reported") {
    const std::string message = launch_failure(two_different_barriers, 1, 32);
    CHECK(contains(message, "threads wait at different barriers"));
}

GEMMA3_CUDA_TEST_CASE("a warp collective stuck behind a block barrier is reported as a deadlock") {
    const std::string message = launch_failure(syncwarp_against_barrier, 1, 32);
    CHECK(contains(message, "deadlock"));
    CHECK(contains(message, "16 threads wait at __syncthreads()"));
    CHECK(contains(message, "__syncwarp with mask 0xffffffff"));
}

GEMMA3_CUDA_TEST_CASE("misused warp intrinsics are reported with the lane and the mask") {
    CHECK(contains(launch_failure(shuffle_from_exited_lane, 1, 32), "names lane 16, which has already exited"));
    CHECK(contains(launch_failure(shuffle_outside_mask, 1, 32), "reads lane 16, which is not named in the mask 0xffff"));
    CHECK(contains(launch_failure(mask_without_caller, 1, 32), "does not name the calling lane 1"));
    CHECK(contains(launch_failure(full_mask_in_partial_warp, 1, 48), "lanes at or above 16, which do not exist"));
    CHECK(contains(launch_failure(mismatched_warp_intrinsics, 1, 32), "called different warp intrinsics"));
    CHECK(contains(launch_failure(trapping_kernel, 1, 32), "__trap"));
}

GEMMA3_CUDA_TEST_CASE("the emulator recovers after a faulting launch") {
    CHECK_FALSE(launch_failure(exit_before_barrier, 4, 64).empty());
    cu::DeviceBuffer<int> out(4 * 64);
    cu::Stream stream;
    cu::launch(fill_kernel, 4, 64, 0, stream, out.data(), 7);
    CHECK(out.download() == std::vector<int>(4 * 64, 7));
}

GEMMA3_CUDA_TEST_CASE("launch configurations beyond the sm_80 limits are rejected with the reason") {
    CHECK(contains(launch_failure(touch_kernel, 1, dim3(1, 1, 65)), "block dimension z = 65 is outside [1, 64]"));
    CHECK(contains(launch_failure(touch_kernel, 1, dim3(64, 32, 1)), "a block of 2048 threads; at most 1024"));
    CHECK(contains(launch_failure(touch_kernel, dim3(1, 65536, 1), 1), "grid dimension y = 65536"));
    CHECK(contains(launch_failure(touch_kernel, dim3(1, 1, 0), 1), "grid dimension z = 0"));
    CHECK(contains(launch_failure(touch_kernel, 1, 32, 48 * 1024 + 1), "49153 bytes of dynamic shared memory; the kernel allows 49152"));
    const std::string too_much = cu::test::thrown_message<cu::CudaError>([] { cu::set_max_dynamic_shared_bytes(touch_kernel, 200'000); });
    CHECK(contains(too_much, "cudaFuncSetAttribute("));
    CHECK(contains(too_much, "at most 166912"));
}

GEMMA3_CUDA_TEST_CASE("copies outside device allocations and frees of unknown pointers are reported") {
    cu::DeviceBuffer<int> buffer(10);
    std::vector<int> host(11);
    const std::string past_end = cu::test::thrown_message<cu::CudaError>([&] { cu::copy_to_host(host.data(), buffer.data(), 11); });
    CHECK(contains(past_end, "is not inside one live device allocation"));
    const std::string wrong_kind =
        cu::test::thrown_message<cu::CudaError>([&] { cu::copy_to_device(buffer.data(), buffer.data() + 5, 5); });
    CHECK(contains(wrong_kind, "is device memory, but the copy kind says host memory"));
    const std::string null_source = cu::test::thrown_message<cu::CudaError>([&] { cu::copy_to_device<int>(buffer.data(), nullptr, 2); });
    CHECK(contains(null_source, "the source pointer is null"));
    const std::string unknown = cu::test::thrown_message<cu::CudaError>([&] { GEMMA3_CUDA_CHECK(cudaFree(host.data())); });
    CHECK(contains(unknown, "cudaFree(host.data())"));
    CHECK(contains(unknown, "not the start of a live device allocation"));
}

GEMMA3_CUDA_TEST_CASE("fresh device memory and dynamic shared memory are filled with NaN bytes, not zeros") {
    const emulator::ScopedSettings restore;
    emulator::set_access_checks(false);  // the kernel reads unwritten shared memory on purpose
    const cu::DeviceBuffer<unsigned> fresh(64);
    CHECK(fresh.download() == std::vector<unsigned>(64, 0xFFFF'FFFFu));
    cu::DeviceBuffer<unsigned> out(32);
    cu::Stream stream;
    cu::launch(read_dynamic_shared, 1, 32, 32 * sizeof(unsigned), stream, out.data());
    CHECK(out.download() == std::vector<unsigned>(32, 0xFFFF'FFFFu));
}

GEMMA3_CUDA_TEST_CASE("static shared memory of a block is not visible to blocks running at the same time") {
    const emulator::ScopedSettings restore;
    emulator::set_worker_threads(2);
    cu::DeviceBuffer<int> foreign(1);
    foreign.fill_bytes(0);
    cu::Stream stream;
    cu::launch(shared_isolation, 64, 128, 0, stream, foreign.data());
    CHECK(foreign.download()[0] == 0);
}

GEMMA3_CUDA_TEST_CASE("sequential mode runs blocks and threads in order, so float atomics are reproducible") {
    const emulator::ScopedSettings restore;
    emulator::set_worker_threads(1);
    emulator::set_shuffle_seed(std::nullopt);
    const int n = 10'000, blocks = 7, threads = 64;
    const std::vector<float> x = cu::test::random_floats(n, -1.0f, 1.0f, 99u);
    const auto device_x = cu::DeviceBuffer<float>::from_host(x);
    cu::DeviceBuffer<float> total(1);
    cu::Stream stream;
    // The documented order: block 0..blocks-1; within a block thread 0 first, each running its
    // whole grid-stride loop (there is no barrier to interleave the threads).
    float expected = 0.0f;
    for (int b = 0; b < blocks; ++b)
        for (int t = 0; t < threads; ++t)
            for (int i = b * threads + t; i < n; i += blocks * threads) expected += x[i];
    for (int run = 0; run < 2; ++run) {
        total.fill_bytes(0);
        cu::launch(float_atomic_sum, blocks, threads, 0, stream, device_x.data(), n, total.data());
        CHECK(std::bit_cast<std::uint32_t>(total.download()[0]) == std::bit_cast<std::uint32_t>(expected));
    }
}

GEMMA3_CUDA_TEST_CASE("a fiber stack overflow ends the process with a message naming the thread") {
    int pipe_ends[2];
    REQUIRE(::pipe(pipe_ends) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::dup2(pipe_ends[1], STDERR_FILENO);
        ::close(pipe_ends[0]);
        std::signal(SIGSEGV, SIG_DFL);  // doctest's crash handler would report and carry on in the child
        emulator::set_worker_threads(1);
        emulator::set_stack_bytes(64 * 1024);
        cu::DeviceBuffer<int> out(2);
        cu::Stream stream;
        cu::launch(stack_hungry, 1, 2, 0, stream, 1'000'000, out.data());
        ::_exit(0);  // not reached: the recursion needs about 1 GB of stack
    }
    ::close(pipe_ends[1]);
    std::string output;
    char buffer[512];
    for (ssize_t got; (got = ::read(pipe_ends[0], buffer, sizeof buffer)) > 0;) output.append(buffer, static_cast<std::size_t>(got));
    ::close(pipe_ends[0]);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    if (WIFSIGNALED(status)) CHECK(WTERMSIG(status) == SIGSEGV);
    CHECK(contains(output, "stack overflow in an emulated GPU thread: thread (0,0,0) of block (0,0,0)"));
    CHECK(contains(output, "64 KiB fiber stack"));
    CHECK(contains(output, "GEMMA3_CUDA_EMULATOR_STACK_KIB"));
}

GEMMA3_CUDA_TEST_CASE("intrinsics used outside a kernel are a logic error, not a crash") {
    CHECK_THROWS_AS(__syncthreads(), std::logic_error);
    CHECK_THROWS_AS(__ballot_sync(0xFFFF'FFFFu, 1), std::logic_error);
}

GEMMA3_CUDA_TEST_CASE("host-side bf16 conversion matches the safetensors conversion on ties and edges of every exponent") {
    const std::uint16_t low_halves[] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0x9E37, 0xFFFF};
    int mismatches = 0;
    for (std::uint32_t high = 0; high <= 0xFFFFu; ++high) {
        for (const std::uint16_t low : low_halves) {
            const float value = std::bit_cast<float>((high << 16) | low);
            const std::uint16_t expected = std::isnan(value) ? std::uint16_t{0x7FFF} : gemma3::float_to_bf16(value);
            if (cu::test::bf16_bits(__float2bfloat16(value)) != expected) ++mismatches;
            if (!std::isnan(value) && __bfloat162float(__float2bfloat16(value)) != gemma3::bf16_to_float(expected)) ++mismatches;
        }
    }
    CHECK(mismatches == 0);
}

GEMMA3_CUDA_TEST_CASE("the emulated cuBLASLt checks attribute sizes, leading dimensions, types and memory extents") {
    cublasLtHandle_t handle = nullptr;
    REQUIRE(cublasLtCreate(&handle) == CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulDesc_t description = nullptr;
    REQUIRE(cublasLtMatmulDescCreate(&description, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    const std::int64_t wrong_size = CUBLAS_OP_T;  // TRANSA holds an int32_t
    const std::string attribute = cu::test::thrown_message<cu::CudaError>([&] {
        GEMMA3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(description, CUBLASLT_MATMUL_DESC_TRANSA, &wrong_size, sizeof wrong_size));
    });
    CHECK(contains(attribute, "cublasLtMatmulDescSetAttribute("));
    CHECK(contains(attribute, "CUBLAS_STATUS_INVALID_VALUE"));
    CHECK(contains(attribute, "the attribute holds 4 bytes, not 8"));

    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, narrow = nullptr, bf16 = nullptr;
    REQUIRE(cublasLtMatrixLayoutCreate(&a, CUDA_R_32F, 4, 3, 4) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutCreate(&b, CUDA_R_32F, 3, 5, 3) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, 4, 5, 4) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutCreate(&narrow, CUDA_R_32F, 4, 3, 3) == CUBLAS_STATUS_SUCCESS);  // ld 3 < 4 rows
    REQUIRE(cublasLtMatrixLayoutCreate(&bf16, CUDA_R_16BF, 4, 5, 4) == CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulPreference_t preference = nullptr;
    REQUIRE(cublasLtMatmulPreferenceCreate(&preference) == CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    CHECK(cublasLtMatmulAlgoGetHeuristic(handle, description, narrow, b, c, c, preference, 1, &result, &returned) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(contains(emulator::take_error_detail(), "leading dimension 3 is smaller than its 4 rows"));
    CHECK(cublasLtMatmulAlgoGetHeuristic(handle, description, a, b, bf16, bf16, preference, 1, &result, &returned) ==
          CUBLAS_STATUS_NOT_SUPPORTED);  // fp32 inputs with a bf16 output
    CHECK(cublasLtMatmulAlgoGetHeuristic(handle, description, a, a, c, c, preference, 1, &result, &returned) ==
          CUBLAS_STATUS_INVALID_VALUE);  // op(A) 4x3 times op(B) 4x3
    CHECK(contains(emulator::take_error_detail(), "shapes do not match"));
    CHECK(cublasLtMatmulAlgoGetHeuristic(handle, description, a, b, c, c, preference, 0, &result, &returned) ==
          CUBLAS_STATUS_INVALID_VALUE);
    REQUIRE(cublasLtMatmulAlgoGetHeuristic(handle, description, a, b, c, c, preference, 1, &result, &returned) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(returned == 1);

    cu::DeviceBuffer<float> small(8), matrix_b(15), matrix_c(20);
    const float alpha = 1.0f, beta = 0.0f;
    CHECK(cublasLtMatmul(handle, description, &alpha, small.data(), a, matrix_b.data(), b, &beta, matrix_c.data(), c,
                         matrix_c.data(), c, &result.algo, nullptr, 0, nullptr) == CUBLAS_STATUS_EXECUTION_FAILED);
    CHECK(contains(emulator::take_error_detail(), "matrix A (4x3, ld 4, 1 instances 0 elements apart) reaches outside"));
    cu::DeviceBuffer<float> matrix_a(13);  // one spare element: a + 1 is aligned to 4 bytes only
    CHECK(cublasLtMatmul(handle, description, &alpha, matrix_a.data() + 1, a, matrix_b.data(), b, &beta, matrix_c.data(), c,
                         matrix_c.data(), c, &result.algo, nullptr, 0, nullptr) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(contains(emulator::take_error_detail(), "less aligned than the 256 bytes"));
    CHECK(cublasLtMatmul(handle, description, &alpha, matrix_a.data(), a, matrix_b.data(), b, &beta, matrix_c.data(), c,
                         matrix_c.data(), c, &result.algo, nullptr, 0, nullptr) == CUBLAS_STATUS_SUCCESS);

    for (cublasLtMatrixLayout_t layout : {a, b, c, narrow, bf16}) CHECK(cublasLtMatrixLayoutDestroy(layout) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulPreferenceDestroy(preference) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescDestroy(description) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtDestroy(handle) == CUBLAS_STATUS_SUCCESS);
}

// --- The access checker and the shuffled schedule (emulator/checker.hpp) ------------------------------
GEMMA3_CUDA_TEST_CASE("racecheck reports a shared-memory reduction without its __syncthreads") {
    if (!emulator::access_checker_built) {
        MESSAGE("built without the access checker (GEMMA3_CUDA_EMULATOR_CHECK off): nothing to test");
        return;
    }
    const emulator::ScopedSettings restore;
    emulator::set_access_checks(true);
    emulator::set_shuffle_seed(std::nullopt);  // the messages name the threads of the documented order
    const std::vector<float> x = cu::test::random_floats(4 * 64, -1.0f, 1.0f, 5u);
    const auto device_x = cu::DeviceBuffer<float>::from_host(x);
    cu::DeviceBuffer<float> sums(4);
    cu::Stream stream;
    const std::string message = cu::test::thrown_message<cu::CudaError>(
        [&] { cu::launch(racy_block_sum<64>, 4, 64, 0, stream, device_x.data(), sums.data()); });
    CHECK(contains(message, "cudaErrorLaunchFailure"));
    CHECK(contains(message, "racy_block_sum<64>"));
    CHECK(contains(message, "block (0,0,0)"));
    CHECK(contains(message, "shared-memory race (racecheck, write after read)"));
    CHECK(contains(message, "::partial` + "));
    CHECK(contains(message, "no __syncthreads() between them"));
    CHECK(contains(message, "written at "));

    // Read after write in dynamic shared memory: thread 1 reads what thread 0 wrote.
    cu::DeviceBuffer<float> out(64);
    const std::string shift = cu::test::thrown_message<cu::CudaError>(
        [&] { cu::launch(racy_shift, 1, 64, 64 * sizeof(float), stream, device_x.data(), out.data()); });
    CHECK(contains(shift, "racy_shift"));
    CHECK(contains(shift, "thread (1,0,0) (warp 0, lane 1): shared-memory race (racecheck, read after write)"));
    CHECK(contains(shift, "a read of 4 bytes at dynamic shared memory + 0 reads what thread (0,0,0) (warp 0, lane 0) wrote"));

    // Turned off, the same launch runs (and computes garbage, which the shuffled pass shows below).
    emulator::set_access_checks(false);
    CHECK_NOTHROW(cu::launch(racy_block_sum<64>, 4, 64, 0, stream, device_x.data(), sums.data()));
}

GEMMA3_CUDA_TEST_CASE("initcheck reports reads of shared memory that the block never wrote") {
    if (!emulator::access_checker_built) {
        MESSAGE("built without the access checker (GEMMA3_CUDA_EMULATOR_CHECK off): nothing to test");
        return;
    }
    const emulator::ScopedSettings restore;
    emulator::set_access_checks(true);
    emulator::set_shuffle_seed(std::nullopt);  // the messages name the threads of the documented order
    cu::DeviceBuffer<float> out(1);
    cu::Stream stream;
    const std::string message = cu::test::thrown_message<cu::CudaError>(
        [&] { cu::launch(sum_with_unwritten_shared, 1, 64, 0, stream, 60, out.data()); });
    CHECK(contains(message, "sum_with_unwritten_shared"));
    CHECK(contains(message, "thread (0,0,0)"));
    CHECK(contains(message, "uninitialised shared memory (initcheck): a read of 4 bytes at __shared__ `"));
    CHECK(contains(message, "::values` + 240"));  // values[60]
    // Every entry written: no finding, and the sum of 0..63.
    cu::launch(sum_with_unwritten_shared, 1, 64, 0, stream, 64, out.data());
    CHECK(out.download()[0] == 2016.0f);
    // Dynamic shared memory too: read_dynamic_shared reads what nobody wrote.
    cu::DeviceBuffer<unsigned> words(32);
    const std::string dynamic = cu::test::thrown_message<cu::CudaError>(
        [&] { cu::launch(read_dynamic_shared, 1, 32, 32 * sizeof(unsigned), stream, words.data()); });
    CHECK(contains(dynamic, "uninitialised shared memory (initcheck): a read of 4 bytes at dynamic shared memory + 0"));
}

GEMMA3_CUDA_TEST_CASE("the access checker accepts correct kernels: barriers, __syncwarp, reuse across blocks") {
    const emulator::ScopedSettings restore;
    emulator::set_access_checks(true);
    emulator::set_shuffle_seed(std::nullopt);  // the messages name the threads of the documented order
    const int blocks = 6;
    const std::vector<float> x = cu::test::random_floats(blocks * 64, -1.0f, 1.0f, 8u);
    const auto device_x = cu::DeviceBuffer<float>::from_host(x);
    cu::DeviceBuffer<float> out(blocks * 64), sums(blocks);
    cu::Stream stream;
    cu::launch(warp_swap, blocks, 64, 0, stream, device_x.data(), out.data());
    const std::vector<float> swapped = out.download();
    int wrong = 0;
    for (int i = 0; i < blocks * 64; ++i)
        if (swapped[i] != x[i ^ 1] + (x[i ^ 3] + x[i ^ 2])) ++wrong;
    CHECK(wrong == 0);
    cu::launch(block_sum<64>, blocks, 64, 0, stream, device_x.data(), sums.data());
    cu::DeviceBuffer<int> foreign(1);
    foreign.fill_bytes(0);
    cu::launch(shared_isolation, 8, 128, 0, stream, foreign.data());
    CHECK(foreign.download()[0] == 0);
}

GEMMA3_CUDA_TEST_CASE("the shuffled schedule changes the order of threads and blocks, not correct results") {
    const emulator::ScopedSettings restore;
    emulator::set_access_checks(false);  // racy_block_sum below
    emulator::set_worker_threads(1);
    cu::Stream stream;
    const int blocks = 16, threads = 64;
    cu::DeviceBuffer<int> last(blocks), slot(1);
    std::vector<int> in_order(blocks, threads - 1);
    emulator::set_shuffle_seed(std::nullopt);
    cu::launch(last_writer, blocks, threads, 0, stream, last.data());
    CHECK(last.download() == in_order);
    slot.fill_bytes(0xFF);
    cu::launch(first_block, blocks, threads, 0, stream, slot.data());
    CHECK(slot.download()[0] == 0);

    const std::vector<float> x = cu::test::random_floats(blocks * threads, -1.0f, 1.0f, 3u);
    const auto device_x = cu::DeviceBuffer<float>::from_host(x);
    cu::DeviceBuffer<float> sums(blocks);
    cu::launch(block_sum<64>, blocks, threads, 0, stream, device_x.data(), sums.data());
    const std::vector<float> correct = sums.download();
    cu::launch(racy_block_sum<64>, blocks, threads, 0, stream, device_x.data(), sums.data());
    const std::vector<float> racy_in_order = sums.download();

    bool other_last = false, other_first = false, racy_changed = false;
    for (std::uint64_t seed = 1; seed <= 4; ++seed) {
        emulator::set_shuffle_seed(seed);
        cu::launch(last_writer, blocks, threads, 0, stream, last.data());
        other_last = other_last || last.download() != in_order;
        slot.fill_bytes(0xFF);
        cu::launch(first_block, blocks, threads, 0, stream, slot.data());
        other_first = other_first || slot.download()[0] != 0;
        cu::launch(block_sum<64>, blocks, threads, 0, stream, device_x.data(), sums.data());
        CHECK(sums.download() == correct);  // a correct kernel: the same bits in any order
        cu::launch(racy_block_sum<64>, blocks, threads, 0, stream, device_x.data(), sums.data());
        racy_changed = racy_changed || sums.download() != racy_in_order;
    }
    CHECK(other_last);
    CHECK(other_first);
    CHECK(racy_changed);  // comparing the two schedules' results exposes the race
}
