// The fused classifier (include/gemma3/cuda/ops/cross_entropy.cuh) against the CPU classifier in
// double (include/gemma3/ops/cross_entropy.hpp): head product, softmax cross-entropy, its gradient,
// dh and the accumulated head gradient, chunked over rows (chunks that do not divide the rows).
//
// Bounds, first order (u_b = 2^-8, u_f = 2^-24, u_g = 2^-23 per operation of a cuBLASLt fp32
// accumulation, which may truncate):
//  - a logit is an fp32 sum of D products of bf16 values: error d_ij <= (D + 2) u_g sum|h_i W_j|;
//    D_i = max_j d_ij shifts every probability of row i by at most 2 D_i relative and the row's
//    loss by at most 2 D_i; the fp32 softmax itself adds (V + 16) u_f (one exp and one add per
//    element, a few merges) and the loss's final sum 4 u_f (|max| + |logit_y|);
//  - d_logits = (p - onehot) grad_scale is rounded to bf16: error
//    grad_scale p (2 D_i + (V + 16) u_f) + u_b |d_logits|;
//  - dh = d_logits W and d_head += d_logits^T h add those errors times |W| (|h|) plus their fp32
//    summation error (terms + chunks + 2) u_g sum of magnitudes.
#include "kernel_test_support.hpp"

#include <gemma3/cuda/ops/cross_entropy.cuh>
#include <gemma3/ops/cross_entropy.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::bf16_unit;
using cu::test::fp32_unit;
using cu::test::gemm_unit;

void check_classifier(int rows, int dim, int vocab, int chunk, float magnitude, bool gradients, std::uint32_t seed) {
    CAPTURE(chunk);
    const std::vector<float> h = cu::test::bf16_values(static_cast<std::size_t>(rows) * dim, -magnitude, magnitude, seed);
    const std::vector<float> head = cu::test::bf16_values(static_cast<std::size_t>(vocab) * dim, -1.0f, 1.0f, seed + 1);
    const std::vector<float> d_head_initial = cu::test::random_floats(static_cast<std::size_t>(vocab) * dim, -1e-3f, 1e-3f, seed + 2);
    std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
    std::mt19937 generator(seed + 3);
    for (auto& t : targets) t = static_cast<std::int32_t>(generator() % static_cast<unsigned>(vocab));
    targets[0] = vocab - 1;
    const float grad_scale = 0.5f / static_cast<float>(rows);

    auto device_h = cu::test::guarded_from<__nv_bfloat16>(h);
    auto device_head = cu::test::guarded_from<__nv_bfloat16>(head);
    const auto device_targets = cu::DeviceBuffer<int>::from_host(std::vector<int>(targets.begin(), targets.end()));
    auto dh = cu::test::guarded_nan<float>(static_cast<std::size_t>(rows) * dim);
    auto d_head = cu::test::guarded_from<float>(d_head_initial);
    auto loss_total = cu::test::GuardedBuffer<double>(1);
    loss_total.upload(std::vector<double>{0.0});
    cu::DeviceBuffer<float> logits(static_cast<std::size_t>(chunk) * vocab);
    cu::DeviceBuffer<__nv_bfloat16> d_logits(static_cast<std::size_t>(chunk) * vocab);
    cu::DeviceBuffer<double> row_loss(static_cast<std::size_t>(rows));
    const cu::ClassifierWorkspace workspace{logits.data(), d_logits.data(), row_loss.data(), chunk};
    cu::Gemm gemm;
    cu::Stream stream;
    cu::classifier_forward_backward(gemm, stream, cu::matrix_view<const __nv_bfloat16>(device_h.data(), rows, dim, dim),
                                    cu::matrix_view<const __nv_bfloat16>(device_head.data(), vocab, dim, dim), device_targets.data(),
                                    grad_scale, gradients ? dh.data() : nullptr, dim,
                                    gradients ? cu::matrix_view(d_head.data(), vocab, dim, dim) : cu::MatrixView<float>{}, workspace,
                                    loss_total.data());

    // CPU reference.
    const std::vector<double> hd = cu::test::to_double(h), headd = cu::test::to_double(head);
    std::vector<double> dh_ref(static_cast<std::size_t>(rows) * dim), d_head_ref = cu::test::to_double(d_head_initial);
    gemma3::Buffer<double> scratch;
    const double loss_ref =
        gemma3::classifier_forward_backward<double>(gemma3::const_view(hd.data(), rows, dim), gemma3::const_view(headd.data(), vocab, dim),
                                                    targets, grad_scale, gradients ? dh_ref.data() : nullptr,
                                                    gradients ? d_head_ref.data() : nullptr, scratch, 7)
            .loss_sum;

    // Bounds from the exact logits and probabilities.
    double loss_bound = 1e-12;
    std::vector<double> dh_bound(dh_ref.size(), 0.0), d_head_bound(d_head_ref.size(), 0.0);
    const int chunks = (rows + chunk - 1) / chunk;
    for (int i = 0; i < rows; ++i) {
        std::vector<double> logit(static_cast<std::size_t>(vocab)), error(logit.size());
        double worst = 0;
        for (int j = 0; j < vocab; ++j) {
            double sum = 0, mag = 0;
            for (int d = 0; d < dim; ++d) {
                const double product = hd[static_cast<std::size_t>(i) * dim + d] * headd[static_cast<std::size_t>(j) * dim + d];
                sum += product;
                mag += std::fabs(product);
            }
            logit[static_cast<std::size_t>(j)] = sum;
            worst = std::max(worst, (dim + 2) * gemm_unit * mag);
        }
        const double max_logit = *std::max_element(logit.begin(), logit.end());
        double total = 0;
        for (double x : logit) total += std::exp(x - max_logit);
        const double rel = 2 * worst + (vocab + 16) * fp32_unit;
        loss_bound += 2 * worst + (vocab + 16) * fp32_unit +
                      4 * fp32_unit * (std::fabs(max_logit) + std::fabs(logit[static_cast<std::size_t>(targets[static_cast<std::size_t>(i)])]));
        for (int j = 0; j < vocab; ++j) {
            const double p = std::exp(logit[static_cast<std::size_t>(j)] - max_logit) / total;
            const double g = (p - (j == targets[static_cast<std::size_t>(i)] ? 1.0 : 0.0)) * grad_scale;
            const double g_bound = grad_scale * p * rel + bf16_unit * 1.0001 * std::fabs(g) + 4 * fp32_unit * std::fabs(g);
            for (int d = 0; d < dim; ++d) {
                const double w = std::fabs(headd[static_cast<std::size_t>(j) * dim + d]), x = std::fabs(hd[static_cast<std::size_t>(i) * dim + d]);
                dh_bound[static_cast<std::size_t>(i) * dim + d] += g_bound * w + (vocab + 2) * gemm_unit * std::fabs(g) * w;
                d_head_bound[static_cast<std::size_t>(j) * dim + d] += g_bound * x + (rows + chunks + 2) * gemm_unit * std::fabs(g) * x;
            }
        }
    }
    const std::vector<double> loss_got = cu::test::download_checked(loss_total, "loss_total");
    cu::test::check_within("classifier loss sum", loss_got, {loss_ref}, {loss_bound});
    if (gradients) {
        for (std::size_t k = 0; k < d_head_bound.size(); ++k) d_head_bound[k] = d_head_bound[k] * 1.01 + 2 * fp32_unit * std::fabs(d_head_ref[k]);
        for (double& b : dh_bound) b *= 1.01;
        cu::test::check_within("classifier dh", cu::test::download_checked(dh, "dh"), dh_ref, dh_bound);
        cu::test::check_within("classifier d_head", cu::test::download_checked(d_head, "d_head"), d_head_ref, d_head_bound);
    } else {
        // Loss only: neither gradient is touched.
        const std::vector<double> untouched = cu::test::download_checked(dh, "dh");
        CHECK(std::all_of(untouched.begin(), untouched.end(), [](double x) { return std::isnan(x); }));
        CHECK(cu::test::download_checked(d_head, "d_head") == cu::test::to_double(d_head_initial));
    }
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("classifier: loss, dh and head gradient over chunks of 16 rows that do not divide 37, odd vocabulary") {
    check_classifier(37, 24, 301, 16, 1.0f, true, 1u);
}

GEMMA3_CUDA_TEST_CASE("classifier: large logits (tens) stay finite and accurate (max-subtracted online softmax)") {
    check_classifier(20, 40, 129, 20, 6.0f, true, 2u);
}

GEMMA3_CUDA_TEST_CASE("classifier: evaluation computes only the loss, one row per chunk") {
    check_classifier(9, 16, 77, 1, 1.0f, false, 3u);
}
