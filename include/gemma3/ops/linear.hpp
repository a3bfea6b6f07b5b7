// Bias-free linear layer with PyTorch's weight layout [out, in]: y = x W^T.
//
// docs/model.md §1: every projection of Gemma 3 is one of these. Backward: dx = dy W, dW += dy^T x.
#pragma once

#include "../blas.hpp"
#include "../tensor.hpp"

namespace gemma3 {

// y [tokens, out] = x [tokens, in] * W^T, W [out, in].
template <class T>
void linear_forward(ConstMatrixView<T> x, ConstMatrixView<T> weight, MatrixView<T> y) {
    gemm(x, Op::none, weight, Op::transpose, y);
}

// dx [tokens, in] = dy W (overwritten, or added to when accumulate_dx); dW [out, in] += dy^T x.
template <class T>
void linear_backward(ConstMatrixView<T> x, ConstMatrixView<T> weight, ConstMatrixView<T> dy, MatrixView<T> dx,
                     MatrixView<T> d_weight, bool accumulate_dx = false) {
    gemm(dy, Op::none, weight, Op::none, dx, T(1), accumulate_dx ? T(1) : T(0));
    gemm(dy, Op::transpose, x, Op::none, d_weight, T(1), T(1));
}

}  // namespace gemma3
