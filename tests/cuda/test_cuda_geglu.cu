// GeGLU kernels (include/gemma3/cuda/ops/geglu.cuh) against the CPU GeGLU in double
// (include/gemma3/ops/geglu.hpp).
//
// Bound (u_b = 2^-8, u_f = 2^-24): the fp32 evaluation rounds the tanh argument (about 6 operations)
// and tanhf is accurate to a few ulp, so tanh carries an absolute error below 16 u_f (1 + |arg|)
// with arg = c (x + a x^3); every other factor adds a few u_f relative. Outputs are bf16, so an
// element is within u_b |exact| + 32 u_f M, M the sum of the magnitudes of the terms
// (0.5 |x u| (2 + |arg|) for z and d_up; the same times the derivative's factors for d_gate).
#include "kernel_test_support.hpp"

#include <gemma3/cuda/ops/geglu.cuh>
#include <gemma3/ops/geglu.hpp>

#include <cmath>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::bf16_unit;
using cu::test::fp32_unit;

void check_geglu(int tokens, int hidden, std::int64_t gate_up_ld, std::int64_t z_ld, std::uint32_t seed) {
    const std::size_t gu_size = static_cast<std::size_t>(tokens) * gate_up_ld;
    const std::vector<float> gate_up = cu::test::bf16_values(gu_size, -4.0f, 4.0f, seed);
    const std::vector<float> dz = cu::test::random_floats(static_cast<std::size_t>(tokens) * z_ld, -1.0f, 1.0f, seed + 1);
    auto device_gate_up = cu::test::guarded_from<__nv_bfloat16>(gate_up);
    auto device_dz = cu::test::guarded_from<float>(dz);
    auto z = cu::test::guarded_nan<__nv_bfloat16>(static_cast<std::size_t>(tokens) * z_ld);
    auto d_gate_up = cu::test::guarded_nan<__nv_bfloat16>(gu_size);
    cu::Stream stream;
    cu::geglu_forward(stream, device_gate_up.data(), gate_up_ld, z.data(), z_ld, tokens, hidden);
    cu::geglu_backward<float>(stream, device_gate_up.data(), gate_up_ld, device_dz.data(), z_ld, d_gate_up.data(), gate_up_ld,
                              tokens, hidden);

    const std::vector<double> gu = cu::test::to_double(gate_up), dzd = cu::test::to_double(dz);
    std::vector<double> z_ref(static_cast<std::size_t>(tokens) * hidden), d_gate_ref(z_ref.size()), d_up_ref(z_ref.size());
    const auto gate = gemma3::const_view(gu.data(), tokens, hidden, gate_up_ld);
    const auto up = gemma3::const_view(gu.data() + hidden, tokens, hidden, gate_up_ld);
    gemma3::geglu_forward<double>(gate, up, gemma3::matrix_view(z_ref.data(), tokens, hidden));
    gemma3::geglu_backward<double>(gate, up, gemma3::const_view(dzd.data(), tokens, hidden, z_ld),
                                   gemma3::matrix_view(d_gate_ref.data(), tokens, hidden),
                                   gemma3::matrix_view(d_up_ref.data(), tokens, hidden));

    const std::vector<double> z_got = cu::test::download_checked(z, "z"), dgu = cu::test::download_checked(d_gate_up, "d_gate_up");
    std::vector<double> got_z, got_dg, got_du, bz, bdg, bdu;
    const double c = 0.7978845608028654, a = 0.044715;
    for (int t = 0; t < tokens; ++t) {
        for (int j = 0; j < hidden; ++j) {
            const std::size_t k = static_cast<std::size_t>(t) * hidden + j;
            const double x = gu[static_cast<std::size_t>(t) * gate_up_ld + j];
            const double u = gu[static_cast<std::size_t>(t) * gate_up_ld + hidden + j];
            const double g = dzd[static_cast<std::size_t>(t) * z_ld + j];
            const double arg = std::fabs(c * (x + a * x * x * x));
            const double m_z = 0.5 * std::fabs(x * u) * (2 + arg);
            const double m_dg = std::fabs(g * u) * (1 + 0.5 * std::fabs(x) * (2 + arg) * c * (1 + 3 * a * x * x));
            got_z.push_back(z_got[static_cast<std::size_t>(t) * z_ld + j]);
            got_dg.push_back(dgu[static_cast<std::size_t>(t) * gate_up_ld + j]);
            got_du.push_back(dgu[static_cast<std::size_t>(t) * gate_up_ld + hidden + j]);
            bz.push_back(bf16_unit * std::fabs(z_ref[k]) * 1.0001 + 32 * fp32_unit * m_z);
            bdu.push_back(bf16_unit * std::fabs(d_up_ref[k]) * 1.0001 + 32 * fp32_unit * m_z * std::fabs(g));
            bdg.push_back(bf16_unit * std::fabs(d_gate_ref[k]) * 1.0001 + 32 * fp32_unit * m_dg * (1 + arg));
        }
    }
    cu::test::check_within("geglu_forward z", got_z, z_ref, bz);
    cu::test::check_within("geglu_backward d_gate", got_dg, d_gate_ref, bdg);
    cu::test::check_within("geglu_backward d_up", got_du, d_up_ref, bdu);
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("geglu forward and backward: 16-byte runs over gate|up of one fused product") {
    check_geglu(21, 64, 128, 64, 1u);
}

GEMMA3_CUDA_TEST_CASE("geglu forward and backward: odd hidden width and padded leading dimensions") {
    check_geglu(13, 37, 80, 41, 2u);
}
