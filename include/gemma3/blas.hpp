// The large matrix products, routed to CBLAS (OpenBLAS).
//
// On this project's reference machine OpenBLAS's sgemm runs at ~88% of the FMA peak, against about
// two thirds of that for Eigen's own product (docs/design.md §2), so every product whose
// size grows with the model goes through here. Small per-head products inside parallel loops use
// the same call; OpenBLAS runs them on the calling thread when invoked inside an OpenMP region.
#pragma once

#include "tensor.hpp"

#include <cblas.h>

#include <stdexcept>
#include <string>
#include <type_traits>

namespace gemma3 {

enum class Op { none, transpose };

// c = alpha * op(a) * op(b) + beta * c. The arguments are row-major Eigen matrices or views
// (anything with data(), rows(), cols() and outerStride()); c must be writable.
template <class A, class B, class C>
void gemm(const A& a, Op op_a, const B& b, Op op_b, C&& c, typename std::remove_cvref_t<C>::Scalar alpha = 1,
          typename std::remove_cvref_t<C>::Scalar beta = 0) {
    using T = typename std::remove_cvref_t<C>::Scalar;
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "gemm: float or double");
    static_assert(std::is_same_v<typename A::Scalar, T> && std::is_same_v<typename B::Scalar, T>,
                  "gemm: operands must have the same scalar type");
    static_assert(std::remove_cvref_t<A>::IsRowMajor && std::remove_cvref_t<B>::IsRowMajor &&
                      std::remove_cvref_t<C>::IsRowMajor,
                  "gemm: row-major operands expected");
    const Index m = op_a == Op::none ? a.rows() : a.cols();
    const Index k = op_a == Op::none ? a.cols() : a.rows();
    const Index k_b = op_b == Op::none ? b.rows() : b.cols();
    const Index n = op_b == Op::none ? b.cols() : b.rows();
    if (k != k_b || c.rows() != m || c.cols() != n) {
        throw std::logic_error("gemm: shape mismatch: op(a) is " + std::to_string(m) + "x" + std::to_string(k) +
                               ", op(b) is " + std::to_string(k_b) + "x" + std::to_string(n) + ", c is " +
                               std::to_string(c.rows()) + "x" + std::to_string(c.cols()));
    }
    if (m == 0 || n == 0) return;
    if (k == 0) {  // BLAS would leave c untouched; the product of empty matrices is zero
        if (beta == T(0)) {
            c.setZero();
        } else {
            c *= beta;
        }
        return;
    }
    if (m == 1) {
        // A single row (decoding one token): a matrix-vector product, which BLAS does at memory
        // bandwidth, while a 1-row sgemm pays for packing the whole of b.
        const auto rows_b = static_cast<blasint>(b.rows()), cols_b = static_cast<blasint>(b.cols());
        const auto tb_gemv = op_b == Op::none ? CblasTrans : CblasNoTrans;  // y = op(b)^T x
        const auto ldb = static_cast<blasint>(b.outerStride());
        const auto inc_x = static_cast<blasint>(op_a == Op::none ? 1 : a.outerStride());
        if constexpr (std::is_same_v<T, float>) {
            cblas_sgemv(CblasRowMajor, tb_gemv, rows_b, cols_b, alpha, b.data(), ldb, a.data(), inc_x, beta, c.data(), 1);
        } else {
            cblas_dgemv(CblasRowMajor, tb_gemv, rows_b, cols_b, alpha, b.data(), ldb, a.data(), inc_x, beta, c.data(), 1);
        }
        return;
    }
    const auto ta = op_a == Op::none ? CblasNoTrans : CblasTrans;
    const auto tb = op_b == Op::none ? CblasNoTrans : CblasTrans;
    const auto lda = static_cast<blasint>(a.outerStride());
    const auto ldb = static_cast<blasint>(b.outerStride());
    const auto ldc = static_cast<blasint>(c.outerStride());
    if constexpr (std::is_same_v<T, float>) {
        cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(m), static_cast<blasint>(n),
                    static_cast<blasint>(k), alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
    } else {
        cblas_dgemm(CblasRowMajor, ta, tb, static_cast<blasint>(m), static_cast<blasint>(n),
                    static_cast<blasint>(k), alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
    }
}

}  // namespace gemma3
