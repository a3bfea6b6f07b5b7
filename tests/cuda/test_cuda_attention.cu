// Attention on the device (include/gemma3/cuda/ops/attention.cuh) against the CPU attention in
// double (include/gemma3/ops/attention.hpp): the training path (cuBLASLt products and the fused
// masked softmax, forward and backward) and the flash kernel for long prompts, with causal and
// sliding-window masks and grouped / multi-query heads.
//
// Bounds, first order in the roundings (u_b = 2^-8, u_f = 2^-24, u_g = 2^-23 per operation of a
// cuBLASLt fp32 accumulation, which may truncate), computed per element from the reference values:
//  - a score s_ij = scale q_i.k_j is an fp32 sum of head_dim products of bf16 values: error
//    e_ij <= (head_dim + 2) u_g scale sum|q k|; E_i = max_j e_ij moves each probability of row i by
//    at most 2 E_i relative. With the fp32 softmax and the bf16 rounding of P, |P - P_ref| <= rho_i P_ref,
//    rho_i = u_b + 2 E_i + (T + 16) u_f.
//  - out = P v: |error| <= (rho_i + (T + 4) u_g) sum_j P_ij |v_j| + u_b |out| (bf16 output).
//  - backward: dP = dO v^T (fp32, error e'_ij <= (head_dim + 2) u_g sum|dO v|), dot_i = sum_j dP P,
//    dS = P (dP - dot) rounded to bf16; the errors of P, dP and dot propagate linearly into dS
//    (the bound is written out in ds_bound below), and dq = scale dS k, dk = scale dS^T q, dv = P^T dO
//    add their fp32 summation error (terms + 2) u_g sum of magnitudes.
//  - flash: P is never rounded to bf16 and the online softmax rescales in fp32, so
//    |error| <= (2 E_i + (T + head_dim + 64) u_f) sum_j P_ij |v_j| + u_b |out|.
#include "kernel_test_support.hpp"

#include <gemma3/cuda/ops/attention.cuh>
#include <gemma3/ops/attention.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::bf16_unit;
using cu::test::fp32_unit;
using cu::test::gemm_unit;

struct Case {
    int batch, seq, heads, kv_heads, head_dim, window;
    std::uint32_t seed;

    int q_width() const { return heads * head_dim; }
    int kv_width() const { return kv_heads * head_dim; }
    int qkv_width() const { return q_width() + 2 * kv_width(); }
    int tokens() const { return batch * seq; }
    double scale() const { return 1.0 / std::sqrt(static_cast<double>(head_dim)); }
    int first_key(int i) const { return window > 0 ? std::max(0, i - window + 1) : 0; }
    cu::AttentionShape cuda_shape() const {
        return {batch, seq, heads, kv_heads, head_dim, window, static_cast<float>(scale())};
    }
    gemma3::AttentionShape cpu_shape() const {
        return {batch, seq, heads, kv_heads, head_dim, window, static_cast<double>(static_cast<float>(scale()))};
    }
};

// Inputs as the model lays them out: q and k rotated in their own matrices, v inside q|k|v.
struct Inputs {
    std::vector<float> q, k, qkv;  // bf16 values
    std::vector<double> qd, kd, vd;  // the same, v gathered into [tokens, kv_width]

    explicit Inputs(const Case& c) {
        q = cu::test::bf16_values(static_cast<std::size_t>(c.tokens()) * c.q_width(), -1.5f, 1.5f, c.seed);
        k = cu::test::bf16_values(static_cast<std::size_t>(c.tokens()) * c.kv_width(), -1.5f, 1.5f, c.seed + 1);
        qkv = cu::test::bf16_values(static_cast<std::size_t>(c.tokens()) * c.qkv_width(), -1.0f, 1.0f, c.seed + 2);
        qd = cu::test::to_double(q);
        kd = cu::test::to_double(k);
        vd.resize(static_cast<std::size_t>(c.tokens()) * c.kv_width());
        for (int t = 0; t < c.tokens(); ++t)
            for (int j = 0; j < c.kv_width(); ++j)
                vd[static_cast<std::size_t>(t) * c.kv_width() + j] =
                    qkv[static_cast<std::size_t>(t) * c.qkv_width() + c.q_width() + c.kv_width() + j];
    }
    double q_at(const Case& c, int b, int i, int h, int d) const {
        return qd[static_cast<std::size_t>(b * c.seq + i) * c.q_width() + h * c.head_dim + d];
    }
    double k_at(const Case& c, int b, int j, int g, int d) const {
        return kd[static_cast<std::size_t>(b * c.seq + j) * c.kv_width() + g * c.head_dim + d];
    }
    double v_at(const Case& c, int b, int j, int g, int d) const {
        return vd[static_cast<std::size_t>(b * c.seq + j) * c.kv_width() + g * c.head_dim + d];
    }
};

// E_i: the largest score error of query row (b, h, i) over its visible keys.
double score_error(const Case& c, const Inputs& in, int b, int h, int i) {
    const int g = h / (c.heads / c.kv_heads);
    double worst = 0;
    for (int j = c.first_key(i); j <= i; ++j) {
        double magnitude = 0;
        for (int d = 0; d < c.head_dim; ++d) magnitude += std::fabs(in.q_at(c, b, i, h, d) * in.k_at(c, b, j, g, d));
        worst = std::max(worst, (c.head_dim + 2) * gemm_unit * c.scale() * magnitude);
    }
    return worst;
}

// The CPU forward (probabilities in [batch, heads, seq, seq] order).
void reference_forward(const Case& c, const Inputs& in, std::vector<double>& out, std::vector<double>& probs) {
    out.assign(static_cast<std::size_t>(c.tokens()) * c.q_width(), 0.0);
    probs.assign(static_cast<std::size_t>(c.batch) * c.heads * c.seq * c.seq, 0.0);
    gemma3::attention_forward<double>(gemma3::const_view(in.qd.data(), c.tokens(), c.q_width()),
                                      gemma3::const_view(in.kd.data(), c.tokens(), c.kv_width()),
                                      gemma3::const_view(in.vd.data(), c.tokens(), c.kv_width()), c.cpu_shape(),
                                      gemma3::matrix_view(out.data(), c.tokens(), c.q_width()), probs.data());
}

// Bound on each output element from the per-row probability bound rho (see the header).
std::vector<double> output_bounds(const Case& c, const Inputs& in, const std::vector<double>& out, const std::vector<double>& probs,
                                  bool flash) {
    std::vector<double> bound(out.size());
    for (int b = 0; b < c.batch; ++b)
        for (int h = 0; h < c.heads; ++h) {
            const int g = h / (c.heads / c.kv_heads);
            for (int i = 0; i < c.seq; ++i) {
                const double e = score_error(c, in, b, h, i);
                const double rho = flash ? 2 * e + (c.seq + c.head_dim + 64) * fp32_unit
                                         : bf16_unit + 2 * e + (c.seq + 16) * fp32_unit + (c.seq + 4) * gemm_unit;
                for (int d = 0; d < c.head_dim; ++d) {
                    double magnitude = 0;
                    for (int j = 0; j <= i; ++j)
                        magnitude += probs[((static_cast<std::size_t>(b) * c.heads + h) * c.seq + i) * c.seq + j] *
                                     std::fabs(in.v_at(c, b, j, g, d));
                    const std::size_t k = static_cast<std::size_t>(b * c.seq + i) * c.q_width() + h * c.head_dim + d;
                    bound[k] = rho * magnitude * 1.01 + bf16_unit * std::fabs(out[k]) * 1.0001;
                }
            }
        }
    return bound;
}

struct DeviceInputs {
    cu::test::GuardedBuffer<__nv_bfloat16> q, k, qkv;
    explicit DeviceInputs(const Inputs& in)
        : q(cu::test::guarded_from<__nv_bfloat16>(in.q)), k(cu::test::guarded_from<__nv_bfloat16>(in.k)),
          qkv(cu::test::guarded_from<__nv_bfloat16>(in.qkv)) {}
    const __nv_bfloat16* v(const Case& c) const { return qkv.data() + c.q_width() + c.kv_width(); }
};

void check_training_path(const Case& c) {
    CAPTURE(c.seq);
    CAPTURE(c.window);
    CAPTURE(c.kv_heads);
    const Inputs in(c);
    const DeviceInputs dev(in);
    const std::size_t scores = static_cast<std::size_t>(c.batch) * c.heads * c.seq * c.seq;
    cu::DeviceBuffer<float> score_scratch(scores), d_probs(scores);
    cu::DeviceBuffer<__nv_bfloat16> d_scores(scores);
    auto probs = cu::test::guarded_nan<__nv_bfloat16>(scores);
    auto out = cu::test::guarded_nan<__nv_bfloat16>(static_cast<std::size_t>(c.tokens()) * c.q_width());
    cu::Gemm gemm;
    cu::Stream stream;
    cu::attention_forward(gemm, stream, c.cuda_shape(), dev.q.data(), c.q_width(), dev.k.data(), c.kv_width(), dev.v(c), c.qkv_width(),
                          score_scratch.data(), probs.data(), out.data(), c.q_width());

    std::vector<double> out_ref, probs_ref;
    reference_forward(c, in, out_ref, probs_ref);
    const std::vector<double> probs_got = cu::test::download_checked(probs, "probs");
    std::vector<double> probs_bound(scores);
    std::vector<double> rho_row(static_cast<std::size_t>(c.batch) * c.heads * c.seq);
    for (int b = 0; b < c.batch; ++b)
        for (int h = 0; h < c.heads; ++h)
            for (int i = 0; i < c.seq; ++i) {
                const std::size_t row = (static_cast<std::size_t>(b) * c.heads + h) * c.seq + i;
                rho_row[row] = bf16_unit * 1.0001 + 2 * score_error(c, in, b, h, i) + (c.seq + 16) * fp32_unit;
                for (int j = 0; j < c.seq; ++j) probs_bound[row * c.seq + j] = rho_row[row] * probs_ref[row * c.seq + j];
            }
    cu::test::check_within("attention probs", probs_got, probs_ref, probs_bound);  // masked entries: exactly 0
    cu::test::check_within("attention_forward out", cu::test::download_checked(out, "out"), out_ref,
                           output_bounds(c, in, out_ref, probs_ref, false));

    // Backward from a random output gradient, with the probabilities the device kept.
    const std::vector<float> d_out = cu::test::bf16_values(static_cast<std::size_t>(c.tokens()) * c.q_width(), -1.0f, 1.0f, c.seed + 3);
    auto device_d_out = cu::test::guarded_from<__nv_bfloat16>(d_out);
    auto dq = cu::test::guarded_nan<float>(static_cast<std::size_t>(c.tokens()) * c.q_width());
    auto dk = cu::test::guarded_nan<float>(static_cast<std::size_t>(c.tokens()) * c.kv_width());
    auto dv = cu::test::guarded_nan<float>(static_cast<std::size_t>(c.tokens()) * c.kv_width());
    cu::attention_backward(gemm, stream, c.cuda_shape(), dev.q.data(), c.q_width(), dev.k.data(), c.kv_width(), dev.v(c), c.qkv_width(),
                           probs.data(), device_d_out.data(), c.q_width(), d_probs.data(), d_scores.data(), dq.data(), c.q_width(),
                           dk.data(), c.kv_width(), dv.data(), c.kv_width());

    const std::vector<double> dod = cu::test::to_double(d_out);
    std::vector<double> dq_ref(dq.size()), dk_ref(dk.size()), dv_ref(dv.size());
    gemma3::attention_backward<double>(gemma3::const_view(in.qd.data(), c.tokens(), c.q_width()),
                                       gemma3::const_view(in.kd.data(), c.tokens(), c.kv_width()),
                                       gemma3::const_view(in.vd.data(), c.tokens(), c.kv_width()), probs_ref.data(),
                                       gemma3::const_view(dod.data(), c.tokens(), c.q_width()), c.cpu_shape(),
                                       gemma3::matrix_view(dq_ref.data(), c.tokens(), c.q_width()),
                                       gemma3::matrix_view(dk_ref.data(), c.tokens(), c.kv_width()),
                                       gemma3::matrix_view(dv_ref.data(), c.tokens(), c.kv_width()));

    // The bounds: first the reference dP, dot and dS, then their error bounds (header).
    std::vector<double> bq(dq.size(), 0.0), bk(dk.size(), 0.0), bv(dv.size(), 0.0);
    const int r = c.heads / c.kv_heads;
    const auto do_at = [&](int b, int i, int h, int d) {
        return dod[static_cast<std::size_t>(b * c.seq + i) * c.q_width() + h * c.head_dim + d];
    };
    for (int b = 0; b < c.batch; ++b)
        for (int h = 0; h < c.heads; ++h) {
            const int g = h / r;
            for (int i = 0; i < c.seq; ++i) {
                const std::size_t row = (static_cast<std::size_t>(b) * c.heads + h) * c.seq + i;
                const double rho = rho_row[row];
                std::vector<double> dp(static_cast<std::size_t>(c.seq), 0.0), e_dp(dp.size(), 0.0);
                double dot = 0, d_dot = 0, dot_magnitude = 0;
                for (int j = 0; j <= i; ++j) {
                    double magnitude = 0;
                    for (int d = 0; d < c.head_dim; ++d) {
                        dp[static_cast<std::size_t>(j)] += do_at(b, i, h, d) * in.v_at(c, b, j, g, d);
                        magnitude += std::fabs(do_at(b, i, h, d) * in.v_at(c, b, j, g, d));
                    }
                    e_dp[static_cast<std::size_t>(j)] = (c.head_dim + 2) * gemm_unit * magnitude;
                    const double p = probs_ref[row * c.seq + j];
                    dot += dp[static_cast<std::size_t>(j)] * p;
                    dot_magnitude += std::fabs(dp[static_cast<std::size_t>(j)]) * p;
                    d_dot += e_dp[static_cast<std::size_t>(j)] * p + std::fabs(dp[static_cast<std::size_t>(j)]) * rho * p;
                }
                d_dot += (c.seq + 2) * fp32_unit * dot_magnitude;
                for (int j = 0; j <= i; ++j) {
                    const double p = probs_ref[row * c.seq + j], dpj = dp[static_cast<std::size_t>(j)];
                    const double ds = p * (dpj - dot);
                    const double ds_bound = rho * p * std::fabs(dpj - dot) + p * (e_dp[static_cast<std::size_t>(j)] + d_dot) +
                                            bf16_unit * 1.0001 * std::fabs(ds) + 3 * fp32_unit * p * (std::fabs(dpj) + std::fabs(dot));
                    for (int d = 0; d < c.head_dim; ++d) {
                        const double kv = in.k_at(c, b, j, g, d), qv = in.q_at(c, b, i, h, d);
                        bq[static_cast<std::size_t>(b * c.seq + i) * c.q_width() + h * c.head_dim + d] +=
                            c.scale() * (ds_bound + (c.seq + 2) * gemm_unit * std::fabs(ds)) * std::fabs(kv);
                        bk[static_cast<std::size_t>(b * c.seq + j) * c.kv_width() + g * c.head_dim + d] +=
                            c.scale() * (ds_bound + (r * c.seq + 2) * gemm_unit * std::fabs(ds)) * std::fabs(qv);
                        bv[static_cast<std::size_t>(b * c.seq + j) * c.kv_width() + g * c.head_dim + d] +=
                            (rho + (r * c.seq + 2) * gemm_unit) * p * std::fabs(do_at(b, i, h, d));
                    }
                }
            }
        }
    for (auto* bound : {&bq, &bk, &bv})
        for (double& x : *bound) x = x * 1.01 + 1e-30;
    cu::test::check_within("attention_backward dq", cu::test::download_checked(dq, "dq"), dq_ref, bq);
    cu::test::check_within("attention_backward dk", cu::test::download_checked(dk, "dk"), dk_ref, bk);
    cu::test::check_within("attention_backward dv", cu::test::download_checked(dv, "dv"), dv_ref, bv);
}

template <int kHeadDim>
void check_flash(const Case& c) {
    CAPTURE(c.seq);
    CAPTURE(c.window);
    REQUIRE(c.head_dim == kHeadDim);
    const Inputs in(c);
    const DeviceInputs dev(in);
    auto out = cu::test::guarded_nan<__nv_bfloat16>(static_cast<std::size_t>(c.tokens()) * c.q_width());
    cu::Stream stream;
    cu::flash_attention_forward<kHeadDim>(stream, c.cuda_shape(), dev.q.data(), c.q_width(), dev.k.data(), c.kv_width(), dev.v(c),
                                          c.qkv_width(), out.data(), c.q_width());
    std::vector<double> out_ref, probs_ref;
    reference_forward(c, in, out_ref, probs_ref);
    cu::test::check_within("flash_attention_forward out", cu::test::download_checked(out, "out"), out_ref,
                           output_bounds(c, in, out_ref, probs_ref, true));
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("attention (products + fused softmax): sliding window 5 over 37 tokens, 4 query heads on 2 kv heads") {
    check_training_path({2, 37, 4, 2, 16, 5, 1u});
}

GEMMA3_CUDA_TEST_CASE("attention (products + fused softmax): full causal, multi-query, head_dim 24") {
    check_training_path({3, 29, 4, 1, 24, 0, 2u});
}

GEMMA3_CUDA_TEST_CASE("flash attention (no seq^2 buffer at all): 300 tokens with a window of 16, 4 query heads on 2 kv heads") {
    check_flash<32>({2, 300, 4, 2, 32, 16, 3u});
}

GEMMA3_CUDA_TEST_CASE("flash attention: full causal over 150 tokens, multi-query, head_dim 64") {
    check_flash<64>({1, 150, 2, 1, 64, 0, 4u});
}

GEMMA3_CUDA_TEST_CASE("flash attention: the seed's head_dim 256 and the tiny config's 16") {
    check_flash<256>({1, 40, 4, 1, 256, 0, 5u});
    check_flash<16>({2, 45, 4, 1, 16, 8, 6u});
}

GEMMA3_CUDA_TEST_CASE("attention rejects heads that are not a multiple of kv_heads") {
    cu::Gemm gemm;
    cu::Stream stream;
    const std::string message = cu::test::thrown_message<std::invalid_argument>([&] {
        cu::attention_forward(gemm, stream, {1, 4, 3, 2, 8, 0, 1.0f}, nullptr, 24, nullptr, 16, nullptr, 16, nullptr, nullptr,
                              nullptr, 24);
    });
    CHECK(cu::test::contains(message, "heads (3) must be a multiple of kv_heads (2)"));
}
