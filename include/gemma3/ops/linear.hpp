// Bias-free linear layer with PyTorch's weight layout [out, in]: y = x W^T.
//
// docs/model.md §1: every projection of Gemma 3 is one of these. Backward: dx = dy W, dW += dy^T x.
//
// Precision. In float and double the products are plain gemm() calls. Mixed precision
// (Model<C, Cpu<bf16>>) lives here, at the products, so the passes in forward.hpp and backward.hpp stay
// one code for every precision: while a Bf16Products scope is active on the calling thread, every
// linear_product() in float takes its two operands rounded to bfloat16 (round to nearest even) —
// weights from the model's bf16 copy, refreshed once per optimizer step (or, with the widened bf16
// kernel of blas.hpp, which needs no copy, rounded on the way in like the rest, or read in place
// when they are all bf16 values already), activations and gradients rounded on the way in — and
// accumulates and writes fp32. These are the CUDA engine's rounding points (cuda/model.cuh: bf16
// weights and bf16 activations wherever they feed a matrix product, fp32 accumulation and fp32
// product outputs); the norms, softmax, attention, RoPE, loss and the residual stream stay fp32, and
// weight gradients accumulate in fp32.
#pragma once

#include <gemma3/core/blas.hpp>
#include <gemma3/core/tensor.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <type_traits>

namespace gemma3 {

// A bfloat16 copy of a model's fp32 weights, element for element in the same layout; copy may be
// null (no copy: operands are rounded on the way in). Without a copy, master_is_bf16 says that every
// master weight is a bf16 value already (weights loaded from a bf16 checkpoint, as inference has
// them): the widened products then read the weights in place, with nothing to round.
struct Bf16WeightCopy {
    const float* master = nullptr;
    const bf16* copy = nullptr;
    std::size_t size = 0;
    bool master_is_bf16 = false;
};

namespace detail {
inline thread_local const Bf16WeightCopy* active_bf16_products = nullptr;
}

// While alive, linear_product() in float on this thread multiplies in bf16 (see above), reading
// operands that lie inside `weights.master` from `weights.copy`; in double it rounds the operands to
// bf16 values and multiplies exactly (a reference for tests). Scopes nest; the previous is restored.
class Bf16Products {
public:
    explicit Bf16Products(const Bf16WeightCopy& weights) : previous_(detail::active_bf16_products) {
        detail::active_bf16_products = &weights;
    }
    ~Bf16Products() { detail::active_bf16_products = previous_; }
    Bf16Products(const Bf16Products&) = delete;
    Bf16Products& operator=(const Bf16Products&) = delete;

    static bool active() { return detail::active_bf16_products != nullptr; }

private:
    const Bf16WeightCopy* previous_;
};

namespace detail {
// Calls f with `m` as the bf16 products read it: when it lies inside the master weights, from the
// weight copy, or in place as Bf16Values when the master holds bf16 values; otherwise as it is.
template <class V, class F>
void with_product_operand(const V& m, const Bf16WeightCopy& weights, F&& f) {
    if constexpr (std::is_same_v<typename V::Scalar, float> && !std::is_same_v<V, Bf16Values>) {
        const auto address = [](const float* p) { return reinterpret_cast<std::uintptr_t>(p); };
        const bool inside = weights.master != nullptr && m.size() > 0 && address(m.data()) >= address(weights.master) &&
                            address(m.data() + (m.rows() - 1) * m.outerStride() + m.cols()) <=
                                address(weights.master + weights.size);
        if (inside && weights.copy != nullptr) {
            const auto offset = static_cast<std::size_t>(m.data() - weights.master);
            f(ConstMatrixView<bf16>(weights.copy + offset, m.rows(), m.cols(), Eigen::OuterStride<>(m.outerStride())));
            return;
        }
        if (inside && weights.master_is_bf16) {
            f(Bf16Values(ConstMatrixView<float>(m.data(), m.rows(), m.cols(), Eigen::OuterStride<>(m.outerStride()))));
            return;
        }
    }
    f(m);
}
}  // namespace detail

// gemm() of a layer's product, in the precision of the active scope (see the top of this file). An
// operand stored in bf16 (a product input mixed precision keeps so) makes it a bf16 product.
template <class A, class B, class C>
void linear_product(const A& a, Op op_a, const B& b, Op op_b, C&& c, typename std::remove_cvref_t<C>::Scalar alpha = 1,
                    typename std::remove_cvref_t<C>::Scalar beta = 0) {
    using T = typename std::remove_cvref_t<C>::Scalar;
    constexpr bool stored_bf16 = std::is_same_v<typename A::Scalar, bf16> || std::is_same_v<typename B::Scalar, bf16>;
    static_assert(!stored_bf16 || std::is_same_v<T, float>, "linear_product: bf16 operands give a float product");
    const auto* weights = detail::active_bf16_products;
    if (stored_bf16 || (weights && a.size() > 0 && b.size() > 0)) {
        if constexpr (std::is_same_v<T, float>) {
            // Operands inside the master weights are read from the copy (or in place), others
            // rounded on the way in.
            static const Bf16WeightCopy no_copy{};
            const Bf16WeightCopy& copy = weights ? *weights : no_copy;
            detail::with_product_operand(a, copy, [&](const auto& x) {
                detail::with_product_operand(b, copy, [&](const auto& y) { gemm_bf16_values(x, op_a, y, op_b, c, alpha, beta); });
            });
            return;
        } else {
            // Double under a bf16 scope: the same roundings of the operands, exact products otherwise.
            // The tests' reference for the mixed-precision arithmetic (tests/test_bf16.cpp).
            const auto rounded = [](const auto& m) {
                return RowMatrix<double>(m.unaryExpr([](double v) { return double(float(bf16(float(v)))); }));
            };
            gemm(rounded(a), op_a, rounded(b), op_b, std::forward<C>(c), alpha, beta);
            return;
        }
    }
    if constexpr (!stored_bf16) gemm(a, op_a, b, op_b, std::forward<C>(c), alpha, beta);
}

// y [tokens, out] = x [tokens, in] * W^T, W [out, in]. x may be stored in bf16 (Activations::bf16_act).
template <class T, class X = ConstMatrixView<T>>
void linear_forward(const X& x, ConstMatrixView<T> weight, MatrixView<T> y) {
    linear_product(x, Op::none, weight, Op::transpose, y);
}

// Calls f with `m` as the products that share it read it (a layer's dy, the classifier's d_logits:
// each enters two): in float under a bf16 scope, its bf16 values made once (blas.hpp's
// with_bf16_values; `already_bf16_values`: m holds them, so none are made), otherwise m as it is.
template <class T, class F>
void with_shared_operand(ConstMatrixView<T> m, bool already_bf16_values, F&& f) {
    if constexpr (std::is_same_v<T, float>) {
        if (Bf16Products::active() && m.size() > 0) {
            if (already_bf16_values) {
                with_bf16_values(Bf16Values(m), f);
            } else {
                with_bf16_values(m, f);
            }
            return;
        }
    }
    f(m);
}

// dx [tokens, in] = dy W (overwritten, or added to when accumulate_dx); dW [out, in] += dy^T x.
// x may be stored in bf16 (Activations::bf16_act). In mixed precision dy is rounded to bf16 once for
// both products.
template <class T, class X>
void linear_backward(const X& x, ConstMatrixView<T> weight, ConstMatrixView<T> dy, MatrixView<T> dx,
                     MatrixView<T> d_weight, bool accumulate_dx = false) {
    with_shared_operand<T>(dy, /*already_bf16_values=*/false, [&](const auto& dy_operand) {
        linear_product(dy_operand, Op::none, weight, Op::none, dx, T(1), accumulate_dx ? T(1) : T(0));
        linear_product(dy_operand, Op::transpose, x, Op::none, d_weight, T(1), T(1));
    });
}

}  // namespace gemma3
