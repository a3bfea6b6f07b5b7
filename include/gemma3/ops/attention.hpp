// Causal / sliding-window attention with grouped (or multi-) query heads.
//
// docs/model.md §3.4 steps 5-7 and §4; backward §9.6-9.7. Inputs are the rotated queries [tokens, heads*head_dim]
// and keys/values [tokens, kv_heads*head_dim], tokens ordered batch-major (row b*seq + t). Query head
// h reads key/value head h / (heads / kv_heads). Query i sees keys j with i - window < j <= i
// (window = 0: every j <= i). Scores are scaled by `scale` = query_pre_attn_scalar^-0.5.
//
// Two implementations with the same mathematics:
//  - attention_forward / attention_backward (exact): the probabilities of a whole query tile are
//    formed at once and, for training, kept as [batch, heads, seq, seq]. O(seq^2) memory; the
//    reference the tiled kernels are tested against.
//  - flash_attention_forward / flash_attention_backward (tiled, what the model trains with): the
//    FlashAttention-2 scheme. The forward walks the visible keys of a query tile one key tile at a
//    time with an online softmax (running row max and sum, the output rescaled as the max grows)
//    and keeps only each row's log-sum-exp; the backward recomputes the probabilities tile by tile
//    from it. Memory is O(seq) per head.
// Both visit only the key tiles inside the causal / window band: a query tile's keys start one
// window before its first row and stop at its last, so a sliding layer costs O(seq * window), a
// full layer O(seq^2).
#pragma once

#include <gemma3/core/blas.hpp>
#include <gemma3/core/tensor.hpp>
#include "attention_shape.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

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

// ---------------------------------------------------------------------------------------------
// Tiled attention (FlashAttention-2 scheme).

namespace detail {
inline constexpr Index flash_query_tile = 64;  // query rows per tile
inline constexpr Index flash_key_tile = 64;    // keys per tile

// Visible columns [lo, hi) of query i in a key tile of `cols` keys starting at j0 (empty when hi <= lo).
inline std::pair<Index, Index> visible_columns(const AttentionShape& s, Index i, Index j0, Index cols) {
    return {std::max<Index>(s.first_key(i) - j0, 0), std::min<Index>(i - j0 + 1, cols)};
}

// Queries that see key j are [j, last_query(j)].
inline Index last_query(const AttentionShape& s, Index j) {
    return s.window > 0 ? std::min<Index>(s.seq - 1, j + s.window - 1) : s.seq - 1;
}

// p [rows, cols] holds scale * q k^T of query rows i0.. and keys j0..; replaces it by the
// probabilities exp(score - lse_i), exactly 0 where masked.
template <class T>
void probabilities_from_lse(MatrixView<T> p, const AttentionShape& s, Index i0, Index j0, const T* lse) {
    for (Index r = 0; r < p.rows(); ++r) {
        const auto [lo, hi] = visible_columns(s, i0 + r, j0, p.cols());
        auto row = p.row(r);
        if (hi <= lo) {
            row.setZero();
            continue;
        }
        row.head(lo).setZero();
        row.tail(p.cols() - hi).setZero();
        row.segment(lo, hi - lo) = (row.segment(lo, hi - lo).array() - lse[r]).exp().matrix();
    }
}

// dp [rows, cols] = dO v^T on entry; on exit dS = p * (dP - delta_i), the gradient w.r.t. the scaled
// scores (0 where masked, since p is).
template <class T>
void score_gradient(MatrixView<T> dp, ConstMatrixView<T> p, const T* delta) {
    for (Index r = 0; r < dp.rows(); ++r) dp.row(r) = (p.row(r).array() * (dp.row(r).array() - delta[r])).matrix();
}
}  // namespace detail

// out [tokens, heads*head_dim] = softmax(mask(scale * q k^T)) v, as attention_forward, without
// storing probabilities. lse: nullptr (inference), or [batch, heads, seq] receiving each row's
// log-sum-exp of its scaled visible scores, which flash_attention_backward needs.
template <class T>
void flash_attention_forward(ConstMatrixView<T> q, ConstMatrixView<T> k, ConstMatrixView<T> v, const AttentionShape& s,
                             MatrixView<T> out, T* lse) {
    const Index seq = s.seq, dh = s.head_dim, br = detail::flash_query_tile, bc = detail::flash_key_tile;
    const Index tiles = (seq + br - 1) / br;
    const T scale = static_cast<T>(s.scale);
#pragma omp parallel
    {
        RowMatrix<T> scores(br, bc), acc(br, dh);
        Eigen::Array<T, Eigen::Dynamic, 1> row_max(br), row_sum(br);
#pragma omp for collapse(3) schedule(dynamic)
        for (Index b = 0; b < s.batch; ++b) {
            for (Index h = 0; h < s.heads; ++h) {
                for (Index tile = 0; tile < tiles; ++tile) {
                    const Index g = h / s.heads_per_kv(), i0 = tile * br, rows = std::min(br, seq - i0);
                    const auto qi = row_block(sub_view(q, b * seq, h * dh, seq, dh), i0, rows);
                    const auto kh = sub_view(k, b * seq, g * dh, seq, dh);
                    const auto vh = sub_view(v, b * seq, g * dh, seq, dh);
                    auto o = matrix_view(acc.data(), rows, dh);
                    o.setZero();
                    row_max.head(rows).setConstant(-std::numeric_limits<T>::infinity());
                    row_sum.head(rows).setZero();
                    const Index key_end = i0 + rows;
                    for (Index j0 = s.first_key(i0); j0 < key_end; j0 += bc) {
                        const Index cols = std::min(bc, key_end - j0);
                        auto p = matrix_view(scores.data(), rows, cols);
                        gemm(qi, Op::none, row_block(kh, j0, cols), Op::transpose, p, scale);
                        for (Index r = 0; r < rows; ++r) {
                            const auto [lo, hi] = detail::visible_columns(s, i0 + r, j0, cols);
                            auto row = p.row(r);
                            if (hi <= lo) {  // this row sees none of these keys
                                row.setZero();
                                continue;
                            }
                            row.head(lo).setZero();
                            row.tail(cols - hi).setZero();
                            auto visible = row.segment(lo, hi - lo).array();
                            const T new_max = std::max(row_max(r), visible.maxCoeff());
                            const T rescale = std::exp(row_max(r) - new_max);  // 0 on the row's first keys
                            visible = (visible - new_max).exp();
                            row_sum(r) = row_sum(r) * rescale + visible.sum();
                            row_max(r) = new_max;
                            o.row(r) *= rescale;
                        }
                        gemm(as_const(p), Op::none, row_block(vh, j0, cols), Op::none, o, T(1), T(1));
                    }
                    // Every row sees at least its own key, so row_sum > 0.
                    auto oi = row_block(sub_view(out, b * seq, h * dh, seq, dh), i0, rows);
                    oi = (o.array().colwise() / row_sum.head(rows)).matrix();
                    if (lse) {
                        T* l = lse + (b * s.heads + h) * seq + i0;
                        for (Index r = 0; r < rows; ++r) l[r] = row_max(r) + std::log(row_sum(r));
                    }
                }
            }
        }
    }
}

// Gradients of flash_attention_forward from its output and log-sum-exps; dq, dk and dv are
// overwritten. With delta_i = dO_i . O_i (= sum_j dP_ij P_ij) and P recomputed as exp(S - lse):
//   dV = P^T dO,  dS = P * (dO V^T - delta),  dQ = scale dS K,  dK = scale dS^T Q.
// Two passes keep it deterministic and independent of the thread count without atomics: one task
// per (sequence, kv head, key tile) sums dK and dV over the query tiles and query heads that see
// those keys, in a fixed order; one task per (sequence, head, query tile) sums dQ over its keys.
// The probabilities are recomputed in both (FlashAttention-2 fuses them and adds dQ atomically).
template <class T>
void flash_attention_backward(ConstMatrixView<T> q, ConstMatrixView<T> k, ConstMatrixView<T> v, ConstMatrixView<T> out,
                              const T* lse, ConstMatrixView<T> d_out, const AttentionShape& s, MatrixView<T> dq,
                              MatrixView<T> dk, MatrixView<T> dv) {
    const Index seq = s.seq, dh = s.head_dim, br = detail::flash_query_tile, bc = detail::flash_key_tile;
    const Index query_tiles = (seq + br - 1) / br, key_tiles = (seq + bc - 1) / bc;
    const T scale = static_cast<T>(s.scale);
    // delta [batch, heads, seq]: O(seq) per head, like lse.
    Buffer<T> delta(static_cast<std::size_t>(s.batch * s.heads * seq));
#pragma omp parallel
    {
#pragma omp for collapse(2)
        for (Index b = 0; b < s.batch; ++b) {
            for (Index h = 0; h < s.heads; ++h) {
                const auto oh = sub_view(out, b * seq, h * dh, seq, dh), doh = sub_view(d_out, b * seq, h * dh, seq, dh);
                T* d = delta.data() + (b * s.heads + h) * seq;
                for (Index i = 0; i < seq; ++i) d[i] = oh.row(i).dot(doh.row(i));
            }
        }
        RowMatrix<T> p_tile(br, bc), dp_tile(br, bc);
        // Pass 1: dK and dV of one key tile.
#pragma omp for collapse(3) schedule(dynamic)
        for (Index b = 0; b < s.batch; ++b) {
            for (Index g = 0; g < s.kv_heads; ++g) {
                for (Index tile = 0; tile < key_tiles; ++tile) {
                    const Index j0 = tile * bc, cols = std::min(bc, seq - j0);
                    const auto kj = row_block(sub_view(k, b * seq, g * dh, seq, dh), j0, cols);
                    const auto vj = row_block(sub_view(v, b * seq, g * dh, seq, dh), j0, cols);
                    auto dkj = row_block(sub_view(dk, b * seq, g * dh, seq, dh), j0, cols);
                    auto dvj = row_block(sub_view(dv, b * seq, g * dh, seq, dh), j0, cols);
                    dkj.setZero();
                    dvj.setZero();
                    const Index query_end = detail::last_query(s, j0 + cols - 1) + 1;
                    for (Index h = g * s.heads_per_kv(); h < (g + 1) * s.heads_per_kv(); ++h) {
                        const auto qh = sub_view(q, b * seq, h * dh, seq, dh), doh = sub_view(d_out, b * seq, h * dh, seq, dh);
                        const Index row = (b * s.heads + h) * seq;
                        for (Index i0 = j0; i0 < query_end; i0 += br) {
                            const Index rows = std::min(br, query_end - i0);
                            const auto qi = row_block(qh, i0, rows), doi = row_block(doh, i0, rows);
                            auto p = matrix_view(p_tile.data(), rows, cols), dp = matrix_view(dp_tile.data(), rows, cols);
                            gemm(qi, Op::none, kj, Op::transpose, p, scale);
                            detail::probabilities_from_lse(p, s, i0, j0, lse + row + i0);
                            gemm(as_const(p), Op::transpose, doi, Op::none, dvj, T(1), T(1));
                            gemm(doi, Op::none, vj, Op::transpose, dp);
                            detail::score_gradient(dp, as_const(p), delta.data() + row + i0);
                            gemm(as_const(dp), Op::transpose, qi, Op::none, dkj, scale, T(1));
                        }
                    }
                }
            }
        }
        // Pass 2: dQ of one query tile, over the key tiles it sees (as in the forward).
#pragma omp for collapse(3) schedule(dynamic)
        for (Index b = 0; b < s.batch; ++b) {
            for (Index h = 0; h < s.heads; ++h) {
                for (Index tile = 0; tile < query_tiles; ++tile) {
                    const Index g = h / s.heads_per_kv(), i0 = tile * br, rows = std::min(br, seq - i0);
                    const auto qi = row_block(sub_view(q, b * seq, h * dh, seq, dh), i0, rows);
                    const auto doi = row_block(sub_view(d_out, b * seq, h * dh, seq, dh), i0, rows);
                    const auto kh = sub_view(k, b * seq, g * dh, seq, dh);
                    const auto vh = sub_view(v, b * seq, g * dh, seq, dh);
                    auto dqi = row_block(sub_view(dq, b * seq, h * dh, seq, dh), i0, rows);
                    dqi.setZero();
                    const Index row = (b * s.heads + h) * seq + i0, key_end = i0 + rows;
                    for (Index j0 = s.first_key(i0); j0 < key_end; j0 += bc) {
                        const Index cols = std::min(bc, key_end - j0);
                        auto p = matrix_view(p_tile.data(), rows, cols), dp = matrix_view(dp_tile.data(), rows, cols);
                        gemm(qi, Op::none, row_block(kh, j0, cols), Op::transpose, p, scale);
                        detail::probabilities_from_lse(p, s, i0, j0, lse + row);
                        gemm(doi, Op::none, row_block(vh, j0, cols), Op::transpose, dp);
                        detail::score_gradient(dp, as_const(p), delta.data() + row);
                        gemm(as_const(dp), Op::none, row_block(kh, j0, cols), Op::none, dqi, scale, T(1));
                    }
                }
            }
        }
    }
}

}  // namespace gemma3
