// Rotary position embedding, split-half ("rotate_half") convention.
//
// docs/model.md §5: for position p and pair d < head_dim/2, a = p * theta^(-2d/head_dim) and
//   out[d]        = x[d] cos a - x[d + half] sin a
//   out[d + half] = x[d + half] cos a + x[d] sin a.
// The backward pass is the rotation by -a (§9.8). Angles are computed in double and rounded once to
// the compute type: HF evaluates them in fp32, which at position p carries an error of about
// p * 2^-24 radians; the difference to HF's fp32 model is far below fp32 tolerance at training lengths.
#pragma once

#include <gemma3/core/tensor.hpp>

#include <cmath>
#include <span>
#include <vector>

namespace gemma3 {

// cos and sin of every (position, pair) for one base theta: [positions, head_dim / 2] each.
template <class T>
struct RopeTable {
    int head_dim = 0;
    Index positions = 0;
    Buffer<T> cos, sin;

    RopeTable() = default;
    RopeTable(double theta, int head_dim_, Index positions_)
        : head_dim(head_dim_), positions(positions_) {
        const int half = head_dim / 2;
        cos.resize(static_cast<std::size_t>(positions * half));
        sin.resize(cos.size());
        std::vector<double> inv_freq(static_cast<std::size_t>(half));
        for (int d = 0; d < half; ++d) inv_freq[static_cast<std::size_t>(d)] = 1.0 / std::pow(theta, 2.0 * d / head_dim);
        for (Index p = 0; p < positions; ++p) {
            for (int d = 0; d < half; ++d) {
                const double angle = static_cast<double>(p) * inv_freq[static_cast<std::size_t>(d)];
                cos[static_cast<std::size_t>(p * half + d)] = static_cast<T>(std::cos(angle));
                sin[static_cast<std::size_t>(p * half + d)] = static_cast<T>(std::sin(angle));
            }
        }
    }
};

namespace detail {
// Rotates every head of every row of x (rows = tokens, cols = heads * head_dim) in place.
// Row i is at position positions[i]. sign = +1 forward, -1 for the backward rotation.
template <class T>
void rope_rotate(MatrixView<T> x, int head_dim, std::span<const std::int32_t> positions, const RopeTable<T>& table,
                 T sign) {
    const int half = head_dim / 2;
    const Index heads = x.cols() / head_dim;
#pragma omp parallel for schedule(static) if (x.rows() > 1)  // one row: as rmsnorm_forward
    for (Index i = 0; i < x.rows(); ++i) {
        const std::size_t p = static_cast<std::size_t>(positions[static_cast<std::size_t>(i)]);
        const T* c = table.cos.data() + p * half;
        const T* s = table.sin.data() + p * half;
        for (Index h = 0; h < heads; ++h) {
            T* v = &x(i, h * head_dim);
            for (int d = 0; d < half; ++d) {
                const T lo = v[d], hi = v[d + half];
                const T sn = sign * s[d];
                v[d] = lo * c[d] - hi * sn;
                v[d + half] = hi * c[d] + lo * sn;
            }
        }
    }
}
}  // namespace detail

template <class T>
void rope_forward(MatrixView<T> x, int head_dim, std::span<const std::int32_t> positions, const RopeTable<T>& table) {
    detail::rope_rotate(x, head_dim, positions, table, T(1));
}

// In place: the gradient with respect to the input of rope_forward.
template <class T>
void rope_backward(MatrixView<T> dx, int head_dim, std::span<const std::int32_t> positions,
                   const RopeTable<T>& table) {
    detail::rope_rotate(dx, head_dim, positions, table, T(-1));
}

}  // namespace gemma3
