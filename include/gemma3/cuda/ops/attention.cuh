// Causal / sliding-window attention with grouped (or multi-) query heads on the device. The twin of
// include/gemma3/ops/attention.hpp (docs/model.md §3.4 steps 5-7, §4; backward §9.6-9.7).
//
// Layout as on the CPU: q [tokens, heads * head_dim], k and v [tokens, kv_heads * head_dim] (any
// leading dimensions, so k and v can be read inside the fused q/k/v projection), tokens batch-major.
// Query head h reads key/value head h / (heads / kv_heads); query i sees keys j with
// i - window < j <= i (window = 0: every j <= i); scores are scaled by `scale`.
//
// Two implementations:
//  - Training lengths (attention_forward / attention_backward): for each head, one cuBLASLt
//    strided-batched product over the sequences computes S = scale * Q K^T (fp32), a fused kernel
//    applies the mask and the softmax in one warp per row and writes P (bf16, kept for the
//    backward), and a second product gives O = P V. The backward is four products per head and one
//    kernel for dS = P * (dP - rowsum(dP * P)); the query heads of a group add their dK and dV in a
//    fixed order (beta = 1), so the result is deterministic. Memory is O(batch * heads * T^2).
//  - Long prompts (flash_attention_forward, inference only): a tiled kernel with an online softmax.
//    A block takes 16 query rows of one (sequence, head), walks the visible keys 32 at a time
//    through shared memory, and keeps the running max, sum and output of each row in registers.
//    Nothing of size T^2 exists, so memory is O(T); a sliding layer only visits its window. It is
//    plain CUDA C++ (no tensor-core mma, which the emulator cannot run): a later session can swap
//    in an mma.sync version, tested against the same references.
#pragma once

#include "common.cuh"

#include <gemma3/cuda/blas_lt.hpp>
#include <gemma3/ops/attention_shape.hpp>

#include <cmath>

GEMMA3_CUDA_NAMESPACE_BEGIN

using ::gemma3::AttentionShape;  // one shape for the CPU op and this twin (ops/attention_shape.hpp)

namespace kernels {

inline constexpr int softmax_threads = 256;

// probs[row, :] = softmax over the visible keys of scores[row, :] (zeros elsewhere); row = (b, h, i).
// A template only for its linkage: a kernel defined in a header must not be a plain function.
template <int = 0>
__global__ void __launch_bounds__(softmax_threads)
    masked_softmax_forward_kernel(const float* __restrict__ scores, bf16* __restrict__ probs, std::int64_t rows, int seq,
                                  int window) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * (softmax_threads / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const int i = static_cast<int>(row % seq);
    const int lo = window > 0 ? max(0, i - window + 1) : 0;
    const float* s = scores + row * seq;
    float m = -INFINITY;
    for (int j = lo + lane; j <= i; j += 32) m = fmaxf(m, s[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int j = lo + lane; j <= i; j += 32) sum += __expf(s[j] - m);
    const float inv = 1.0f / warp_sum(sum);
    bf16* p = probs + row * seq;
    for (int j = lane; j < seq; j += 32) p[j] = __float2bfloat16(j >= lo && j <= i ? __expf(s[j] - m) * inv : 0.0f);
}

// d_scores[row, :] = P * (dP - sum_j dP_j P_j) (masked entries have P = 0 and get 0).
// A template only for its linkage: a kernel defined in a header must not be a plain function.
template <int = 0>
__global__ void __launch_bounds__(softmax_threads)
    masked_softmax_backward_kernel(const bf16* __restrict__ probs, const float* __restrict__ d_probs,
                                   bf16* __restrict__ d_scores, std::int64_t rows, int seq) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * (softmax_threads / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const bf16* p = probs + row * seq;
    const float* dp = d_probs + row * seq;
    float dot = 0.0f;
    for (int j = lane; j < seq; j += 32) dot += to_float(p[j]) * dp[j];
    dot = warp_sum(dot);
    bf16* ds = d_scores + row * seq;
    for (int j = lane; j < seq; j += 32) {
        const float pj = to_float(p[j]);
        ds[j] = __float2bfloat16(pj * (dp[j] - dot));
    }
}

inline constexpr int flash_rows = 16;      // query rows per block
inline constexpr int flash_keys = 32;      // keys per tile: one per lane when scoring
inline constexpr int flash_threads = 128;  // 4 warps of 4 rows each

__device__ __forceinline__ unsigned load_pair(const bf16* source) {
    unsigned word[1];
    detail::load_words<1>(source, word);
    return word[0];
}
__device__ __forceinline__ float low_of(unsigned pair) { return detail::low_half(pair); }
__device__ __forceinline__ float high_of(unsigned pair) { return detail::high_half(pair); }

// Grid (ceil(seq / 16), heads, batch), 128 threads. q, k, v, out hold bf16 pairs: 4-byte aligned,
// even leading dimensions (checked by the launcher).
template <int kHeadDim>
__global__ void __launch_bounds__(flash_threads)
    flash_attention_forward_kernel(const bf16* __restrict__ q, std::int64_t q_ld, const bf16* __restrict__ k,
                                   std::int64_t k_ld, const bf16* __restrict__ v, std::int64_t v_ld, bf16* __restrict__ out,
                                   std::int64_t out_ld, int seq, int heads_per_kv, int window, float scale) {
    static_assert(kHeadDim % 2 == 0 && kHeadDim <= 256, "flash attention: even head_dim up to 256 (static shared memory)");
    constexpr int kPairs = kHeadDim / 2;
    constexpr int kWarps = flash_threads / 32;
    constexpr int kRowsPerWarp = flash_rows / kWarps;
    constexpr int kPairsPerLane = (kPairs + 31) / 32;
    // bf16 pairs as 32-bit words. Key rows are padded to an odd number of words, so the 32 lanes
    // (one key each) read 32 different banks when they walk a row's dimensions together.
    __shared__ unsigned q_tile[flash_rows][kPairs];
    __shared__ unsigned k_tile[flash_keys][kPairs | 1];
    __shared__ unsigned v_tile[flash_keys][kPairs];
    __shared__ float p_tile[kWarps][kRowsPerWarp][flash_keys];

    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int i0 = static_cast<int>(blockIdx.x) * flash_rows;
    const int head = static_cast<int>(blockIdx.y), kv_head = head / heads_per_kv;
    const std::int64_t first_token = static_cast<std::int64_t>(blockIdx.z) * seq;
    const bf16* qb = q + first_token * q_ld + static_cast<std::int64_t>(head) * kHeadDim;
    const bf16* kb = k + first_token * k_ld + static_cast<std::int64_t>(kv_head) * kHeadDim;
    const bf16* vb = v + first_token * v_ld + static_cast<std::int64_t>(kv_head) * kHeadDim;

    for (int index = static_cast<int>(threadIdx.x); index < flash_rows * kPairs; index += flash_threads) {
        const int r = index / kPairs, pair = index % kPairs, i = i0 + r;
        q_tile[r][pair] = i < seq ? load_pair(qb + static_cast<std::int64_t>(i) * q_ld + 2 * pair) : 0u;
    }

    float running_max[kRowsPerWarp], partial_sum[kRowsPerWarp], acc[kRowsPerWarp][kPairsPerLane][2];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        running_max[r] = -INFINITY;
        partial_sum[r] = 0.0f;  // this lane's share of the softmax denominator
#pragma unroll
        for (int pp = 0; pp < kPairsPerLane; ++pp) acc[r][pp][0] = acc[r][pp][1] = 0.0f;
    }

    const int last_row = min(i0 + flash_rows, seq) - 1;
    const int first_key = window > 0 ? max(0, i0 - window + 1) : 0;
    for (int j0 = first_key; j0 <= last_row; j0 += flash_keys) {
        __syncthreads();  // the previous tile is consumed (and the query tile stored)
        for (int index = static_cast<int>(threadIdx.x); index < flash_keys * kPairs; index += flash_threads) {
            const int key = index / kPairs, pair = index % kPairs, j = j0 + key;
            const bool inside = j <= last_row;
            k_tile[key][pair] = inside ? load_pair(kb + static_cast<std::int64_t>(j) * k_ld + 2 * pair) : 0u;
            v_tile[key][pair] = inside ? load_pair(vb + static_cast<std::int64_t>(j) * v_ld + 2 * pair) : 0u;
        }
        __syncthreads();

        // Scores of key j0 + lane against this warp's rows.
        float score[kRowsPerWarp];
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) score[r] = 0.0f;
        for (int pair = 0; pair < kPairs; ++pair) {
            const unsigned kw = k_tile[lane][pair];
            const float k_lo = low_of(kw), k_hi = high_of(kw);
#pragma unroll
            for (int r = 0; r < kRowsPerWarp; ++r) {
                const unsigned qw = q_tile[warp * kRowsPerWarp + r][pair];
                score[r] += low_of(qw) * k_lo + high_of(qw) * k_hi;
            }
        }
        const int j = j0 + lane;
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
            const int i = i0 + warp * kRowsPerWarp + r;
            const bool visible = i < seq && j <= i && (window <= 0 || j > i - window);
            const float s = visible ? score[r] * scale : -INFINITY;
            const float new_max = fmaxf(running_max[r], warp_max(s));
            const float p = visible ? __expf(s - new_max) : 0.0f;
            const float correction = running_max[r] == -INFINITY ? 0.0f : __expf(running_max[r] - new_max);
            running_max[r] = new_max;
            partial_sum[r] = partial_sum[r] * correction + p;
#pragma unroll
            for (int pp = 0; pp < kPairsPerLane; ++pp) {
                acc[r][pp][0] *= correction;
                acc[r][pp][1] *= correction;
            }
            p_tile[warp][r][lane] = p;
        }
        __syncwarp();
        for (int key = 0; key < flash_keys; ++key) {
#pragma unroll
            for (int pp = 0; pp < kPairsPerLane; ++pp) {
                const int pair = lane + 32 * pp;
                if (pair < kPairs) {
                    const unsigned vw = v_tile[key][pair];
                    const float v_lo = low_of(vw), v_hi = high_of(vw);
#pragma unroll
                    for (int r = 0; r < kRowsPerWarp; ++r) {
                        const float pk = p_tile[warp][r][key];
                        acc[r][pp][0] += pk * v_lo;
                        acc[r][pp][1] += pk * v_hi;
                    }
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        const float total = warp_sum(partial_sum[r]);
        const int i = i0 + warp * kRowsPerWarp + r;
        if (i >= seq) continue;
        const float inv = 1.0f / total;
        bf16* o = out + (first_token + i) * out_ld + static_cast<std::int64_t>(head) * kHeadDim;
#pragma unroll
        for (int pp = 0; pp < kPairsPerLane; ++pp) {
            const int pair = lane + 32 * pp;
            if (pair < kPairs) {
                const float values[2] = {acc[r][pp][0] * inv, acc[r][pp][1] * inv};
                store(o + 2 * pair, values);
            }
        }
    }
}

}  // namespace kernels

namespace ops_detail {
inline void check_attention(const AttentionShape& a, const char* op) {
    require(a.batch >= 0 && a.seq > 0 && a.heads > 0 && a.kv_heads > 0 && a.head_dim > 0 && a.window >= 0, op,
            "batch, seq, heads, kv_heads and head_dim must be positive and window non-negative");
    require(a.heads % a.kv_heads == 0, op,
            "heads (" + std::to_string(a.heads) + ") must be a multiple of kv_heads (" + std::to_string(a.kv_heads) + ")");
    require(a.seq <= INT32_MAX && a.window <= INT32_MAX && a.heads <= INT32_MAX && a.head_dim <= INT32_MAX, op,
            "seq, window, heads and head_dim must fit the kernels' 32-bit indices");
}

template <class T>
StridedMatrices<T> per_sequence(T* data, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::int64_t stride) {
    return StridedMatrices<T>{matrix_view(data, rows, cols, ld), stride};
}
}  // namespace ops_detail

// out [tokens, heads * head_dim] = softmax(mask(scale q k^T)) v. `scores` is fp32 scratch and
// `probs` (bf16, kept for the backward) receives the probabilities; both hold a.score_elements()
// in [batch, heads, seq, seq] order.
inline void attention_forward(Gemm& gemm, const Stream& stream, const AttentionShape& a, const bf16* q, std::int64_t q_ld,
                              const bf16* k, std::int64_t k_ld, const bf16* v, std::int64_t v_ld, float* scores, bf16* probs,
                              bf16* out, std::int64_t out_ld) {
    using namespace ops_detail;
    check_attention(a, "attention_forward");
    if (a.batch == 0) return;
    const std::int64_t t = a.seq, dh = a.head_dim, tt = t * t, head_stride = static_cast<std::int64_t>(a.heads) * tt;
    for (int h = 0; h < a.heads; ++h) {
        const int g = static_cast<int>(h / a.heads_per_kv());
        gemm.multiply_strided_batched(stream, a.batch, per_sequence<const bf16>(q + h * dh, t, dh, q_ld, t * q_ld), Op::none,
                                      per_sequence<const bf16>(k + g * dh, t, dh, k_ld, t * k_ld), Op::transpose,
                                      per_sequence<float>(scores + h * tt, t, t, t, head_stride), a.scale, 0.0f);
    }
    const std::int64_t rows = static_cast<std::int64_t>(a.batch) * a.heads * t;
    launch(kernels::masked_softmax_forward_kernel<>, blocks_for(rows, kernels::softmax_threads / 32, INT32_MAX),
           kernels::softmax_threads, 0, stream, static_cast<const float*>(scores), probs, rows, a.seq, a.window);
    for (int h = 0; h < a.heads; ++h) {
        const int g = static_cast<int>(h / a.heads_per_kv());
        gemm.multiply_strided_batched(stream, a.batch, per_sequence<const bf16>(probs + h * tt, t, t, t, head_stride), Op::none,
                                      per_sequence<const bf16>(v + g * dh, t, dh, v_ld, t * v_ld), Op::none,
                                      per_sequence<bf16>(out + h * dh, t, dh, out_ld, t * out_ld));
    }
}

// Gradients of attention_forward from the probabilities it kept. dq [tokens, heads * head_dim],
// dk and dv [tokens, kv_heads * head_dim] (fp32) are overwritten; the query heads of a group add
// into their key/value head in order. d_probs (fp32) and d_scores (bf16) are scratch of
// a.score_elements().
inline void attention_backward(Gemm& gemm, const Stream& stream, const AttentionShape& a, const bf16* q, std::int64_t q_ld,
                               const bf16* k, std::int64_t k_ld, const bf16* v, std::int64_t v_ld, const bf16* probs,
                               const bf16* d_out, std::int64_t d_out_ld, float* d_probs, bf16* d_scores, float* dq,
                               std::int64_t dq_ld, float* dk, std::int64_t dk_ld, float* dv, std::int64_t dv_ld) {
    using namespace ops_detail;
    check_attention(a, "attention_backward");
    if (a.batch == 0) return;
    const std::int64_t t = a.seq, dh = a.head_dim, tt = t * t, head_stride = static_cast<std::int64_t>(a.heads) * tt;
    for (int h = 0; h < a.heads; ++h) {  // dP = dO v^T
        const int g = static_cast<int>(h / a.heads_per_kv());
        gemm.multiply_strided_batched(stream, a.batch, per_sequence<const bf16>(d_out + h * dh, t, dh, d_out_ld, t * d_out_ld),
                                      Op::none, per_sequence<const bf16>(v + g * dh, t, dh, v_ld, t * v_ld), Op::transpose,
                                      per_sequence<float>(d_probs + h * tt, t, t, t, head_stride));
    }
    const std::int64_t rows = static_cast<std::int64_t>(a.batch) * a.heads * t;
    launch(kernels::masked_softmax_backward_kernel<>, blocks_for(rows, kernels::softmax_threads / 32, INT32_MAX),
           kernels::softmax_threads, 0, stream, probs, static_cast<const float*>(d_probs), d_scores, rows, a.seq);
    for (int h = 0; h < a.heads; ++h) {
        const int g = static_cast<int>(h / a.heads_per_kv());
        const float beta = h % a.heads_per_kv() == 0 ? 0.0f : 1.0f;  // the group's first head overwrites
        const auto ds = per_sequence<const bf16>(d_scores + h * tt, t, t, t, head_stride);
        // dq = scale dS k;  dk (+)= scale dS^T q;  dv (+)= P^T dO
        gemm.multiply_strided_batched(stream, a.batch, ds, Op::none, per_sequence<const bf16>(k + g * dh, t, dh, k_ld, t * k_ld),
                                      Op::none, per_sequence<float>(dq + h * dh, t, dh, dq_ld, t * dq_ld), a.scale, 0.0f);
        gemm.multiply_strided_batched(stream, a.batch, ds, Op::transpose,
                                      per_sequence<const bf16>(q + h * dh, t, dh, q_ld, t * q_ld), Op::none,
                                      per_sequence<float>(dk + g * dh, t, dh, dk_ld, t * dk_ld), a.scale, beta);
        gemm.multiply_strided_batched(stream, a.batch, per_sequence<const bf16>(probs + h * tt, t, t, t, head_stride),
                                      Op::transpose, per_sequence<const bf16>(d_out + h * dh, t, dh, d_out_ld, t * d_out_ld),
                                      Op::none, per_sequence<float>(dv + g * dh, t, dh, dv_ld, t * dv_ld), 1.0f, beta);
    }
}

// The same output as attention_forward without any T^2 buffer (inference). kHeadDim = a.head_dim.
template <int kHeadDim>
void flash_attention_forward(const Stream& stream, const AttentionShape& a, const bf16* q, std::int64_t q_ld, const bf16* k,
                             std::int64_t k_ld, const bf16* v, std::int64_t v_ld, bf16* out, std::int64_t out_ld) {
    using namespace ops_detail;
    check_attention(a, "flash_attention_forward");
    require(a.head_dim == kHeadDim, "flash_attention_forward",
            "head_dim " + std::to_string(a.head_dim) + " differs from the kernel's " + std::to_string(kHeadDim));
    require(aligned_to(q, 4) && aligned_to(k, 4) && aligned_to(v, 4) && aligned_to(out, 4) && q_ld % 2 == 0 && k_ld % 2 == 0 &&
                v_ld % 2 == 0 && out_ld % 2 == 0,
            "flash_attention_forward", "q, k, v and out must be 4-byte aligned with even leading dimensions");
    require(a.heads <= 65535 && a.batch <= 65535, "flash_attention_forward", "heads and batch are limited to 65535");
    if (a.batch == 0) return;
    const dim3 grid(static_cast<unsigned>(ceil_div(a.seq, kernels::flash_rows)), static_cast<unsigned>(a.heads),
                    static_cast<unsigned>(a.batch));
    launch(kernels::flash_attention_forward_kernel<kHeadDim>, grid, kernels::flash_threads, 0, stream, q, q_ld, k, k_ld, v, v_ld,
           out, out_ld, a.seq, a.heads_per_kv(), a.window, a.scale);
}

GEMMA3_CUDA_NAMESPACE_END
