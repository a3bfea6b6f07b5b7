// Gemma RMSNorm over the rows of a matrix: y = x * r * (1 + w), r = 1 / sqrt(mean(x^2) + eps).
//
// docs/model.md §3.2 (forward) and §9.3 (backward). The learned weight is stored zero-centred, so a freshly
// initialised norm (w = 0) is the identity scale. Used for the four norms of every block and the
// final norm (rows of emb_dim), and for the q/k norms (rows of head_dim, one weight shared by all
// heads and positions: the callers pass each head's column block of the fused q/k/v projection,
// [tokens, head_dim] with the row stride of the whole matrix, and keep the statistics head by head).
#pragma once

#include <gemma3/core/tensor.hpp>

#include <omp.h>

#include <cmath>
#include <vector>

namespace gemma3 {

// y and x may not alias. `rstd` (one per row) is saved for the backward pass.
template <class T>
void rmsnorm_forward(ConstMatrixView<T> x, const T* weight, T eps, MatrixView<T> y, T* rstd) {
    const Index n = x.cols();
    const Eigen::Array<T, 1, Eigen::Dynamic> one_plus_w = ConstVectorView<T>(weight, n).transpose().array() + T(1);
    // One row (decoding a token) stays on this thread: waking the team costs more than the row.
#pragma omp parallel for schedule(static) if (x.rows() > 1)
    for (Index i = 0; i < x.rows(); ++i) {
        const T r = T(1) / std::sqrt(x.row(i).squaredNorm() / T(n) + eps);
        rstd[i] = r;
        y.row(i) = (x.row(i).array() * r * one_plus_w).matrix();
    }
}

// dx = r * g' - (r^3 / n) * x * sum_k(g'_k x_k), with g' = dy * (1 + w);  dw += sum_rows dy * x * r.
// dx is overwritten (it may alias dy only if the caller no longer needs dy); d_weight is accumulated.
template <class T>
void rmsnorm_backward(ConstMatrixView<T> x, const T* weight, const T* rstd, ConstMatrixView<T> dy, MatrixView<T> dx,
                      T* d_weight) {
    const Index rows = x.rows();
    const Index n = x.cols();
    // The weight gradient first (it reads dy, which dx may overwrite): each thread sums a fixed
    // range of rows into its own vector, then the vectors are added in thread order, so the result
    // is deterministic for a given thread count.
    std::vector<Eigen::Array<T, 1, Eigen::Dynamic>> partial;
#pragma omp parallel
    {
#pragma omp single
        partial.assign(static_cast<std::size_t>(omp_get_num_threads()), Eigen::Array<T, 1, Eigen::Dynamic>::Zero(n));
        auto& mine = partial[static_cast<std::size_t>(omp_get_thread_num())];
#pragma omp for schedule(static)
        for (Index i = 0; i < rows; ++i) mine += dy.row(i).array() * x.row(i).array() * rstd[i];
    }
    auto dw = VectorView<T>(d_weight, n).transpose().array();
    for (const auto& p : partial) dw += p;
    const Eigen::Array<T, 1, Eigen::Dynamic> one_plus_w = ConstVectorView<T>(weight, n).transpose().array() + T(1);
#pragma omp parallel
    {
        Eigen::Array<T, 1, Eigen::Dynamic> g(n);
#pragma omp for schedule(static)
        for (Index i = 0; i < rows; ++i) {
            const T r = rstd[i];
            g = dy.row(i).array() * one_plus_w;
            const T dot = (g * x.row(i).array()).sum();
            dx.row(i) = (g * r - x.row(i).array() * (r * r * r * dot / T(n))).matrix();
        }
    }
}

}  // namespace gemma3
