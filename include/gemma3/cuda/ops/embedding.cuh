// Token embedding on the device: out[n, :] = table[token[n], :] * scale, and its scatter-add
// backward. The twin of include/gemma3/ops/embedding.hpp (docs/model.md §3.1, §9.9).
//
// The output is the fp32 residual stream; the table is the bf16 compute copy. Token ids are checked
// on the host (check_token_ids) before they are uploaded, so the kernels index without checks.
//
// Backward, two modes:
//  - atomic: one block per position adds scale * d_out[n, :] into d_table[token[n], :] with fp32
//    atomics. Repeated tokens race, so the sum order (and the last bits) vary from run to run.
//  - deterministic (the default of the model): the positions are grouped by token on the host
//    (EmbeddingSegments: a stable sort of the positions by the ids the host holds anyway), and one
//    block per distinct token sums its positions in increasing order, then adds once. No atomics, the
//    same bits every run, and each row of d_table is read and written once however often its token
//    repeats.
#pragma once

#include "common.cuh"

#include <algorithm>
#include <numeric>
#include <span>
#include <vector>

GEMMA3_CUDA_NAMESPACE_BEGIN

namespace kernels {

inline constexpr int embedding_threads = 128;

template <int kVec>
__global__ void __launch_bounds__(embedding_threads)
    embedding_forward_kernel(const int* __restrict__ tokens, const bf16* __restrict__ table, float scale,
                             float* __restrict__ out, int count, int dim) {
    for (int n = static_cast<int>(blockIdx.x); n < count; n += static_cast<int>(gridDim.x)) {
        const bf16* row = table + static_cast<std::int64_t>(tokens[n]) * dim;
        float* destination = out + static_cast<std::int64_t>(n) * dim;
        for (int c = static_cast<int>(threadIdx.x) * kVec; c < dim; c += embedding_threads * kVec) {
            float v[kVec];
            load(row + c, v);
#pragma unroll
            for (int i = 0; i < kVec; ++i) v[i] *= scale;
            store(destination + c, v);
        }
    }
}

template <int kVec>
__global__ void __launch_bounds__(embedding_threads)
    embedding_backward_atomic_kernel(const int* __restrict__ tokens, float scale, const float* __restrict__ d_out,
                                     float* __restrict__ d_table, int count, int dim) {
    for (int n = static_cast<int>(blockIdx.x); n < count; n += static_cast<int>(gridDim.x)) {
        float* row = d_table + static_cast<std::int64_t>(tokens[n]) * dim;
        const float* source = d_out + static_cast<std::int64_t>(n) * dim;
        for (int c = static_cast<int>(threadIdx.x) * kVec; c < dim; c += embedding_threads * kVec) {
            float g[kVec];
            load(source + c, g);
#pragma unroll
            for (int i = 0; i < kVec; ++i) atomicAdd(row + c + i, scale * g[i]);
        }
    }
}

// Segment s covers positions order[offsets[s] .. offsets[s+1]) of token segment_tokens[s].
template <int kVec>
__global__ void __launch_bounds__(embedding_threads)
    embedding_backward_sorted_kernel(const int* __restrict__ segment_tokens, const int* __restrict__ offsets,
                                     const int* __restrict__ order, float scale, const float* __restrict__ d_out,
                                     float* __restrict__ d_table, int segments, int dim) {
    for (int s = static_cast<int>(blockIdx.x); s < segments; s += static_cast<int>(gridDim.x)) {
        float* row = d_table + static_cast<std::int64_t>(segment_tokens[s]) * dim;
        const int first = offsets[s], last = offsets[s + 1];
        for (int c = static_cast<int>(threadIdx.x) * kVec; c < dim; c += embedding_threads * kVec) {
            float sum[kVec] = {};
            for (int p = first; p < last; ++p) {
                float g[kVec];
                load(d_out + static_cast<std::int64_t>(order[p]) * dim + c, g);
#pragma unroll
                for (int i = 0; i < kVec; ++i) sum[i] += g[i];
            }
            float current[kVec];
            load(row + c, current);
#pragma unroll
            for (int i = 0; i < kVec; ++i) current[i] += scale * sum[i];
            store(row + c, current);
        }
    }
}

}  // namespace kernels

// The positions of a token sequence grouped by token id, for the deterministic backward:
// `order` lists the positions sorted by (token, position); segment s is token segment_tokens[s] at
// order[offsets[s] .. offsets[s + 1]).
struct EmbeddingSegments {
    std::vector<int> segment_tokens, offsets, order;

    static EmbeddingSegments of(std::span<const std::int32_t> tokens) {
        EmbeddingSegments s;
        s.order.resize(tokens.size());
        std::iota(s.order.begin(), s.order.end(), 0);
        std::stable_sort(s.order.begin(), s.order.end(), [&](int a, int b) { return tokens[a] < tokens[b]; });
        for (std::size_t i = 0; i < s.order.size(); ++i) {
            if (i == 0 || tokens[s.order[i]] != tokens[s.order[i - 1]]) {
                s.segment_tokens.push_back(tokens[s.order[i]]);
                s.offsets.push_back(static_cast<int>(i));
            }
        }
        s.offsets.push_back(static_cast<int>(s.order.size()));
        return s;
    }
};

// out [count, dim] (fp32) = table[tokens] * scale. `tokens` is a device array of valid ids.
inline void embedding_forward(const Stream& stream, const bf16* table, const int* tokens, float scale, float* out, int count,
                              int dim) {
    using namespace ops_detail;
    require(dim > 0 && count >= 0, "embedding_forward", "dim " + std::to_string(dim) + " must be positive");
    if (count == 0) return;
    const int width = vector_width({operand(table), operand(out)}, {dim});
    with_vector_width(width, [&](auto vec) {
        launch(kernels::embedding_forward_kernel<decltype(vec)::value>, blocks_for(count, 1, INT32_MAX),
               kernels::embedding_threads, 0, stream, tokens, table, scale, out, count, dim);
    });
}

// d_table[tokens[n], :] += scale * d_out[n, :] with atomics (order of the additions not fixed).
inline void embedding_backward_atomic(const Stream& stream, const int* tokens, float scale, const float* d_out, float* d_table,
                                      int count, int dim) {
    using namespace ops_detail;
    require(dim > 0 && count >= 0, "embedding_backward", "dim " + std::to_string(dim) + " must be positive");
    if (count == 0) return;
    const int width = vector_width({operand(d_out), operand(d_table)}, {dim});
    with_vector_width(width, [&](auto vec) {
        launch(kernels::embedding_backward_atomic_kernel<decltype(vec)::value>, blocks_for(count, 1, INT32_MAX),
               kernels::embedding_threads, 0, stream, tokens, scale, d_out, d_table, count, dim);
    });
}

// The same sum, deterministically: segments are the device copies of an EmbeddingSegments
// (segment_tokens and offsets of `segments` + 1 entries, order of the positions).
inline void embedding_backward_sorted(const Stream& stream, const int* segment_tokens, const int* offsets, const int* order,
                                      int segments, float scale, const float* d_out, float* d_table, int dim) {
    using namespace ops_detail;
    require(dim > 0 && segments >= 0, "embedding_backward", "dim " + std::to_string(dim) + " must be positive");
    if (segments == 0) return;
    const int width = vector_width({operand(d_out), operand(d_table)}, {dim});
    with_vector_width(width, [&](auto vec) {
        launch(kernels::embedding_backward_sorted_kernel<decltype(vec)::value>, blocks_for(segments, 1, INT32_MAX),
               kernels::embedding_threads, 0, stream, segment_tokens, offsets, order, scale, d_out, d_table, segments, dim);
    });
}

GEMMA3_CUDA_NAMESPACE_END
