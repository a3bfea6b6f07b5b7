// Output head fused with softmax cross-entropy and its gradient, chunked over rows, on the device.
// The twin of include/gemma3/ops/cross_entropy.hpp (docs/model.md §3.6, §9.1-9.2).
//
// For each chunk of rows: logits = h W^T (cuBLASLt, fp32 output), then one block per row finds the
// row's max and sum of exponentials in a single pass (an online softmax: per-thread running
// (max, sum) pairs merged across the block), writes the row's loss logsumexp - logit[target] in
// double, and in a second pass the gradient (softmax - onehot) * grad_scale as bf16. Then
// dh = d_logits W (fp32) and dW += d_logits^T h (fp32, accumulated). Only chunk_rows x V logits
// exist at a time (the whole batch would be 823 MB at the seed's 32 x 128 x 50257 in fp32). The
// per-row losses are summed in double by one block in a fixed order: deterministic.
#pragma once

#include "common.cuh"

#include <gemma3/cuda/blas_lt.hpp>

#include <algorithm>
#include <cmath>

GEMMA3_CUDA_NAMESPACE_BEGIN

namespace kernels {

inline constexpr int cross_entropy_threads = 256;

// Merges two (max, sum of exp(x - max)) pairs; an empty pair has max -inf and sum 0.
__device__ __forceinline__ void merge_softmax_state(float& max_value, float& sum, float other_max, float other_sum) {
    const float merged = fmaxf(max_value, other_max);
    const float mine = max_value == -INFINITY ? 0.0f : sum * __expf(max_value - merged);
    const float theirs = other_max == -INFINITY ? 0.0f : other_sum * __expf(other_max - merged);
    max_value = merged;
    sum = mine + theirs;
}

// One block per row of logits [rows, ld]: row_loss[row] = logsumexp - logit[target]; with d_logits,
// d_logits[row, :] = (softmax - onehot(target)) * grad_scale.
// A template only for its linkage: a kernel defined in a header must not be a plain function.
template <int = 0>
__global__ void __launch_bounds__(cross_entropy_threads)
    softmax_cross_entropy_kernel(const float* __restrict__ logits, std::int64_t ld, const int* __restrict__ targets,
                                 double* __restrict__ row_loss, bf16* __restrict__ d_logits, std::int64_t d_ld, float grad_scale,
                                 int vocab, int rows) {
    __shared__ float warp_max_values[32], warp_sums[32];
    __shared__ float row_max, row_sum;
    const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
    for (int row = static_cast<int>(blockIdx.x); row < rows; row += static_cast<int>(gridDim.x)) {
        const float* x = logits + static_cast<std::int64_t>(row) * ld;
        float m = -INFINITY, s = 0.0f;
        for (int j = tid; j < vocab; j += cross_entropy_threads) {
            const float value = x[j];
            if (value > m) {
                s = (m == -INFINITY ? 0.0f : s * __expf(m - value)) + 1.0f;
                m = value;
            } else {
                s += __expf(value - m);
            }
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) {
            const float other_max = __shfl_xor_sync(full_warp, m, offset);
            const float other_sum = __shfl_xor_sync(full_warp, s, offset);
            merge_softmax_state(m, s, other_max, other_sum);
        }
        if (lane == 0) {
            warp_max_values[warp] = m;
            warp_sums[warp] = s;
        }
        __syncthreads();
        if (tid == 0) {
            float bm = warp_max_values[0], bs = warp_sums[0];
            for (int w = 1; w < cross_entropy_threads / 32; ++w) merge_softmax_state(bm, bs, warp_max_values[w], warp_sums[w]);
            row_max = bm;
            row_sum = bs;
            const int target = targets[row];
            row_loss[row] = static_cast<double>(bm) + log(static_cast<double>(bs)) - static_cast<double>(x[target]);
        }
        __syncthreads();
        if (d_logits != nullptr) {
            const float max_value = row_max, scale = grad_scale / row_sum;
            const int target = targets[row];
            bf16* d = d_logits + static_cast<std::int64_t>(row) * d_ld;
            for (int j = tid; j < vocab; j += cross_entropy_threads) {
                const float e = __expf(x[j] - max_value);
                d[j] = __float2bfloat16((j == target ? e - row_sum : e) * scale);
            }
        }
        __syncthreads();  // row_max / row_sum are rewritten for the next row
    }
}

}  // namespace kernels

// Rows per chunk so that a chunk of logits stays within `budget_elements` (at least one row).
inline int classifier_chunk_rows(std::int64_t rows, int vocab, std::int64_t budget_elements = std::int64_t{1} << 25) {
    return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(rows, budget_elements / vocab)));
}

// Scratch of classifier_forward_backward: logits (fp32) and d_logits (bf16) of chunk_rows x vocab,
// and row_loss: N doubles, one per row of h (all of them, not one chunk's), summed in row order at
// the end so the loss does not depend on the chunking.
struct ClassifierWorkspace {
    float* logits = nullptr;
    bf16* d_logits = nullptr;
    double* row_loss = nullptr;
    int chunk_rows = 0;
};

// h [N, D], head [V, D] (bf16), targets [N] (device, valid ids). Adds the summed loss over the N rows
// to *loss_total (device double). With dh == nullptr only the loss is computed; otherwise dh [N, D]
// (fp32, leading dimension dh_ld) is overwritten with d(grad_scale * loss_sum)/dh and d_head [V, D]
// (fp32) accumulates the head's gradient.
inline void classifier_forward_backward(Gemm& gemm, const Stream& stream, MatrixView<const bf16> h, MatrixView<const bf16> head,
                                        const int* targets, float grad_scale, float* dh, std::int64_t dh_ld,
                                        MatrixView<float> d_head, const ClassifierWorkspace& workspace, double* loss_total) {
    using namespace ops_detail;
    const std::int64_t n = h.rows, vocab = head.rows, d = h.cols;
    require(head.cols == d, "classifier_forward_backward",
            "h has " + std::to_string(d) + " columns, the head " + std::to_string(head.cols));
    require(workspace.chunk_rows > 0, "classifier_forward_backward", "the workspace has no rows");
    require(vocab <= INT32_MAX && n <= INT32_MAX, "classifier_forward_backward", "sizes exceed int32");
    const bool gradients = dh != nullptr;
    require(!gradients || d_head.data != nullptr, "classifier_forward_backward", "dh without d_head");
    for (std::int64_t r0 = 0; r0 < n; r0 += workspace.chunk_rows) {
        const std::int64_t rows = std::min<std::int64_t>(workspace.chunk_rows, n - r0);
        const auto h_rows = matrix_view(h.data + r0 * h.ld, rows, d, h.ld);
        gemm.multiply(stream, h_rows, Op::none, head, Op::transpose, matrix_view(workspace.logits, rows, vocab, vocab));
        launch(kernels::softmax_cross_entropy_kernel<>, static_cast<unsigned>(rows), kernels::cross_entropy_threads, 0, stream,
               static_cast<const float*>(workspace.logits), vocab, targets + r0, workspace.row_loss + r0,
               gradients ? workspace.d_logits : nullptr, vocab, grad_scale, static_cast<int>(vocab), static_cast<int>(rows));
        if (gradients) {
            const auto d_logits = matrix_view<const bf16>(workspace.d_logits, rows, vocab, vocab);
            gemm.multiply(stream, d_logits, Op::none, head, Op::none, matrix_view(dh + r0 * dh_ld, rows, d, dh_ld));
            gemm.multiply(stream, d_logits, Op::transpose, h_rows, Op::none, d_head, 1.0f, 1.0f);
        }
    }
    launch(kernels::sum_in_order_kernel<>, 1, 256, 0, stream, static_cast<const double*>(workspace.row_loss), static_cast<int>(n),
           loss_total);
}

GEMMA3_CUDA_NAMESPACE_END
