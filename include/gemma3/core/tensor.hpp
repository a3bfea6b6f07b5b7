// Plain views over contiguous buffers.
//
// Every activation and weight in the CPU back end is a row-major matrix in a buffer we own. A view
// is an Eigen::Map over it: Eigen supplies the expression templates for the element-wise math,
// and the large products go to BLAS through blas.hpp. Views carry an outer stride so that a block
// of columns (one attention head inside a [tokens, heads*head_dim] matrix) is a view too.
#pragma once

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace gemma3 {

using Index = Eigen::Index;

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
using MatrixView = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstMatrixView = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class T>
using VectorView = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstVectorView = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>;

// A rows × cols view starting at `data`, consecutive rows `stride` elements apart.
template <class T>
MatrixView<T> matrix_view(T* data, Index rows, Index cols, Index stride = -1) {
    return MatrixView<T>(data, rows, cols, Eigen::OuterStride<>(stride < 0 ? cols : stride));
}
template <class T>
ConstMatrixView<T> matrix_view(const T* data, Index rows, Index cols, Index stride = -1) {
    return ConstMatrixView<T>(data, rows, cols, Eigen::OuterStride<>(stride < 0 ? cols : stride));
}
// A read-only view, also over a mutable buffer.
template <class T>
ConstMatrixView<T> const_view(const T* data, Index rows, Index cols, Index stride = -1) {
    return ConstMatrixView<T>(data, rows, cols, Eigen::OuterStride<>(stride < 0 ? cols : stride));
}
template <class T>
ConstMatrixView<T> as_const(const MatrixView<T>& m) {
    return ConstMatrixView<T>(m.data(), m.rows(), m.cols(), Eigen::OuterStride<>(m.outerStride()));
}

// The rows x cols block of a view whose top-left element is (row, col), as a view.
template <class T>
MatrixView<T> sub_view(MatrixView<T> m, Index row, Index col, Index rows, Index cols) {
    return MatrixView<T>(m.data() + row * m.outerStride() + col, rows, cols, Eigen::OuterStride<>(m.outerStride()));
}
template <class T>
ConstMatrixView<T> sub_view(const ConstMatrixView<T>& m, Index row, Index col, Index rows, Index cols) {
    return ConstMatrixView<T>(m.data() + row * m.outerStride() + col, rows, cols,
                              Eigen::OuterStride<>(m.outerStride()));
}

// Columns [first, first + count) of a view, as a view.
template <class T>
MatrixView<T> column_block(MatrixView<T> m, Index first, Index count) {
    return MatrixView<T>(m.data() + first, m.rows(), count, Eigen::OuterStride<>(m.outerStride()));
}
template <class T>
ConstMatrixView<T> column_block(const ConstMatrixView<T>& m, Index first, Index count) {
    return ConstMatrixView<T>(m.data() + first, m.rows(), count, Eigen::OuterStride<>(m.outerStride()));
}

// Rows [first, first + count) of a view, as a view.
template <class T>
MatrixView<T> row_block(MatrixView<T> m, Index first, Index count) {
    return MatrixView<T>(m.data() + first * m.outerStride(), count, m.cols(),
                         Eigen::OuterStride<>(m.outerStride()));
}
template <class T>
ConstMatrixView<T> row_block(const ConstMatrixView<T>& m, Index first, Index count) {
    return ConstMatrixView<T>(m.data() + first * m.outerStride(), count, m.cols(),
                              Eigen::OuterStride<>(m.outerStride()));
}

// Heap storage aligned for SIMD loads (Eigen's allocator aligns to its packet size).
template <class T>
using Buffer = std::vector<T, Eigen::aligned_allocator<T>>;

}  // namespace gemma3
