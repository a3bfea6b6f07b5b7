// GeGLU: z = gelu_tanh(gate) * up, the gate being the projection that passes through GELU.
//
// docs/model.md §3.5 and §9.5. gelu_tanh(x) = 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi): PyTorch's
// gelu(approximate="tanh"), HF's "gelu_pytorch_tanh".
#pragma once

#include <gemma3/core/tensor.hpp>

#include <cmath>

namespace gemma3 {

namespace detail {
inline constexpr double gelu_c = 0.7978845608028654;  // sqrt(2 / pi)
inline constexpr double gelu_a = 0.044715;
}  // namespace detail

template <class T>
T gelu_tanh(T x) {
    const T c = T(detail::gelu_c), a = T(detail::gelu_a);
    return T(0.5) * x * (T(1) + std::tanh(c * (x + a * x * x * x)));
}

// d/dx gelu_tanh(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2), t = tanh(c (x + a x^3)).
template <class T>
T gelu_tanh_derivative(T x) {
    const T c = T(detail::gelu_c), a = T(detail::gelu_a);
    const T t = std::tanh(c * (x + a * x * x * x));
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * c * (T(1) + T(3) * a * x * x);
}

// z = gelu_tanh(gate) * up, element-wise over [tokens, hidden_dim]. Written as Eigen array
// expressions so that tanh is vectorised (Eigen's float tanh is a rational approximation accurate
// to a few ulp; the scalar libm call it replaces took a tenth of a training step).
template <class T>
void geglu_forward(ConstMatrixView<T> gate, ConstMatrixView<T> up, MatrixView<T> z) {
    const T c = T(detail::gelu_c), a = T(detail::gelu_a);
#pragma omp parallel for schedule(static) if (z.rows() > 1)  // one row: as rmsnorm_forward
    for (Index i = 0; i < z.rows(); ++i) {
        const auto g = gate.row(i).array();
        z.row(i) = (T(0.5) * g * (T(1) + (c * (g + a * g.cube())).tanh()) * up.row(i).array()).matrix();
    }
}

// d_gate = dz * up * gelu'(gate), d_up = dz * gelu(gate), with
// gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2), t = tanh(c (x + a x^3)).
// Outputs are overwritten.
template <class T>
void geglu_backward(ConstMatrixView<T> gate, ConstMatrixView<T> up, ConstMatrixView<T> dz, MatrixView<T> d_gate,
                    MatrixView<T> d_up) {
    const T c = T(detail::gelu_c), a = T(detail::gelu_a);
#pragma omp parallel
    {
        Eigen::Array<T, 1, Eigen::Dynamic> t(dz.cols());
#pragma omp for schedule(static)
        for (Index i = 0; i < dz.rows(); ++i) {
            const auto g = gate.row(i).array();
            const auto d = dz.row(i).array();
            t = (c * (g + a * g.cube())).tanh();
            d_up.row(i) = (d * T(0.5) * g * (T(1) + t)).matrix();
            d_gate.row(i) = (d * up.row(i).array() *
                             (T(0.5) * (T(1) + t) + T(0.5) * g * (T(1) - t.square()) * c * (T(1) + T(3) * a * g.square())))
                                .matrix();
        }
    }
}

}  // namespace gemma3
