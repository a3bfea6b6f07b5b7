// Causal / sliding-window attention with grouped (or multi-) query heads.
//
// docs/model.md §3.4 steps 5-7 and §4; backward §9.6-9.7. Inputs are the rotated queries [tokens, heads*head_dim]
// and keys/values [tokens, kv_heads*head_dim], tokens ordered batch-major (row b*seq + t). Query head
// h reads key/value head h / (heads / kv_heads). Query i sees keys j with i - window < j <= i
// (window = 0: every j <= i). Scores are scaled by `scale` = query_pre_attn_scalar^-0.5.
//
// Work is split over (sequence, key/value head) pairs and, inside, over tiles of query rows whose key
// range stops at the tile's last row and starts one window before its first, so a sliding layer
// costs O(seq * window), not O(seq^2). The probabilities are kept for the backward pass when the
// caller passes a buffer; without one, a tile-sized scratch is used (inference on long prompts).
#pragma once

#include "../blas.hpp"
#include "../tensor.hpp"
#include "attention_shape.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace gemma3 {

namespace detail {
inline constexpr Index attention_tile = 64;  // query rows per tile

// Softmax over the visible keys of each row of a score tile; masked entries become exactly 0.
// Row r of the tile is query i0 + r; column c is key j0 + c.
template <class T>
void masked_softmax_rows(MatrixView<T> scores, const AttentionShape& s, Index i0, Index j0) {
    for (Index r = 0; r < scores.rows(); ++r) {
        const Index i = i0 + r;
        const Index lo = s.first_key(i) - j0, hi = i - j0 + 1;  // visible columns [lo, hi)
        auto row = scores.row(r);
        row.head(lo).setZero();
        row.tail(row.size() - hi).setZero();
        auto visible = row.segment(lo, hi - lo).array();
        const T max = visible.maxCoeff();
        visible = (visible - max).exp();
        visible /= visible.sum();
    }
}
}  // namespace detail

// out [tokens, heads*head_dim] = softmax(mask(scale * q k^T)) v, per sequence and head.
// probs: nullptr, or [batch, heads, seq, seq] receiving the probabilities (zeros where masked).
template <class T>
void attention_forward(ConstMatrixView<T> q, ConstMatrixView<T> k, ConstMatrixView<T> v, const AttentionShape& s,
                       MatrixView<T> out, T* probs) {
    const Index seq = s.seq, dh = s.head_dim, tile = detail::attention_tile;
    const T scale = static_cast<T>(s.scale);
#pragma omp parallel
    {
        RowMatrix<T> scratch;  // score tile when probs are not kept
#pragma omp for collapse(2) schedule(dynamic)
        for (Index b = 0; b < s.batch; ++b) {
            for (Index h = 0; h < s.heads; ++h) {
                const Index g = h / s.heads_per_kv();
                const auto qh = sub_view(q, b * seq, h * dh, seq, dh);
                const auto kh = sub_view(k, b * seq, g * dh, seq, dh);
                const auto vh = sub_view(v, b * seq, g * dh, seq, dh);
                auto oh = sub_view(out, b * seq, h * dh, seq, dh);
                for (Index i0 = 0; i0 < seq; i0 += tile) {
                    const Index rows = std::min(tile, seq - i0);
                    const Index j0 = s.first_key(i0), cols = i0 + rows - j0;
                    MatrixView<T> p = [&] {
                        if (probs) {
                            T* base = probs + ((b * s.heads + h) * seq + i0) * seq;
                            auto full_rows = matrix_view(base, rows, seq);
                            full_rows.setZero();
                            return matrix_view(base + j0, rows, cols, seq);
                        }
                        scratch.resize(rows, cols);
                        return matrix_view(scratch.data(), rows, cols);
                    }();
                    gemm(row_block(qh, i0, rows), Op::none, row_block(kh, j0, cols), Op::transpose, p, scale);
                    detail::masked_softmax_rows(p, s, i0, j0);
                    gemm(p, Op::none, row_block(vh, j0, cols), Op::none, row_block(oh, i0, rows));
                }
            }
        }
    }
}

// Gradients of attention_forward given the probabilities it kept. dq is overwritten; dk and dv are
// overwritten too (they sum the contributions of every query head of their key/value head).
template <class T>
void attention_backward(ConstMatrixView<T> q, ConstMatrixView<T> k, ConstMatrixView<T> v, const T* probs,
                        ConstMatrixView<T> d_out, const AttentionShape& s, MatrixView<T> dq, MatrixView<T> dk,
                        MatrixView<T> dv) {
    const Index seq = s.seq, dh = s.head_dim, tile = detail::attention_tile;
    const T scale = static_cast<T>(s.scale);
    // One task per (sequence, kv head): the query heads sharing a kv head add into the same dk, dv
    // rows, so they run in a fixed order inside one task (deterministic, no atomics).
#pragma omp parallel
    {
        RowMatrix<T> dp;
#pragma omp for collapse(2) schedule(dynamic)
        for (Index b = 0; b < s.batch; ++b) {
            for (Index g = 0; g < s.kv_heads; ++g) {
                const auto kh = sub_view(k, b * seq, g * dh, seq, dh);
                const auto vh = sub_view(v, b * seq, g * dh, seq, dh);
                auto dkh = sub_view(dk, b * seq, g * dh, seq, dh);
                auto dvh = sub_view(dv, b * seq, g * dh, seq, dh);
                dkh.setZero();
                dvh.setZero();
                for (Index h = g * s.heads_per_kv(); h < (g + 1) * s.heads_per_kv(); ++h) {
                    const auto qh = sub_view(q, b * seq, h * dh, seq, dh);
                    const auto doh = sub_view(d_out, b * seq, h * dh, seq, dh);
                    auto dqh = sub_view(dq, b * seq, h * dh, seq, dh);
                    for (Index i0 = 0; i0 < seq; i0 += tile) {
                        const Index rows = std::min(tile, seq - i0);
                        const Index j0 = s.first_key(i0), cols = i0 + rows - j0;
                        const auto p = const_view(probs + ((b * s.heads + h) * seq + i0) * seq + j0, rows, cols, seq);
                        // dv += p^T dO;  dP = dO v^T;  dS = p * (dP - rowsum(dP * p))
                        gemm(p, Op::transpose, row_block(doh, i0, rows), Op::none, row_block(dvh, j0, cols), T(1),
                             T(1));
                        dp.resize(rows, cols);
                        auto dpv = matrix_view(dp.data(), rows, cols);
                        gemm(row_block(doh, i0, rows), Op::none, row_block(vh, j0, cols), Op::transpose, dpv);
                        for (Index r = 0; r < rows; ++r) {
                            const T dot = (dpv.row(r).array() * p.row(r).array()).sum();
                            dpv.row(r) = (p.row(r).array() * (dpv.row(r).array() - dot)).matrix();
                        }
                        // dq = scale dS k;  dk += scale dS^T q
                        gemm(dpv, Op::none, row_block(kh, j0, cols), Op::none, row_block(dqh, i0, rows), scale);
                        gemm(dpv, Op::transpose, row_block(qh, i0, rows), Op::none, row_block(dkh, j0, cols), scale,
                             T(1));
                    }
                }
            }
        }
    }
}

}  // namespace gemma3
