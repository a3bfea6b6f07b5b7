// Example kernels that exercise every feature the emulator provides, built by nvcc for the device
// and by the host compiler for the emulator. They double as templates for model kernels: plain
// CUDA C++, no inline PTX, dynamic shared memory through gemma3::cuda::dynamic_shared<T>(), and
// everything inside GEMMA3_CUDA_NAMESPACE_BEGIN/END.
//
// Each kernel is defined in a header: include this file from one translation unit per backend.
#pragma once

#include <gemma3/cuda/runtime.hpp>

GEMMA3_CUDA_NAMESPACE_BEGIN
namespace examples {

__device__ __forceinline__ int thread_in_block() {
    return static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}
__device__ __forceinline__ int threads_per_block() { return static_cast<int>(blockDim.x * blockDim.y * blockDim.z); }
__device__ __forceinline__ int block_in_grid() {
    return static_cast<int>(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
}
// Linear index of the thread in the grid, and the number of threads in the grid.
__device__ __forceinline__ int global_thread() { return block_in_grid() * threads_per_block() + thread_in_block(); }
__device__ __forceinline__ int grid_threads() {
    return static_cast<int>(gridDim.x * gridDim.y * gridDim.z) * threads_per_block();
}

// block_sums[b] = sum of the x[i] that block b visits in a grid-stride loop (1-D grid and block of
// kThreads threads), by a tree reduction in static shared memory.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) block_sum_static(const float* __restrict__ x, int n, float* __restrict__ block_sums) {
    static_assert(kThreads > 0 && (kThreads & (kThreads - 1)) == 0, "a power of two");
    __shared__ float partial[kThreads];
    const int tid = static_cast<int>(threadIdx.x);
    float sum = 0.0f;
    for (int i = global_thread(); i < n; i += grid_threads()) sum += x[i];
    partial[tid] = sum;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
        if (tid < stride) partial[tid] += partial[tid + stride];
        __syncthreads();
    }
    if (tid == 0) block_sums[blockIdx.x] = partial[0];
}

// The same sums with the per-thread values in dynamic shared memory (blockDim.x floats; blockDim.x
// a multiple of 32) and the per-warp sums in static shared memory.
__global__ void block_sum_dynamic(const float* __restrict__ x, int n, float* __restrict__ block_sums) {
    float* values = dynamic_shared<float>();
    __shared__ float warp_sums[32];
    const int tid = static_cast<int>(threadIdx.x);
    float sum = 0.0f;
    for (int i = global_thread(); i < n; i += grid_threads()) sum += x[i];
    values[tid] = sum;
    __syncthreads();
    if (tid % 32 == 0) {
        float warp_sum = 0.0f;
        for (int j = 0; j < 32; ++j) warp_sum += values[tid + j];
        warp_sums[tid / 32] = warp_sum;
    }
    __syncthreads();
    if (tid == 0) {
        float total = 0.0f;
        for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) total += warp_sums[w];
        block_sums[blockIdx.x] = total;
    }
}

// Per thread i of the grid (blocks of a multiple of 32 threads, any shape):
//   xor_sums[i]     sum over i's warp by a butterfly (__shfl_xor_sync): every lane gets it
//   down_sums[w]    sum over warp w by __shfl_down_sync, written by lane 0
//   lane5[i]        x of lane 5 of i's warp (__shfl_sync), also as bf16 in lane5_bf16[i]
//   segment_scan[i] inclusive prefix sum of `counts` within i's segment of 8 lanes (__shfl_up_sync, width 8)
//   half_sums[i]    sum over i's half-warp (__shfl_xor_sync, width 16)
__global__ void warp_shuffles(const float* __restrict__ x, const int* __restrict__ counts, float* __restrict__ xor_sums,
                              float* __restrict__ down_sums, float* __restrict__ lane5, __nv_bfloat16* __restrict__ lane5_bf16,
                              int* __restrict__ segment_scan, float* __restrict__ half_sums) {
    const unsigned full = 0xFFFF'FFFFu;
    const int i = global_thread();
    const float value = x[i];

    float butterfly = value;
    for (int offset = 16; offset > 0; offset /= 2) butterfly += __shfl_xor_sync(full, butterfly, offset);
    xor_sums[i] = butterfly;

    float down = value;
    for (unsigned offset = 16; offset > 0; offset /= 2) down += __shfl_down_sync(full, down, offset);
    if (i % 32 == 0) down_sums[i / 32] = down;

    lane5[i] = __shfl_sync(full, value, 5);
    lane5_bf16[i] = __shfl_sync(full, __float2bfloat16(value), 5);

    int scan = counts[i];
    for (unsigned offset = 1; offset < 8; offset *= 2) {
        const int below = __shfl_up_sync(full, scan, offset, 8);
        if (i % 8 >= static_cast<int>(offset)) scan += below;
    }
    segment_scan[i] = scan;

    float half = value;
    for (int offset = 8; offset > 0; offset /= 2) half += __shfl_xor_sync(full, half, offset, 16);
    half_sums[i] = half;
}

// Per warp w (lane 0 writes): the ballot, any and all of values > 0 over the full warp, and the
// ballot of lanes 0..15 alone (a partial mask used by only those lanes). Per block b (thread 0
// writes): how many values > 0 (__syncthreads_count), whether all / any are.
__global__ void warp_votes(const int* __restrict__ values, unsigned* __restrict__ ballots, int* __restrict__ any_positive,
                           int* __restrict__ all_positive, unsigned* __restrict__ low_half_ballots,
                           int* __restrict__ block_counts, int* __restrict__ block_all, int* __restrict__ block_any) {
    const unsigned full = 0xFFFF'FFFFu;
    const int i = global_thread();
    const int lane = i % 32;
    const int positive = values[i] > 0 ? 1 : 0;
    const unsigned ballot = __ballot_sync(full, positive);
    const int any = __any_sync(full, positive);
    const int all = __all_sync(full, positive);
    if (lane == 0) {
        ballots[i / 32] = ballot;
        any_positive[i / 32] = any;
        all_positive[i / 32] = all;
    }
    if (lane < 16) {
        const unsigned low = __ballot_sync(0x0000'FFFFu, positive);
        if (lane == 0) low_half_ballots[i / 32] = low;
    }
    __syncwarp();
    const int count = __syncthreads_count(positive);
    const int every = __syncthreads_and(positive);
    const int some = __syncthreads_or(positive);
    if (thread_in_block() == 0) {
        block_counts[block_in_grid()] = count;
        block_all[block_in_grid()] = every;
        block_any[block_in_grid()] = some;
    }
}

// Atomics from every thread of the grid over x[0..n) and keys[0..n) (keys >= 0).
struct AtomicTotals {
    float float_total;
    int max_key;
    int min_key;
    unsigned cas_count;
    unsigned exchange_slot;
    unsigned exchanged_sum;
    unsigned long long count;
    double double_total;
};

__global__ void atomics(const float* __restrict__ x, const int* __restrict__ keys, int n, int bins, AtomicTotals* totals,
                        int* __restrict__ histogram, __nv_bfloat16* bf16_count) {
    for (int i = global_thread(); i < n; i += grid_threads()) {
        atomicAdd(&totals->float_total, x[i]);
        atomicAdd(&totals->double_total, static_cast<double>(keys[i]));
        atomicAdd(&histogram[keys[i] % bins], 1);
        atomicAdd(&totals->count, 1ull);
        atomicMax(&totals->max_key, keys[i]);
        atomicMin(&totals->min_key, keys[i]);
        // An increment built from compare-and-swap: retries until no other thread intervened.
        unsigned seen = 0u;
        unsigned expected;
        do {
            expected = seen;
            seen = atomicCAS(&totals->cas_count, expected, expected + 1u);
        } while (seen != expected);
        const unsigned previous = atomicExch(&totals->exchange_slot, static_cast<unsigned>(i) + 1u);
        atomicAdd(&totals->exchanged_sum, previous);
        if (i < 200) atomicAdd(bf16_count, __float2bfloat16(1.0f));
    }
}

// bf16 conversions of in[0..n): rounded[i] = __float2bfloat16, rounded_rn[i] = __float2bfloat16_rn,
// widened[i] = __bfloat162float(rounded[i]); pairs[j] = __floats2bfloat162_rn(in[2j], in[2j+1]).
__global__ void bf16_conversions(const float* __restrict__ in, int n, __nv_bfloat16* __restrict__ rounded,
                                 __nv_bfloat16* __restrict__ rounded_rn, float* __restrict__ widened,
                                 __nv_bfloat162* __restrict__ pairs) {
    for (int i = global_thread(); i < n; i += grid_threads()) {
        rounded[i] = __float2bfloat16(in[i]);
        rounded_rn[i] = __float2bfloat16_rn(in[i]);
        widened[i] = __bfloat162float(rounded[i]);
        if (i % 2 == 0 && i + 1 < n) pairs[i / 2] = __floats2bfloat162_rn(in[i], in[i + 1]);
    }
}

// bf16 arithmetic with the type's operators (each result rounded once to bf16).
__global__ void bf16_arithmetic(const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b, int n,
                                __nv_bfloat16* __restrict__ sum, __nv_bfloat16* __restrict__ difference,
                                __nv_bfloat16* __restrict__ product) {
    for (int i = global_thread(); i < n; i += grid_threads()) {
        sum[i] = a[i] + b[i];
        difference[i] = a[i] - b[i];
        product[i] = a[i] * b[i];
    }
}

// Twelve numbers per thread: threadIdx, blockIdx, blockDim, gridDim (x, y, z each), stored at
// 12 * (block_in_grid() * threads_per_block() + thread_in_block()).
__global__ void thread_coordinates(unsigned* out) {
    unsigned* slot = out + 12 * global_thread();
    const unsigned values[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z,
                                 blockDim.x,  blockDim.y,  blockDim.z,  gridDim.x,  gridDim.y,  gridDim.z};
    for (int j = 0; j < 12; ++j) slot[j] = values[j];
}

// out[first + i] = 1000 + i for i < count (first may be negative, first + count may pass the end:
// for testing GuardedBuffer).
__global__ void write_range(int* out, int first, int count) {
    const int i = global_thread();
    if (i < count) out[first + i] = 1000 + i;
}

}  // namespace examples
GEMMA3_CUDA_NAMESPACE_END
