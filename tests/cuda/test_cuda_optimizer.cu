// The optimizer kernels (include/gemma3/cuda/ops/optimizer.cuh) and the casts (ops/cast.cuh)
// against the CPU: global_norm in double and torch-semantics AdamW<float> (include/gemma3/train/optimizer.hpp).
//
// Bounds (u_f = 2^-24, u_d = 2^-53): the squared norm is summed in double on both sides, in different
// orders, from squares that are exact in double: each sum of n positive terms is within (n - 1) u_d of
// the exact one, and the reference squares its norm (2 more roundings): (2n + 2) u_d relative. AdamW
// runs the same fp32 formula as the CPU; the compilers may contract a multiply-add into one fma
// differently, which changes a result by at most a few u_f of its magnitude per step:
// |p - p_cpu| <= 8 steps u_f (|p| + 4 lr / (1 - beta1^t)) and |m - m_cpu| <= 8 steps u_f |m| (same for v).
// The bf16 compute copy must be exactly the round-to-nearest-even of the master weight.
#include "kernel_test_support.hpp"

#include <gemma3/cuda/ops/cast.cuh>
#include <gemma3/cuda/ops/optimizer.cuh>
#include <gemma3/train/optimizer.hpp>

#include <cmath>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::fp32_unit;

// The AdamW constants as TrainingState::clip_and_step derives them (and as AdamW<float>::step does).
cu::kernels::AdamWConstants constants(const gemma3::AdamWSettings& s, double lr, std::int64_t step, float clip) {
    cu::kernels::AdamWConstants c;
    c.clip = clip;
    c.decay = static_cast<float>(1.0 - lr * s.weight_decay);
    c.step_size = static_cast<float>(lr / (1.0 - std::pow(s.beta1, static_cast<double>(step))));
    c.inv_bias2_sqrt = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(s.beta2, static_cast<double>(step))));
    c.beta1 = static_cast<float>(s.beta1);
    c.beta2 = static_cast<float>(s.beta2);
    c.one_minus_beta1 = 1.0f - c.beta1;
    c.one_minus_beta2 = 1.0f - c.beta2;
    c.eps = static_cast<float>(s.eps);
    return c;
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("squared_norm: deterministic double sum of squares, vector body and scalar tail") {
    for (const std::size_t n : {std::size_t{3}, std::size_t{100'003}}) {
        const std::vector<float> values = cu::test::random_floats(n, -2.0f, 2.0f, static_cast<std::uint32_t>(n));
        const auto device_values = cu::DeviceBuffer<float>::from_host(values);
        cu::DeviceBuffer<double> partials(cu::kernels::squared_norm_blocks), result(1);
        cu::Stream stream;
        cu::squared_norm(stream, device_values.data(), n, partials.data(), result.data());
        const double got = result.download()[0];
        const double expected = gemma3::global_norm(values.data(), n) * gemma3::global_norm(values.data(), n);
        const double bound = (2.0 * static_cast<double>(n) + 2) * 0x1p-53 * expected;
        cu::test::check_within("squared_norm", {got}, {expected}, {bound});
        cu::squared_norm(stream, device_values.data(), n, partials.data(), result.data());
        CHECK(result.download()[0] == got);  // same bits again
    }
}

GEMMA3_CUDA_TEST_CASE("adamw_step: three steps with clipping match torch-semantics AdamW<float>, bf16 copy rounded once") {
    const std::size_t n = 1003;  // not a multiple of the 4-element runs
    const gemma3::AdamWSettings settings{0.9, 0.95, 1e-8, 0.1};
    const double lr = 3e-3;
    std::vector<float> params = cu::test::random_floats(n, -1.0f, 1.0f, 1u);
    auto master = cu::test::guarded_from<float>(params);
    auto compute = cu::test::guarded_nan<__nv_bfloat16>(n);
    auto m = cu::test::guarded_from<float>(std::vector<float>(n, 0.0f));
    auto v = cu::test::guarded_from<float>(std::vector<float>(n, 0.0f));
    gemma3::AdamW<float> cpu(n, settings);
    cu::Stream stream;
    for (int step = 1; step <= 3; ++step) {
        std::vector<float> grads = cu::test::random_floats(n, -0.5f, 0.5f, 10u + static_cast<std::uint32_t>(step));
        grads[5] = 0.0f;  // v stays 0 for this element in step 1: the update is 0 / (0 + eps)
        const auto device_grads = cu::DeviceBuffer<float>::from_host(grads);
        const float clip = step == 2 ? 0.3f : 1.0f;
        cu::adamw_step(stream, master.data(), compute.data(), device_grads.data(), m.data(), v.data(), n,
                       constants(settings, lr, step, clip));
        for (float& g : grads) g *= clip;  // clip_grad_norm scales the gradients before the step
        cpu.step(params.data(), grads.data(), lr);
    }
    const double steps = 3;
    std::vector<double> p_bound(n), m_bound(n), v_bound(n);
    for (std::size_t i = 0; i < n; ++i) {
        p_bound[i] = 8 * steps * fp32_unit * (std::fabs(params[i]) + 4 * lr / (1 - std::pow(settings.beta1, steps)));
        m_bound[i] = 8 * steps * fp32_unit * std::fabs(cpu.first_moment()[i]) + 1e-30;
        v_bound[i] = 8 * steps * fp32_unit * std::fabs(cpu.second_moment()[i]) + 1e-30;
    }
    const std::vector<double> master_got = cu::test::download_checked(master, "master");
    cu::test::check_within("adamw master", master_got, cu::test::to_double(params), p_bound);
    cu::test::check_within("adamw m", cu::test::download_checked(m, "m"),
                           cu::test::to_double(std::vector<float>(cpu.first_moment().begin(), cpu.first_moment().end())), m_bound);
    cu::test::check_within("adamw v", cu::test::download_checked(v, "v"),
                           cu::test::to_double(std::vector<float>(cpu.second_moment().begin(), cpu.second_moment().end())), v_bound);
    const std::vector<__nv_bfloat16> copy = compute.download();
    std::size_t mismatched = 0;
    for (std::size_t i = 0; i < n; ++i)
        mismatched += cu::test::bf16_bits(copy[i]) != gemma3::float_to_bf16(static_cast<float>(master_got[i]));
    CHECK(mismatched == 0);
}

GEMMA3_CUDA_TEST_CASE("cast: fp32 to bf16 rounds to nearest even (to inf past the largest bf16), bf16 to fp32 is exact, strided") {
    const int rows = 7, cols = 13, in_ld = 16, out_ld = 15;
    std::vector<float> values = cu::test::random_floats(static_cast<std::size_t>(rows) * in_ld, -100.0f, 100.0f, 3u);
    values[2] = 3.4e38f;                            // beyond the largest finite bf16: +inf
    values[3] = gemma3::bf16_to_float(0x3F81) + 0x1p-8f;  // halfway between two bf16 values: to the even one
    const auto device_in = cu::DeviceBuffer<float>::from_host(values);
    auto out = cu::test::guarded_nan<__nv_bfloat16>(static_cast<std::size_t>(rows) * out_ld);
    cu::Stream stream;
    cu::cast<float, __nv_bfloat16>(stream, device_in.data(), in_ld, out.data(), out_ld, rows, cols);
    CHECK(out.corruption_report().empty());
    const std::vector<__nv_bfloat16> got = out.download();
    std::size_t wrong = 0;
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c)
            wrong += cu::test::bf16_bits(got[static_cast<std::size_t>(r) * out_ld + c]) !=
                     gemma3::float_to_bf16(values[static_cast<std::size_t>(r) * in_ld + c]);
    CHECK(wrong == 0);
    CHECK(cu::test::bf16_bits(got[2]) == 0x7F80);
    CHECK(cu::test::bf16_bits(got[3]) == 0x3F82);

    // Back to fp32 (contiguous, 10003 elements: rows of 4096 and a tail).
    std::vector<float> rounded = cu::test::bf16_values(10'003, -5.0f, 5.0f, 4u);
    const auto device_bf16 = cu::DeviceBuffer<__nv_bfloat16>::from_host(cu::test::to_bf16(rounded));
    auto widened = cu::test::guarded_nan<float>(rounded.size());
    cu::cast<__nv_bfloat16, float>(stream, device_bf16.data(), widened.data(), rounded.size());
    CHECK(widened.corruption_report().empty());
    CHECK(widened.download() == rounded);
}
