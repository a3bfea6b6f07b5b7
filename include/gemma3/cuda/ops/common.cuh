// Device helpers shared by the CUDA ops (include/gemma3/cuda/ops/*.cuh): element conversions,
// vector loads and stores of bf16/fp32 runs, warp and block reductions, and launch arithmetic.
//
// Conventions of the ops:
//  - Storage is bf16 (__nv_bfloat16) for weights and for activations that feed matrix products;
//    the residual stream, its gradient and every reduction are fp32 (double where a sum runs over a
//    whole batch or parameter vector). Kernels are templated on In/Out element types and convert
//    through float.
//  - Each op header holds a kernel set and host launchers named like the CPU twin in
//    include/gemma3/ops/ (rmsnorm_forward, rmsnorm_backward, ...). Launchers validate their shapes
//    and throw std::invalid_argument naming the op and the value; the kernels themselves trust them.
//  - Blocks are whole warps (warp intrinsics name all 32 lanes), and no kernel relies on the
//    device's memory model beyond __syncthreads / __syncwarp, so the CPU emulator runs them as is.
#pragma once

#include <gemma3/cuda/runtime.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

GEMMA3_CUDA_NAMESPACE_BEGIN

using bf16 = __nv_bfloat16;

namespace kernels {

inline constexpr unsigned full_warp = 0xFFFF'FFFFu;

// --- Element conversions (bf16 -> float is exact: the bits shifted up) ------------------------------
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __uint_as_float(static_cast<unsigned>(__bfloat16_as_ushort(x)) << 16); }

template <class T>
__device__ __forceinline__ T from_float(float x) {
    if constexpr (std::is_same_v<T, float>) {
        return x;
    } else {
        static_assert(std::is_same_v<T, bf16>, "from_float: float or bf16");
        return __float2bfloat16(x);
    }
}

// --- Vector loads and stores ----------------------------------------------------------------------
// N consecutive elements moved as one (or two) wide memory operations: 2, 4, 8 or 16 bytes per
// access instead of one element per instruction. The caller guarantees alignment to the access size
// (vector_width() below picks N from the actual pointers and strides). On the device the values
// travel in the CUDA vector types and bf16 pairs are unpacked with shifts, so everything stays in
// registers (a local array reinterpreted as a wider type would be put in local memory). The
// emulator copies bytes with memcpy, which keeps the host compiler's aliasing rules intact.
namespace detail {
__device__ __forceinline__ float low_half(unsigned word) { return __uint_as_float(word << 16); }
__device__ __forceinline__ float high_half(unsigned word) { return __uint_as_float(word & 0xFFFF'0000u); }
__device__ __forceinline__ unsigned bf16_bits(float value) { return __bfloat16_as_ushort(__float2bfloat16(value)); }
__device__ __forceinline__ unsigned pack(float low, float high) { return bf16_bits(low) | (bf16_bits(high) << 16); }

// The 32-bit words holding bf16 pairs, loaded or stored as one access of 4 * W bytes.
template <int W>
__device__ __forceinline__ void load_words(const void* source, unsigned (&words)[W]) {
#if GEMMA3_CUDA_IS_EMULATED
    std::memcpy(words, source, sizeof words);
#else
    if constexpr (W == 1) {
        words[0] = *static_cast<const unsigned*>(source);
    } else if constexpr (W == 2) {
        const uint2 v = *static_cast<const uint2*>(source);
        words[0] = v.x;
        words[1] = v.y;
    } else {
        static_assert(W == 4, "load_words: 1, 2 or 4 words");
        const uint4 v = *static_cast<const uint4*>(source);
        words[0] = v.x;
        words[1] = v.y;
        words[2] = v.z;
        words[3] = v.w;
    }
#endif
}
template <int W>
__device__ __forceinline__ void store_words(void* destination, const unsigned (&words)[W]) {
#if GEMMA3_CUDA_IS_EMULATED
    std::memcpy(destination, words, sizeof words);
#else
    if constexpr (W == 1) {
        *static_cast<unsigned*>(destination) = words[0];
    } else if constexpr (W == 2) {
        *static_cast<uint2*>(destination) = make_uint2(words[0], words[1]);
    } else {
        static_assert(W == 4, "store_words: 1, 2 or 4 words");
        *static_cast<uint4*>(destination) = make_uint4(words[0], words[1], words[2], words[3]);
    }
#endif
}
}  // namespace detail

template <int N>
__device__ __forceinline__ void load(const float* source, float (&values)[N]) {
#if GEMMA3_CUDA_IS_EMULATED
    std::memcpy(values, source, sizeof values);
#else
    if constexpr (N == 1) {
        values[0] = *source;
    } else if constexpr (N == 2) {
        const float2 v = *reinterpret_cast<const float2*>(source);
        values[0] = v.x;
        values[1] = v.y;
    } else {
        static_assert(N % 4 == 0 && N <= 8, "load: 1, 2, 4 or 8 floats");
#pragma unroll
        for (int i = 0; i < N; i += 4) {
            const float4 v = *reinterpret_cast<const float4*>(source + i);
            values[i] = v.x;
            values[i + 1] = v.y;
            values[i + 2] = v.z;
            values[i + 3] = v.w;
        }
    }
#endif
}
template <int N>
__device__ __forceinline__ void store(float* destination, const float (&values)[N]) {
#if GEMMA3_CUDA_IS_EMULATED
    std::memcpy(destination, values, sizeof values);
#else
    if constexpr (N == 1) {
        *destination = values[0];
    } else if constexpr (N == 2) {
        *reinterpret_cast<float2*>(destination) = make_float2(values[0], values[1]);
    } else {
        static_assert(N % 4 == 0 && N <= 8, "store: 1, 2, 4 or 8 floats");
#pragma unroll
        for (int i = 0; i < N; i += 4)
            *reinterpret_cast<float4*>(destination + i) = make_float4(values[i], values[i + 1], values[i + 2], values[i + 3]);
    }
#endif
}
template <int N>
__device__ __forceinline__ void load(const bf16* source, float (&values)[N]) {
    if constexpr (N == 1) {
        values[0] = to_float(*source);
    } else {
        unsigned words[N / 2];
        detail::load_words<N / 2>(source, words);
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
            values[2 * i] = detail::low_half(words[i]);
            values[2 * i + 1] = detail::high_half(words[i]);
        }
    }
}
template <int N>
__device__ __forceinline__ void store(bf16* destination, const float (&values)[N]) {
    if constexpr (N == 1) {
        *destination = __float2bfloat16(values[0]);
    } else {
        unsigned words[N / 2];
#pragma unroll
        for (int i = 0; i < N / 2; ++i) words[i] = detail::pack(values[2 * i], values[2 * i + 1]);
        detail::store_words<N / 2>(destination, words);
    }
}

// --- Reductions -----------------------------------------------------------------------------------
// Butterfly reductions: every lane ends with the result, in the same order on every lane.
__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(full_warp, value, offset);
    return value;
}
__device__ __forceinline__ double warp_sum(double value) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(full_warp, value, offset);
    return value;
}
__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(full_warp, value, offset));
    return value;
}

struct WarpSum {
    template <class T>
    __device__ __forceinline__ T operator()(T value) const { return warp_sum(value); }
};
struct WarpMax {
    __device__ __forceinline__ float operator()(float value) const { return warp_max(value); }
};

// A reduction over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread:
// each warp reduces with `warp_reduce`, then the warps' results do. `identity` pads the lanes past
// the last warp. `scratch` is 32 elements of shared memory; the block may call this again right away.
template <class T, class WarpReduce>
__device__ __forceinline__ T block_reduce(T value, T* scratch, T identity, WarpReduce warp_reduce) {
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int warps = static_cast<int>(blockDim.x) / 32;
    value = warp_reduce(value);
    __syncthreads();  // an earlier call may still be reading scratch
    if (lane == 0) scratch[warp] = value;
    __syncthreads();
    const T total = lane < warps ? scratch[lane] : identity;
    return warp_reduce(total);
}

template <class T>
__device__ __forceinline__ T block_sum(T value, T* scratch) {
    return block_reduce(value, scratch, T(0), WarpSum{});
}
__device__ __forceinline__ float block_max(float value, float* scratch) {
    return block_reduce(value, scratch, -INFINITY, WarpMax{});
}

// *total += sum of values[0 .. count), in a fixed order (one block of 256 threads): deterministic.
// A template only for its linkage: a kernel defined in a header must not be a plain function.
template <int = 0>
__global__ void __launch_bounds__(256) sum_in_order_kernel(const double* __restrict__ values, int count, double* total) {
    __shared__ double scratch[32];
    double sum = 0.0;
    for (int i = static_cast<int>(threadIdx.x); i < count; i += 256) sum += values[i];
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) *total += sum;
}

}  // namespace kernels

// --- Host-side launch arithmetic ------------------------------------------------------------------
namespace ops_detail {

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Blocks for `work` items at `per_block` items each, at most `cap` (grid-stride loops cover the rest).
inline unsigned blocks_for(std::int64_t work, std::int64_t per_block, std::int64_t cap = 65535) {
    const std::int64_t blocks = ceil_div(work, per_block);
    return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

inline bool aligned_to(const void* pointer, std::size_t bytes) {
    return reinterpret_cast<std::uintptr_t>(pointer) % bytes == 0;
}

// A pointer and the size of its elements, for vector_width().
struct Operand {
    const void* pointer;
    std::size_t element_bytes;
};

// The longest run of consecutive elements (8, 4, 2 or 1) that every operand allows: each pointer
// must be aligned to the run's bytes and each `extent` (row lengths, leading dimensions, column
// offsets) divisible by the run length. Null pointers (absent optional operands) do not constrain.
inline int vector_width(std::initializer_list<Operand> operands, std::initializer_list<std::int64_t> extents) {
    for (int width = 8; width > 1; width /= 2) {
        bool ok = true;
        for (const Operand& o : operands) ok = ok && (o.pointer == nullptr || aligned_to(o.pointer, width * o.element_bytes));
        for (std::int64_t e : extents) ok = ok && e % width == 0;
        if (ok) return width;
    }
    return 1;
}

template <class T>
Operand operand(const T* pointer) {
    return {pointer, sizeof(T)};
}

// Calls f(std::integral_constant<int, W>{}) for the run length W in {8, 4, 2, 1} equal to `width`:
// turns vector_width()'s answer into a kernel template argument.
template <class F>
void with_vector_width(int width, F&& f) {
    switch (width) {
        case 8: f(std::integral_constant<int, 8>{}); break;
        case 4: f(std::integral_constant<int, 4>{}); break;
        case 2: f(std::integral_constant<int, 2>{}); break;
        default: f(std::integral_constant<int, 1>{}); break;
    }
}

[[noreturn]] inline void invalid(const std::string& op, const std::string& problem) {
    throw std::invalid_argument("gemma3::cuda::" + op + ": " + problem);
}

inline void require(bool condition, const char* op, const std::string& problem) {
    if (!condition) invalid(op, problem);
}

}  // namespace ops_detail

GEMMA3_CUDA_NAMESPACE_END
