// Output head fused with softmax cross-entropy, chunked over rows.
//
// docs/model.md §3.6 and §9.1-9.2. For each chunk of rows: logits = h W^T, loss_i =
// logsumexp(logits_i) - logits_i[y_i], d_logits = (softmax(logits) - onehot(y)) * grad_scale, then
// dh = d_logits W and dW += d_logits^T h (products in the layer precision, ops/linear.hpp). Only a
// chunk of logits exists at a time: at the seed's batch (32 x 128 tokens, vocab 50257) the full
// matrix would take 823 MB in fp32.
#pragma once

#include <gemma3/core/blas.hpp>
#include <gemma3/core/tensor.hpp>
#include "embedding.hpp"
#include "linear.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace gemma3 {

struct ClassifierResult {
    double loss_sum = 0;  // sum over rows of -log p(target)
};

// h [N, D], head [V, D], targets [N]. With dh == nullptr only the loss is computed (evaluation).
// Otherwise dh [N, D] is overwritten with dL/dh and d_head [V, D] accumulates dL/dW, where
// L = grad_scale * loss_sum (grad_scale = 1 / (N * accumulation steps) for the seed's mean loss).
// `logits_chunk` is scratch, resized to chunk_rows x V.
template <class T>
ClassifierResult classifier_forward_backward(ConstMatrixView<T> h, ConstMatrixView<T> head,
                                             std::span<const std::int32_t> targets, T grad_scale, T* dh,
                                             T* d_head, Buffer<T>& logits_chunk, Index chunk_rows = 256) {
    const Index n = h.rows(), d = h.cols(), vocab = head.rows();
    if (static_cast<Index>(targets.size()) != n) {
        throw std::invalid_argument("classifier: " + std::to_string(targets.size()) + " targets for " +
                                    std::to_string(n) + " rows");
    }
    check_token_ids(targets, vocab, "target id");
    chunk_rows = std::min(chunk_rows, n);
    logits_chunk.resize(static_cast<std::size_t>(chunk_rows * vocab));
    std::vector<double> row_loss(static_cast<std::size_t>(chunk_rows));
    // Mixed precision multiplies d_logits in bf16: rounded here, while each row is in cache, and
    // once for the two products that read it.
    const bool bf16_d_logits = std::is_same_v<T, float> && Bf16Products::active();
    ClassifierResult result;
    for (Index r0 = 0; r0 < n; r0 += chunk_rows) {
        const Index rows = std::min(chunk_rows, n - r0);
        auto logits = matrix_view(logits_chunk.data(), rows, vocab);
        const auto h_rows = row_block(h, r0, rows);
        linear_product(h_rows, Op::none, head, Op::transpose, logits);
#pragma omp parallel for schedule(static)
        for (Index r = 0; r < rows; ++r) {
            auto row = logits.row(r).array();
            const Index y = targets[static_cast<std::size_t>(r0 + r)];
            const T max = row.maxCoeff();
            const T target_logit = row(y);
            if (dh) {
                row = (row - max).exp();
                const T sum = row.sum();
                row(y) = row(y) - sum;  // p - onehot, times sum (rescaled next)
                row *= grad_scale / sum;
                if constexpr (std::is_same_v<T, float>) {
                    if (bf16_d_logits) {
                        float* values = &logits(r, 0);
                        for (Index c = 0; c < vocab; ++c) values[c] = round_to_bf16_value(values[c]);
                    }
                }
                row_loss[static_cast<std::size_t>(r)] =
                    static_cast<double>(max) + std::log(static_cast<double>(sum)) - static_cast<double>(target_logit);
            } else {
                const T sum = (row - max).exp().sum();
                row_loss[static_cast<std::size_t>(r)] =
                    static_cast<double>(max) + std::log(static_cast<double>(sum)) - static_cast<double>(target_logit);
            }
        }
        for (Index r = 0; r < rows; ++r) result.loss_sum += row_loss[static_cast<std::size_t>(r)];  // fixed order
        if (dh) {
            with_shared_operand<T>(as_const(logits), bf16_d_logits, [&](const auto& d_logits) {
                linear_product(d_logits, Op::none, head, Op::none, row_block(matrix_view(dh, n, d), r0, rows));
                linear_product(d_logits, Op::transpose, h_rows, Op::none, matrix_view(d_head, vocab, d), T(1), T(1));
            });
        }
    }
    return result;
}

}  // namespace gemma3
