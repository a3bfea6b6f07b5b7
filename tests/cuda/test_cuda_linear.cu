// The linear layer on the device (include/gemma3/cuda/ops/linear.cuh: cuBLASLt, bf16 operands, fp32
// accumulation) against the CPU linear layer in double (include/gemma3/ops/linear.hpp).
//
// Bounds (u_b = 2^-8, u_f = 2^-24, u_g = 2^-23 per operation of a cuBLASLt fp32 accumulation, which
// may truncate): an output element of a product with inner dimension k is within
// (k + 2) u_g (sum|a b| + |c|) of the exact value (beta c added in), plus u_b |y| when stored in bf16.
#include "kernel_test_support.hpp"

#include <gemma3/cuda/ops/linear.cuh>
#include <gemma3/ops/linear.hpp>

#include <cmath>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::bf16_unit;
using cu::test::gemm_unit;

// |a| |b|^T style magnitudes: m[i][j] = sum_l |a[i][l]| |b[j][l]| (op = none) for the bounds.
std::vector<double> magnitude(const std::vector<double>& a, int rows, int inner, const std::vector<double>& b, int cols,
                              bool b_transposed) {
    std::vector<double> m(static_cast<std::size_t>(rows) * cols, 0.0);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j)
            for (int l = 0; l < inner; ++l)
                m[static_cast<std::size_t>(i) * cols + j] +=
                    std::fabs(a[static_cast<std::size_t>(i) * inner + l]) *
                    std::fabs(b_transposed ? b[static_cast<std::size_t>(j) * inner + l] : b[static_cast<std::size_t>(l) * cols + j]);
    return m;
}

void check_linear(int tokens, int in, int out, bool accumulate_dx, std::uint32_t seed) {
    const std::vector<float> x = cu::test::bf16_values(static_cast<std::size_t>(tokens) * in, -1.0f, 1.0f, seed);
    const std::vector<float> w = cu::test::bf16_values(static_cast<std::size_t>(out) * in, -1.0f, 1.0f, seed + 1);
    const std::vector<float> dy = cu::test::bf16_values(static_cast<std::size_t>(tokens) * out, -1.0f, 1.0f, seed + 2);
    const std::vector<float> dx_initial = cu::test::random_floats(static_cast<std::size_t>(tokens) * in, -1.0f, 1.0f, seed + 3);
    const std::vector<float> dw_initial = cu::test::random_floats(static_cast<std::size_t>(out) * in, -1.0f, 1.0f, seed + 4);
    auto device_x = cu::test::guarded_from<__nv_bfloat16>(x);
    auto device_w = cu::test::guarded_from<__nv_bfloat16>(w);
    auto device_dy = cu::test::guarded_from<__nv_bfloat16>(dy);
    auto y = cu::test::guarded_nan<__nv_bfloat16>(static_cast<std::size_t>(tokens) * out);
    auto dx = accumulate_dx ? cu::test::guarded_from<float>(dx_initial) : cu::test::guarded_nan<float>(dx_initial.size());
    auto dw = cu::test::guarded_from<float>(dw_initial);
    cu::Gemm gemm;
    cu::Stream stream;
    cu::linear_forward(gemm, stream, cu::matrix_view<const __nv_bfloat16>(device_x.data(), tokens, in),
                       cu::matrix_view<const __nv_bfloat16>(device_w.data(), out, in), cu::matrix_view(y.data(), tokens, out));
    cu::linear_backward(gemm, stream, cu::matrix_view<const __nv_bfloat16>(device_x.data(), tokens, in),
                        cu::matrix_view<const __nv_bfloat16>(device_w.data(), out, in),
                        cu::matrix_view<const __nv_bfloat16>(device_dy.data(), tokens, out), cu::matrix_view(dx.data(), tokens, in),
                        cu::matrix_view(dw.data(), out, in), accumulate_dx);

    const std::vector<double> xd = cu::test::to_double(x), wd = cu::test::to_double(w), dyd = cu::test::to_double(dy);
    std::vector<double> y_ref(static_cast<std::size_t>(tokens) * out), dx_ref = cu::test::to_double(dx_initial),
        dw_ref = cu::test::to_double(dw_initial);
    gemma3::linear_forward<double>(gemma3::const_view(xd.data(), tokens, in), gemma3::const_view(wd.data(), out, in),
                                   gemma3::matrix_view(y_ref.data(), tokens, out));
    gemma3::linear_backward<double>(gemma3::const_view(xd.data(), tokens, in), gemma3::const_view(wd.data(), out, in),
                                    gemma3::const_view(dyd.data(), tokens, out), gemma3::matrix_view(dx_ref.data(), tokens, in),
                                    gemma3::matrix_view(dw_ref.data(), out, in), accumulate_dx);

    // Magnitudes: y = x W^T, dx = dy W, dW = dy^T x.
    const std::vector<double> my = magnitude(xd, tokens, in, wd, out, true);
    std::vector<double> dyt(static_cast<std::size_t>(out) * tokens);
    const std::vector<double> mdx = magnitude(dyd, tokens, out, wd, in, false);
    for (int t = 0; t < tokens; ++t)
        for (int o = 0; o < out; ++o) dyt[static_cast<std::size_t>(o) * tokens + t] = dyd[static_cast<std::size_t>(t) * out + o];
    const std::vector<double> mdw = magnitude(dyt, out, tokens, xd, in, false);
    std::vector<double> by(y_ref.size()), bdx(dx_ref.size()), bdw(dw_ref.size());
    for (std::size_t i = 0; i < by.size(); ++i) by[i] = (in + 2) * gemm_unit * my[i] + bf16_unit * 1.0001 * std::fabs(y_ref[i]);
    for (std::size_t i = 0; i < bdx.size(); ++i)
        bdx[i] = (out + 2) * gemm_unit * (mdx[i] + (accumulate_dx ? std::fabs(dx_initial[i]) : 0.0));
    for (std::size_t i = 0; i < bdw.size(); ++i) bdw[i] = (tokens + 2) * gemm_unit * (mdw[i] + std::fabs(dw_initial[i]));
    cu::test::check_within("linear_forward y", cu::test::download_checked(y, "y"), y_ref, by);
    cu::test::check_within("linear_backward dx", cu::test::download_checked(dx, "dx"), dx_ref, bdx);
    cu::test::check_within("linear_backward dW (accumulated)", cu::test::download_checked(dw, "dW"), dw_ref, bdw);
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("linear forward and backward: odd shapes, dW accumulated onto earlier micro-batches") {
    check_linear(37, 29, 45, false, 1u);
}

GEMMA3_CUDA_TEST_CASE("linear backward adds dx onto an existing gradient when asked") {
    check_linear(16, 40, 24, true, 2u);
}
