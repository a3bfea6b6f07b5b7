// Causal / sliding-window attention with grouped (or multi-) query heads on the device. The twin of
// include/gemma3/ops/attention.hpp (docs/model.md §3.4 steps 5-7, §4; backward §9.6-9.7).
//
// Layout as on the CPU: q [tokens, heads * head_dim], k and v [tokens, kv_heads * head_dim] (any
// leading dimensions, so k and v can be read inside the fused q/k/v projection), tokens batch-major.
// Query head h reads key/value head h / (heads / kv_heads); query i sees keys j with
// i - window < j <= i (window = 0: every j <= i); scores are scaled by `scale`.
//
// Two implementations:
//  - Exact (attention_forward / attention_backward): for each head, one cuBLASLt strided-batched
//    product over the sequences computes S = scale * Q K^T (fp32), a fused kernel applies the mask
//    and the softmax in one warp per row and writes P (bf16, kept for the backward), and a second
//    product gives O = P V. The backward is four products per head and one kernel for
//    dS = P * (dP - rowsum(dP * P)); the query heads of a group add their dK and dV in a fixed order
//    (beta = 1), so the result is deterministic. Memory is O(batch * heads * T^2). The model uses it
//    only for inference on request (AttentionPath::matrix_products); it is the tiled kernels' test
//    reference.
//  - Tiled (flash_attention_forward / flash_attention_backward, what the model trains with): the
//    FlashAttention-2 scheme, the twin of the CPU's tiled ops. The forward takes 16 query rows of
//    one (sequence, head) per block, walks the visible keys 32 at a time through shared memory, and
//    keeps the running max, sum and output of each row in registers; for training it writes each
//    row's log-sum-exp (fp32, [batch, heads, seq]). The backward computes delta = rowsum(dO * O),
//    then recomputes P = exp(scale q k^T - lse) in 16 x 16 tiles twice: one kernel per (query tile,
//    head) sums dQ over its key tiles, one per (key tile, kv head) sums dK and dV over the query
//    heads of its group and the query tiles that see its keys; every output element is summed by
//    one thread in a fixed order (deterministic, no atomics). Nothing of size T^2 exists, so memory
//    is O(T); a sliding layer only visits the key tiles of its window band (work O(T * W)), a full
//    layer O(T^2). P and dS stay fp32. Plain CUDA C++ (no tensor-core mma, which the emulator
//    cannot run): a later session can swap in an mma.sync version, tested against the same
//    references.
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
                                   std::int64_t out_ld, float* __restrict__ lse, int seq, int heads_per_kv, int window, float scale) {
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
        if (lse != nullptr && lane == 0) {
            lse[(static_cast<std::int64_t>(blockIdx.z) * static_cast<std::int64_t>(gridDim.y) + head) * seq + i] = running_max[r] + logf(total);
        }
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


// --- Tiled backward (FlashAttention-2) --------------------------------------------------------------
// delta_i = dO_i . O_i, then two kernels that recompute P = exp(scale q k^T - lse) tile by tile:
// one per (key tile, kv head, sequence) sums dK and dV over the query heads of its group and the
// query tiles that see its keys, one per (query tile, head, sequence) sums dQ over its key tiles.
// Each output element is summed by one thread in a fixed order: deterministic, no atomics.
inline constexpr int flash_backward_rows = 16;  // query rows per tile
inline constexpr int flash_backward_keys = 16;  // keys per tile

// delta[(b * heads + h) * seq + i] = dO . O of query i, head h of sequence b; one warp per row.
template <int kHeadDim>
__global__ void __launch_bounds__(softmax_threads)
    flash_attention_delta_kernel(const bf16* __restrict__ out, std::int64_t out_ld, const bf16* __restrict__ d_out,
                                 std::int64_t d_out_ld, float* __restrict__ delta, std::int64_t rows, int seq, int heads) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * (softmax_threads / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const std::int64_t token = row / heads;
    const int head = static_cast<int>(row % heads);
    const bf16* o = out + token * out_ld + static_cast<std::int64_t>(head) * kHeadDim;
    const bf16* d = d_out + token * d_out_ld + static_cast<std::int64_t>(head) * kHeadDim;
    float dot = 0.0f;
    for (int pair = lane; pair < kHeadDim / 2; pair += 32) {
        const unsigned ow = load_pair(o + 2 * pair), dw = load_pair(d + 2 * pair);
        dot += low_of(ow) * low_of(dw) + high_of(ow) * high_of(dw);
    }
    dot = warp_sum(dot);
    if (lane == 0) delta[((token / seq) * heads + head) * seq + token % seq] = dot;
}

// Shared-memory tiles of one backward step: bf16 pairs as 32-bit words, rows padded to an odd number
// of words so that threads reading different rows at the same column hit different banks.
template <int kHeadDim>
struct FlashBackwardTiles {
    static constexpr int pairs = kHeadDim / 2, stride = pairs | 1;
    unsigned q[flash_backward_rows][stride];
    unsigned d_out[flash_backward_rows][stride];
    unsigned k[flash_backward_keys][stride];
    unsigned v[flash_backward_keys][stride];
    float lse[flash_backward_rows];
    float delta[flash_backward_rows];
    float p[flash_backward_rows][flash_backward_keys];   // probabilities
    float ds[flash_backward_rows][flash_backward_keys];  // dS = P (dP - delta), w.r.t. the scaled scores
};

// Loads `count` rows of kHeadDim bf16 values from rows first.. of `source` into `tile` (zeros past
// `end`, the first row not to read).
template <int kHeadDim, int kRows>
__device__ __forceinline__ void load_rows(unsigned (*tile)[(kHeadDim / 2) | 1], const bf16* source, std::int64_t ld, int first,
                                          int end) {
    constexpr int kPairs = kHeadDim / 2;
    for (int index = static_cast<int>(threadIdx.x); index < kRows * kPairs; index += flash_threads) {
        const int r = index / kPairs, pair = index % kPairs, i = first + r;
        tile[r][pair] = i < end ? load_pair(source + static_cast<std::int64_t>(i) * ld + 2 * pair) : 0u;
    }
}

// Fills t.p and t.ds for query rows i0.. and keys j0.. (the q, d_out, k, v, lse and delta tiles
// loaded): P = exp(scale q.k - lse), exactly 0 where the key is masked or out of range.
template <int kHeadDim>
__device__ __forceinline__ void probability_tiles(FlashBackwardTiles<kHeadDim>& t, int i0, int j0, int seq, int window,
                                                  float scale) {
    constexpr int kPairs = kHeadDim / 2;
    for (int e = static_cast<int>(threadIdx.x); e < flash_backward_rows * flash_backward_keys; e += flash_threads) {
        const int r = e / flash_backward_keys, c = e % flash_backward_keys, i = i0 + r, j = j0 + c;
        const bool visible = i < seq && j <= i && (window <= 0 || j > i - window);
        float p = 0.0f, ds = 0.0f;
        if (visible) {
            float score = 0.0f, dp = 0.0f;
            for (int pair = 0; pair < kPairs; ++pair) {  // the forward's order for the score
                const unsigned qw = t.q[r][pair], kw = t.k[c][pair], dw = t.d_out[r][pair], vw = t.v[c][pair];
                score += low_of(qw) * low_of(kw) + high_of(qw) * high_of(kw);
                dp += low_of(dw) * low_of(vw) + high_of(dw) * high_of(vw);
            }
            p = __expf(score * scale - t.lse[r]);
            ds = p * (dp - t.delta[r]);
        }
        t.p[r][c] = p;
        t.ds[r][c] = ds;
    }
}

// dK and dV (fp32, overwritten) of keys j0 = blockIdx.x * 16.. of kv head blockIdx.y in sequence
// blockIdx.z. Grid (ceil(seq / 16), kv_heads, batch), 128 threads: warp w owns keys 4w..4w+3, lane l
// the dimension pairs l, l + 32, ...
template <int kHeadDim>
__global__ void __launch_bounds__(flash_threads)
    flash_attention_backward_kv_kernel(const bf16* __restrict__ q, std::int64_t q_ld, const bf16* __restrict__ k, std::int64_t k_ld,
                                       const bf16* __restrict__ v, std::int64_t v_ld, const bf16* __restrict__ d_out,
                                       std::int64_t d_out_ld, const float* __restrict__ lse, const float* __restrict__ delta,
                                       float* __restrict__ dk, std::int64_t dk_ld, float* __restrict__ dv, std::int64_t dv_ld,
                                       int seq, int heads, int heads_per_kv, int window, float scale) {
    static_assert(kHeadDim % 2 == 0 && kHeadDim <= 256, "flash attention: even head_dim up to 256 (static shared memory)");
    constexpr int kPairs = kHeadDim / 2, kPairsPerLane = (kPairs + 31) / 32;
    constexpr int kKeysPerWarp = flash_backward_keys / (flash_threads / 32);
    __shared__ FlashBackwardTiles<kHeadDim> t;

    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int j0 = static_cast<int>(blockIdx.x) * flash_backward_keys, kv_head = static_cast<int>(blockIdx.y);
    const std::int64_t sequence = static_cast<std::int64_t>(blockIdx.z), first_token = sequence * seq;
    const int key_end = min(j0 + flash_backward_keys, seq);
    load_rows<kHeadDim, flash_backward_keys>(t.k, k + first_token * k_ld + static_cast<std::int64_t>(kv_head) * kHeadDim, k_ld, j0,
                                             key_end);
    load_rows<kHeadDim, flash_backward_keys>(t.v, v + first_token * v_ld + static_cast<std::int64_t>(kv_head) * kHeadDim, v_ld, j0,
                                             key_end);

    float dk_acc[kKeysPerWarp][kPairsPerLane][2], dv_acc[kKeysPerWarp][kPairsPerLane][2];
#pragma unroll
    for (int c = 0; c < kKeysPerWarp; ++c)
#pragma unroll
        for (int pp = 0; pp < kPairsPerLane; ++pp) dk_acc[c][pp][0] = dk_acc[c][pp][1] = dv_acc[c][pp][0] = dv_acc[c][pp][1] = 0.0f;

    // Queries that see a key of this tile: [j0, query_end).
    const int query_end = window > 0 ? min(seq, key_end - 1 + window) : seq;
    for (int head = kv_head * heads_per_kv; head < (kv_head + 1) * heads_per_kv; ++head) {
        const bf16* qh = q + first_token * q_ld + static_cast<std::int64_t>(head) * kHeadDim;
        const bf16* doh = d_out + first_token * d_out_ld + static_cast<std::int64_t>(head) * kHeadDim;
        const std::int64_t row = (sequence * heads + head) * seq;
        for (int i0 = j0; i0 < query_end; i0 += flash_backward_rows) {
            __syncthreads();  // the previous tiles are consumed
            load_rows<kHeadDim, flash_backward_rows>(t.q, qh, q_ld, i0, query_end);
            load_rows<kHeadDim, flash_backward_rows>(t.d_out, doh, d_out_ld, i0, query_end);
            if (threadIdx.x < flash_backward_rows) {
                const int i = i0 + static_cast<int>(threadIdx.x);
                t.lse[threadIdx.x] = i < query_end ? lse[row + i] : 0.0f;
                t.delta[threadIdx.x] = i < query_end ? delta[row + i] : 0.0f;
            }
            __syncthreads();
            probability_tiles(t, i0, j0, seq, window, scale);
            __syncthreads();
            // dV += P^T dO;  dK += dS^T Q (scaled at the end)
            for (int r = 0; r < flash_backward_rows; ++r) {
#pragma unroll
                for (int pp = 0; pp < kPairsPerLane; ++pp) {
                    const int pair = lane + 32 * pp;
                    if (pair < kPairs) {
                        const unsigned dw = t.d_out[r][pair], qw = t.q[r][pair];
                        const float d_lo = low_of(dw), d_hi = high_of(dw), q_lo = low_of(qw), q_hi = high_of(qw);
#pragma unroll
                        for (int c = 0; c < kKeysPerWarp; ++c) {
                            const float p = t.p[r][warp * kKeysPerWarp + c], ds = t.ds[r][warp * kKeysPerWarp + c];
                            dv_acc[c][pp][0] += p * d_lo;
                            dv_acc[c][pp][1] += p * d_hi;
                            dk_acc[c][pp][0] += ds * q_lo;
                            dk_acc[c][pp][1] += ds * q_hi;
                        }
                    }
                }
            }
        }
    }

#pragma unroll
    for (int c = 0; c < kKeysPerWarp; ++c) {
        const int j = j0 + warp * kKeysPerWarp + c;
        if (j >= seq) continue;
        float* dkj = dk + (first_token + j) * dk_ld + static_cast<std::int64_t>(kv_head) * kHeadDim;
        float* dvj = dv + (first_token + j) * dv_ld + static_cast<std::int64_t>(kv_head) * kHeadDim;
#pragma unroll
        for (int pp = 0; pp < kPairsPerLane; ++pp) {
            const int pair = lane + 32 * pp;
            if (pair < kPairs) {
                dkj[2 * pair] = dk_acc[c][pp][0] * scale;
                dkj[2 * pair + 1] = dk_acc[c][pp][1] * scale;
                dvj[2 * pair] = dv_acc[c][pp][0];
                dvj[2 * pair + 1] = dv_acc[c][pp][1];
            }
        }
    }
}

// dQ (fp32, overwritten) of query rows i0 = blockIdx.x * 16.. of head blockIdx.y in sequence
// blockIdx.z, over the key tiles they see (as the forward). Grid (ceil(seq / 16), heads, batch),
// 128 threads: warp w owns rows 4w..4w+3, lane l the dimension pairs l, l + 32, ...
template <int kHeadDim>
__global__ void __launch_bounds__(flash_threads)
    flash_attention_backward_q_kernel(const bf16* __restrict__ q, std::int64_t q_ld, const bf16* __restrict__ k, std::int64_t k_ld,
                                      const bf16* __restrict__ v, std::int64_t v_ld, const bf16* __restrict__ d_out,
                                      std::int64_t d_out_ld, const float* __restrict__ lse, const float* __restrict__ delta,
                                      float* __restrict__ dq, std::int64_t dq_ld, int seq, int heads, int heads_per_kv, int window,
                                      float scale) {
    static_assert(kHeadDim % 2 == 0 && kHeadDim <= 256, "flash attention: even head_dim up to 256 (static shared memory)");
    constexpr int kPairs = kHeadDim / 2, kPairsPerLane = (kPairs + 31) / 32;
    constexpr int kRowsPerWarp = flash_backward_rows / (flash_threads / 32);
    __shared__ FlashBackwardTiles<kHeadDim> t;

    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int i0 = static_cast<int>(blockIdx.x) * flash_backward_rows, head = static_cast<int>(blockIdx.y);
    const int kv_head = head / heads_per_kv;
    const std::int64_t sequence = static_cast<std::int64_t>(blockIdx.z), first_token = sequence * seq,
                       row = (sequence * heads + head) * seq;
    const int row_end = min(i0 + flash_backward_rows, seq);
    load_rows<kHeadDim, flash_backward_rows>(t.q, q + first_token * q_ld + static_cast<std::int64_t>(head) * kHeadDim, q_ld, i0,
                                             row_end);
    load_rows<kHeadDim, flash_backward_rows>(t.d_out, d_out + first_token * d_out_ld + static_cast<std::int64_t>(head) * kHeadDim,
                                             d_out_ld, i0, row_end);
    if (threadIdx.x < flash_backward_rows) {
        const int i = i0 + static_cast<int>(threadIdx.x);
        t.lse[threadIdx.x] = i < row_end ? lse[row + i] : 0.0f;
        t.delta[threadIdx.x] = i < row_end ? delta[row + i] : 0.0f;
    }
    const bf16* kh = k + first_token * k_ld + static_cast<std::int64_t>(kv_head) * kHeadDim;
    const bf16* vh = v + first_token * v_ld + static_cast<std::int64_t>(kv_head) * kHeadDim;

    float acc[kRowsPerWarp][kPairsPerLane][2];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
        for (int pp = 0; pp < kPairsPerLane; ++pp) acc[r][pp][0] = acc[r][pp][1] = 0.0f;

    const int first_key = window > 0 ? max(0, i0 - window + 1) : 0;
    for (int j0 = first_key; j0 < row_end; j0 += flash_backward_keys) {
        __syncthreads();  // the previous tiles are consumed (and the query tiles stored)
        load_rows<kHeadDim, flash_backward_keys>(t.k, kh, k_ld, j0, row_end);
        load_rows<kHeadDim, flash_backward_keys>(t.v, vh, v_ld, j0, row_end);
        __syncthreads();
        probability_tiles(t, i0, j0, seq, window, scale);
        __syncthreads();
        // dQ += dS K (scaled at the end)
        for (int c = 0; c < flash_backward_keys; ++c) {
#pragma unroll
            for (int pp = 0; pp < kPairsPerLane; ++pp) {
                const int pair = lane + 32 * pp;
                if (pair < kPairs) {
                    const unsigned kw = t.k[c][pair];
                    const float k_lo = low_of(kw), k_hi = high_of(kw);
#pragma unroll
                    for (int r = 0; r < kRowsPerWarp; ++r) {
                        const float ds = t.ds[warp * kRowsPerWarp + r][c];
                        acc[r][pp][0] += ds * k_lo;
                        acc[r][pp][1] += ds * k_hi;
                    }
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        const int i = i0 + warp * kRowsPerWarp + r;
        if (i >= seq) continue;
        float* dqi = dq + (first_token + i) * dq_ld + static_cast<std::int64_t>(head) * kHeadDim;
#pragma unroll
        for (int pp = 0; pp < kPairsPerLane; ++pp) {
            const int pair = lane + 32 * pp;
            if (pair < kPairs) {
                dqi[2 * pair] = acc[r][pp][0] * scale;
                dqi[2 * pair + 1] = acc[r][pp][1] * scale;
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

namespace ops_detail {
template <int kHeadDim>
void check_flash(const AttentionShape& a, const char* op, std::initializer_list<const void*> bf16_operands,
                 std::initializer_list<std::int64_t> bf16_lds) {
    check_attention(a, op);
    require(a.head_dim == kHeadDim, op, "head_dim " + std::to_string(a.head_dim) + " differs from the kernel's " + std::to_string(kHeadDim));
    bool aligned = true;
    for (const void* pointer : bf16_operands) aligned = aligned && aligned_to(pointer, 4);
    for (const std::int64_t ld : bf16_lds) aligned = aligned && ld % 2 == 0;
    require(aligned, op, "the bf16 operands must be 4-byte aligned with even leading dimensions");
    require(a.heads <= 65535 && a.batch <= 65535, op, "heads and batch are limited to 65535");
}
}  // namespace ops_detail

// The same output as attention_forward without any T^2 buffer. kHeadDim = a.head_dim. lse: nullptr
// (inference), or [batch, heads, seq] (fp32) receiving each row's log-sum-exp of its scaled visible
// scores, which flash_attention_backward needs (training).
template <int kHeadDim>
void flash_attention_forward(const Stream& stream, const AttentionShape& a, const bf16* q, std::int64_t q_ld, const bf16* k,
                             std::int64_t k_ld, const bf16* v, std::int64_t v_ld, bf16* out, std::int64_t out_ld,
                             float* lse = nullptr) {
    using namespace ops_detail;
    check_flash<kHeadDim>(a, "flash_attention_forward", {q, k, v, out}, {q_ld, k_ld, v_ld, out_ld});
    if (a.batch == 0) return;
    const dim3 grid(static_cast<unsigned>(ceil_div(a.seq, kernels::flash_rows)), static_cast<unsigned>(a.heads),
                    static_cast<unsigned>(a.batch));
    launch(kernels::flash_attention_forward_kernel<kHeadDim>, grid, kernels::flash_threads, 0, stream, q, q_ld, k, k_ld, v, v_ld,
           out, out_ld, lse, static_cast<int>(a.seq), static_cast<int>(a.heads_per_kv()), static_cast<int>(a.window), static_cast<float>(a.scale));
}

// Gradients of flash_attention_forward from its output `out` and log-sum-exps `lse`, without any
// T^2 buffer: with delta_i = dO_i . O_i and P recomputed tile by tile as exp(scale q k^T - lse),
//   dV = P^T dO,  dS = P * (dO V^T - delta),  dQ = scale dS K,  dK = scale dS^T Q.
// dq [tokens, heads * head_dim], dk and dv [tokens, kv_heads * head_dim] (fp32) are overwritten; dk
// and dv sum the query heads of their group. delta is scratch of [batch, heads, seq] floats.
// Deterministic (each element summed by one thread in a fixed order). A sliding layer visits only
// the key tiles inside its window band: O(seq * window) work.
template <int kHeadDim>
void flash_attention_backward(const Stream& stream, const AttentionShape& a, const bf16* q, std::int64_t q_ld, const bf16* k,
                              std::int64_t k_ld, const bf16* v, std::int64_t v_ld, const bf16* out, std::int64_t out_ld,
                              const float* lse, const bf16* d_out, std::int64_t d_out_ld, float* delta, float* dq,
                              std::int64_t dq_ld, float* dk, std::int64_t dk_ld, float* dv, std::int64_t dv_ld) {
    using namespace ops_detail;
    check_flash<kHeadDim>(a, "flash_attention_backward", {q, k, v, out, d_out}, {q_ld, k_ld, v_ld, out_ld, d_out_ld});
    require(a.kv_heads <= 65535, "flash_attention_backward", "kv_heads is limited to 65535");
    if (a.batch == 0) return;
    const int seq = static_cast<int>(a.seq), heads = static_cast<int>(a.heads), per_kv = static_cast<int>(a.heads_per_kv());
    const int window = static_cast<int>(a.window);
    const float scale = static_cast<float>(a.scale);
    const std::int64_t rows = a.batch * a.heads * a.seq;
    launch(kernels::flash_attention_delta_kernel<kHeadDim>, blocks_for(rows, kernels::softmax_threads / 32, INT32_MAX),
           kernels::softmax_threads, 0, stream, out, out_ld, d_out, d_out_ld, delta, rows, seq, heads);
    const dim3 query_grid(static_cast<unsigned>(ceil_div(a.seq, kernels::flash_backward_rows)), static_cast<unsigned>(a.heads),
                          static_cast<unsigned>(a.batch));
    launch(kernels::flash_attention_backward_q_kernel<kHeadDim>, query_grid, kernels::flash_threads, 0, stream, q, q_ld, k, k_ld,
           v, v_ld, d_out, d_out_ld, lse, static_cast<const float*>(delta), dq, dq_ld, seq, heads, per_kv, window, scale);
    const dim3 key_grid(static_cast<unsigned>(ceil_div(a.seq, kernels::flash_backward_keys)), static_cast<unsigned>(a.kv_heads),
                        static_cast<unsigned>(a.batch));
    launch(kernels::flash_attention_backward_kv_kernel<kHeadDim>, key_grid, kernels::flash_threads, 0, stream, q, q_ld, k, k_ld,
           v, v_ld, d_out, d_out_ld, lse, static_cast<const float*>(delta), dk, dk_ld, dv, dv_ld, seq, heads, per_kv, window, scale);
}

GEMMA3_CUDA_NAMESPACE_END
