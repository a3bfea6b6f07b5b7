// RMSNorm kernels (include/gemma3/cuda/ops/rmsnorm.cuh) against the CPU RMSNorm in double
// (include/gemma3/ops/rmsnorm.hpp), on the emulator and on the device.
//
// Bounds (u_b = 2^-8, u_f = 2^-24; n = row length):
//  - forward: the fp32 sum of squares has relative error <= n u_f, rsqrtf a few ulp, and the scaling
//    three roundings, so y is within (n + 16) u_f |y| of the exact value before the output's own
//    rounding (u_b |y| for bf16, u_f |y| for fp32 plus the residual add);
//  - backward: dx = r g' - x r^3/n sum(g' x) with g' = dy (1 + w): within
//    (n + 10) u_f (r |g'| + |x| r^3/n sum|g' x|) plus the output rounding;
//    dw accumulates rows * (dy x r) in fp32: within (rows + 8) u_f sum|dy x r| + u_f |dw|.
#include "kernel_test_support.hpp"

#include <gemma3/cuda/ops/rmsnorm.cuh>
#include <gemma3/ops/rmsnorm.hpp>

#include <cmath>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::bf16_unit;
using cu::test::fp32_unit;

// A [tokens, ld] matrix whose rows hold `heads` rows of `cols` at column `offset` + h * cols.
struct HeadMatrix {
    int tokens, heads, cols, ld, offset;
    std::size_t size() const { return static_cast<std::size_t>(tokens) * ld; }
    std::size_t at(int row, int c) const {  // row = token * heads + head
        return static_cast<std::size_t>(row / heads) * ld + offset + (row % heads) * cols + c;
    }
    int rows() const { return tokens * heads; }
};

// The CPU forward on the rows of `m` (double), returning y (rows x cols) and rstd per row.
void reference_forward(const HeadMatrix& m, const std::vector<double>& x, const std::vector<double>& w, double eps,
                       std::vector<double>& y, std::vector<double>& rstd) {
    std::vector<double> rows(static_cast<std::size_t>(m.rows()) * m.cols);
    for (int r = 0; r < m.rows(); ++r)
        for (int c = 0; c < m.cols; ++c) rows[static_cast<std::size_t>(r) * m.cols + c] = x[m.at(r, c)];
    y.assign(rows.size(), 0.0);
    rstd.assign(static_cast<std::size_t>(m.rows()), 0.0);
    gemma3::rmsnorm_forward<double>(gemma3::const_view(rows.data(), m.rows(), m.cols), w.data(), eps,
                                    gemma3::matrix_view(y.data(), m.rows(), m.cols), rstd.data());
}

template <class In, class Out>
void check_forward(const HeadMatrix& xm, const HeadMatrix& ym, bool with_residual, std::uint32_t seed) {
    const float eps = 1e-6f;
    std::vector<float> x = cu::test::random_floats(xm.size(), -3.0f, 3.0f, seed);
    if constexpr (!std::is_same_v<In, float>) x = cu::test::bf16_values(xm.size(), -3.0f, 3.0f, seed);
    const std::vector<float> w = cu::test::bf16_values(static_cast<std::size_t>(xm.cols), -0.5f, 0.5f, seed + 1);
    const std::vector<float> residual = cu::test::random_floats(ym.size(), -20.0f, 20.0f, seed + 2);

    auto device_x = cu::test::guarded_from<In>(x);
    auto device_w = cu::test::guarded_from<__nv_bfloat16>(w);
    auto device_residual = cu::test::guarded_from<float>(residual);
    auto device_y = cu::test::guarded_nan<Out>(ym.size());
    auto device_rstd = cu::test::guarded_nan<float>(static_cast<std::size_t>(xm.rows()));
    cu::Stream stream;
    cu::rmsnorm_forward<In, Out>(stream, cu::head_rows<const In>(device_x.data() + xm.offset, xm.ld, xm.heads), device_w.data(),
                                 eps, cu::head_rows(device_y.data() + ym.offset, ym.ld, ym.heads), device_rstd.data(), xm.tokens,
                                 xm.cols, with_residual ? device_residual.data() + ym.offset : nullptr, ym.ld);

    std::vector<double> y_ref, rstd_ref;
    reference_forward(xm, cu::test::to_double(x), cu::test::to_double(w), eps, y_ref, rstd_ref);
    const std::vector<double> y = cu::test::download_checked(device_y, "y");
    const std::vector<double> rstd = cu::test::download_checked(device_rstd, "rstd");
    const double n = xm.cols;
    std::vector<double> got, expected, bound;
    std::vector<bool> in_rows(ym.size(), false);
    for (int r = 0; r < xm.rows(); ++r) {
        for (int c = 0; c < xm.cols; ++c) {
            const std::size_t i = ym.at(r, c);
            in_rows[i] = true;
            const double branch = y_ref[static_cast<std::size_t>(r) * xm.cols + c];
            const double total = branch + (with_residual ? residual[i] : 0.0);
            got.push_back(y[i]);
            expected.push_back(total);
            bound.push_back((n + 16) * fp32_unit * std::fabs(branch) +
                            (std::is_same_v<Out, float> ? fp32_unit : bf16_unit) * std::fabs(total) * 1.0001);
        }
    }
    cu::test::check_within("rmsnorm_forward y", got, expected, bound);
    std::vector<double> rstd_bound(rstd_ref.size());
    for (std::size_t r = 0; r < rstd_ref.size(); ++r) rstd_bound[r] = (n / 2 + 8) * fp32_unit * rstd_ref[r];
    cu::test::check_within("rmsnorm_forward rstd", rstd, rstd_ref, rstd_bound);
    // Elements of the output matrix outside the rows (padding columns) must be left untouched (NaN).
    std::size_t touched = 0;
    for (std::size_t i = 0; i < y.size(); ++i) touched += !in_rows[i] && !std::isnan(y[i]);
    CHECK(touched == 0);
}

template <class In, class Dy, class Dx>
void check_backward(const HeadMatrix& xm, const HeadMatrix& dym, const HeadMatrix& dxm, bool with_add, std::uint32_t seed) {
    const double eps = 1e-6;
    std::vector<float> x = cu::test::random_floats(xm.size(), -2.0f, 2.0f, seed);
    if constexpr (!std::is_same_v<In, float>) x = cu::test::bf16_values(xm.size(), -2.0f, 2.0f, seed);
    std::vector<float> dy = cu::test::random_floats(dym.size(), -1.0f, 1.0f, seed + 1);
    if constexpr (!std::is_same_v<Dy, float>) dy = cu::test::bf16_values(dym.size(), -1.0f, 1.0f, seed + 1);
    const std::vector<float> w = cu::test::bf16_values(static_cast<std::size_t>(xm.cols), -0.5f, 0.5f, seed + 2);
    const std::vector<float> dx_add = cu::test::random_floats(dxm.size(), -1.0f, 1.0f, seed + 3);
    const std::vector<float> dw_initial = cu::test::random_floats(static_cast<std::size_t>(xm.cols), -1.0f, 1.0f, seed + 4);

    // rstd as the forward kernel would hand it over: fp32, here from the double reference.
    std::vector<double> y_unused, rstd_ref;
    reference_forward(xm, cu::test::to_double(x), cu::test::to_double(w), eps, y_unused, rstd_ref);
    std::vector<float> rstd(rstd_ref.begin(), rstd_ref.end());

    auto device_x = cu::test::guarded_from<In>(x);
    auto device_dy = cu::test::guarded_from<Dy>(dy);
    auto device_w = cu::test::guarded_from<__nv_bfloat16>(w);
    auto device_rstd = cu::test::guarded_from<float>(rstd);
    // dx either starts as dx_add (the in-place accumulation the model uses) or as NaN.
    auto device_dx = with_add && std::is_same_v<Dx, float> ? cu::test::guarded_from<Dx>(dx_add) : cu::test::guarded_nan<Dx>(dxm.size());
    auto device_dx_add = cu::test::guarded_from<float>(dx_add);
    auto device_dw = cu::test::guarded_from<float>(dw_initial);
    cu::DeviceBuffer<float> workspace(cu::rmsnorm_backward_workspace(xm.rows(), xm.cols));
    const float* add = nullptr;
    if (with_add) add = std::is_same_v<Dx, float> ? reinterpret_cast<const float*>(device_dx.data()) : device_dx_add.data();
    cu::Stream stream;
    cu::rmsnorm_backward<In, Dy, Dx>(stream, cu::head_rows<const In>(device_x.data() + xm.offset, xm.ld, xm.heads), device_w.data(),
                                     device_rstd.data(), cu::head_rows<const Dy>(device_dy.data() + dym.offset, dym.ld, dym.heads),
                                     cu::head_rows(device_dx.data() + dxm.offset, dxm.ld, dxm.heads), device_dw.data(),
                                     workspace.data(), xm.tokens, xm.cols, add == nullptr ? nullptr : add + dxm.offset, dxm.ld);

    // CPU reference on the gathered rows.
    const int rows = xm.rows(), n = xm.cols;
    std::vector<double> xr(static_cast<std::size_t>(rows) * n), dyr(xr.size()), dxr(xr.size());
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < n; ++c) {
            xr[static_cast<std::size_t>(r) * n + c] = x[xm.at(r, c)];
            dyr[static_cast<std::size_t>(r) * n + c] = dy[dym.at(r, c)];
        }
    const std::vector<double> wd = cu::test::to_double(w);
    std::vector<double> dw_ref = cu::test::to_double(dw_initial);
    std::vector<double> rstd_used(rstd.begin(), rstd.end());
    gemma3::rmsnorm_backward<double>(gemma3::const_view(xr.data(), rows, n), wd.data(), rstd_used.data(),
                                     gemma3::const_view(dyr.data(), rows, n), gemma3::matrix_view(dxr.data(), rows, n), dw_ref.data());

    const std::vector<double> dx = cu::test::download_checked(device_dx, "dx");
    const std::vector<double> dw = cu::test::download_checked(device_dw, "dw");
    std::vector<double> got, expected, bound;
    std::vector<double> dw_magnitude(static_cast<std::size_t>(n), 0.0);
    const double u_out = std::is_same_v<Dx, float> ? fp32_unit : bf16_unit;
    for (int r = 0; r < rows; ++r) {
        const double rr = rstd_used[static_cast<std::size_t>(r)];
        double dot_magnitude = 0;
        for (int c = 0; c < n; ++c) {
            const std::size_t k = static_cast<std::size_t>(r) * n + c;
            dot_magnitude += std::fabs(dyr[k] * (1 + wd[static_cast<std::size_t>(c)]) * xr[k]);
            dw_magnitude[static_cast<std::size_t>(c)] += std::fabs(dyr[k] * xr[k] * rr);
        }
        for (int c = 0; c < n; ++c) {
            const std::size_t k = static_cast<std::size_t>(r) * n + c;
            const double add_value = with_add ? dx_add[dxm.at(r, c)] : 0.0;
            const double exact = dxr[k] + add_value;
            got.push_back(dx[dxm.at(r, c)]);
            expected.push_back(exact);
            const double terms = rr * std::fabs(dyr[k] * (1 + wd[static_cast<std::size_t>(c)])) +
                                 std::fabs(xr[k]) * rr * rr * rr / n * dot_magnitude;
            bound.push_back((n + 10) * fp32_unit * terms + u_out * std::fabs(exact) * 1.0001 + fp32_unit * std::fabs(add_value));
        }
    }
    cu::test::check_within("rmsnorm_backward dx", got, expected, bound);
    std::vector<double> dw_bound(static_cast<std::size_t>(n));
    for (int c = 0; c < n; ++c)
        dw_bound[static_cast<std::size_t>(c)] = (rows + 8) * fp32_unit * dw_magnitude[static_cast<std::size_t>(c)] +
                                                 fp32_unit * std::fabs(dw_ref[static_cast<std::size_t>(c)]) * 2;
    cu::test::check_within("rmsnorm_backward dw", dw, dw_ref, dw_bound);
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("rmsnorm_forward: rows of emb_dim, fp32 residual stream in, bf16 out (16-byte runs)") {
    check_forward<float, __nv_bfloat16>({37, 1, 72, 72, 0}, {37, 1, 72, 72, 0}, false, 10u);
}

GEMMA3_CUDA_TEST_CASE("rmsnorm_forward: q/k norm rows of head_dim inside a wider matrix at an offset") {
    // 3 heads of 40 starting at column 8 of rows of 136; output rows of 120.
    check_forward<__nv_bfloat16, __nv_bfloat16>({29, 3, 40, 136, 8}, {29, 3, 40, 120, 0}, false, 20u);
}

GEMMA3_CUDA_TEST_CASE("rmsnorm_forward: odd row length with the residual add into fp32 (post-norm)") {
    check_forward<__nv_bfloat16, float>({19, 1, 33, 33, 0}, {19, 1, 33, 35, 1}, true, 30u);
}

GEMMA3_CUDA_TEST_CASE("rmsnorm_backward: fp32 residual rows, dx accumulated in place, dw added to existing values") {
    check_backward<float, float, float>({37, 1, 72, 72, 0}, {37, 1, 72, 72, 0}, {37, 1, 72, 72, 0}, true, 40u);
}

GEMMA3_CUDA_TEST_CASE("rmsnorm_backward: 1200 head rows (grid-stride loop), bf16 x and dx inside the q/k/v matrix") {
    check_backward<__nv_bfloat16, float, __nv_bfloat16>({300, 4, 16, 96, 0}, {300, 4, 16, 64, 0}, {300, 4, 16, 96, 0}, false, 50u);
}

GEMMA3_CUDA_TEST_CASE("rmsnorm_backward: odd row length, bf16 dx, several blocks of partial weight gradients") {
    check_backward<__nv_bfloat16, float, __nv_bfloat16>({19, 1, 33, 33, 0}, {19, 1, 33, 34, 0}, {19, 1, 33, 35, 2}, false, 60u);
}

GEMMA3_CUDA_TEST_CASE("rmsnorm_backward: the weight gradient is the same bit for bit on every run") {
    const int tokens = 64, cols = 48;
    const std::vector<float> x = cu::test::random_floats(static_cast<std::size_t>(tokens) * cols, -2.0f, 2.0f, 70u);
    const std::vector<float> dy = cu::test::random_floats(x.size(), -1.0f, 1.0f, 71u);
    const std::vector<float> rstd(static_cast<std::size_t>(tokens), 0.7f);
    const auto device_x = cu::DeviceBuffer<float>::from_host(x);
    const auto device_dy = cu::DeviceBuffer<float>::from_host(dy);
    const auto device_rstd = cu::DeviceBuffer<float>::from_host(rstd);
    const auto device_w = cu::DeviceBuffer<__nv_bfloat16>::from_host(cu::test::to_bf16(std::vector<float>(cols, 0.25f)));
    cu::DeviceBuffer<float> dx(x.size()), workspace(cu::rmsnorm_backward_workspace(tokens, cols));
    cu::Stream stream;
    std::vector<std::vector<float>> results;
    for (int run = 0; run < 3; ++run) {
        cu::DeviceBuffer<float> dw(static_cast<std::size_t>(cols));
        dw.fill_bytes(0);
        cu::rmsnorm_backward<float, float, float>(stream, cu::token_rows<const float>(device_x.data(), cols), device_w.data(),
                                                  device_rstd.data(), cu::token_rows<const float>(device_dy.data(), cols),
                                                  cu::token_rows(dx.data(), cols), dw.data(), workspace.data(), tokens, cols);
        results.push_back(dw.download());
    }
    CHECK(results[0] == results[1]);
    CHECK(results[0] == results[2]);
}
