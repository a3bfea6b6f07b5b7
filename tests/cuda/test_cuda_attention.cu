// Attention on the device (include/gemma3/cuda/ops/attention.cuh) against the CPU attention in
// double (include/gemma3/ops/attention.hpp): the exact path (cuBLASLt products and the fused
// masked softmax, forward and backward) and the tiled flash kernels (forward with log-sum-exps,
// backward; also against the exact CUDA path), with causal and sliding-window masks and grouped /
// multi-query heads.
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
//  - flash training (check_flash_training): the log-sum-exp is within E_i + (T + 64 + 4 S_i) u_f
//    (S_i = max_j |s_ij| + |lse_i|); the backward's recomputed P within rho_i = 2 E_i +
//    (T + head_dim + 64 + 8 S_i) u_f relative; delta_i = dO_i . O_i reads the bf16 output (its
//    forward bound times |dO|, plus an fp32 sum); dS stays fp32 and every sum is a plain fp32 loop
//    (u_f per term instead of u_g), otherwise as the backward above (backward_bounds).
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

// Bounds on dq, dk and dv from the per-row probability bound rho (header). delta_error empty: the
// products path (dot_i = sum_j dP P in fp32 from the bf16 P, dS rounded to bf16, cuBLASLt sums);
// else the flash path (delta_i = dO_i . O_i from the stored output, with the given error bound per
// row; dS kept in fp32 and every sum a plain fp32 loop).
struct BackwardBounds {
    std::vector<double> dq, dk, dv;
};

BackwardBounds backward_bounds(const Case& c, const Inputs& in, const std::vector<double>& probs_ref,
                               const std::vector<double>& rho_row, const std::vector<double>& dod,
                               const std::vector<double>& delta_error) {
    const bool flash = !delta_error.empty();
    const double ds_unit = flash ? 0.0 : bf16_unit * 1.0001, sum_unit = flash ? fp32_unit : gemm_unit;
    std::vector<double> bq(static_cast<std::size_t>(c.tokens()) * c.q_width(), 0.0),
        bk(static_cast<std::size_t>(c.tokens()) * c.kv_width(), 0.0), bv(bk.size(), 0.0);
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
                    e_dp[static_cast<std::size_t>(j)] = (c.head_dim + 2) * sum_unit * magnitude;
                    const double p = probs_ref[row * c.seq + j];
                    dot += dp[static_cast<std::size_t>(j)] * p;
                    dot_magnitude += std::fabs(dp[static_cast<std::size_t>(j)]) * p;
                    d_dot += e_dp[static_cast<std::size_t>(j)] * p + std::fabs(dp[static_cast<std::size_t>(j)]) * rho * p;
                }
                d_dot = flash ? delta_error[row] : d_dot + (c.seq + 2) * fp32_unit * dot_magnitude;
                for (int j = 0; j <= i; ++j) {
                    const double p = probs_ref[row * c.seq + j], dpj = dp[static_cast<std::size_t>(j)];
                    const double ds = p * (dpj - dot);
                    const double ds_bound = rho * p * std::fabs(dpj - dot) + p * (e_dp[static_cast<std::size_t>(j)] + d_dot) +
                                            ds_unit * std::fabs(ds) + 3 * fp32_unit * p * (std::fabs(dpj) + std::fabs(dot));
                    for (int d = 0; d < c.head_dim; ++d) {
                        const double kv = in.k_at(c, b, j, g, d), qv = in.q_at(c, b, i, h, d);
                        bq[static_cast<std::size_t>(b * c.seq + i) * c.q_width() + h * c.head_dim + d] +=
                            c.scale() * (ds_bound + (c.seq + 2) * sum_unit * std::fabs(ds)) * std::fabs(kv);
                        bk[static_cast<std::size_t>(b * c.seq + j) * c.kv_width() + g * c.head_dim + d] +=
                            c.scale() * (ds_bound + (r * c.seq + 2) * sum_unit * std::fabs(ds)) * std::fabs(qv);
                        bv[static_cast<std::size_t>(b * c.seq + j) * c.kv_width() + g * c.head_dim + d] +=
                            (rho + (r * c.seq + 2) * sum_unit) * p * std::fabs(do_at(b, i, h, d));
                    }
                }
            }
        }
    for (auto* bound : {&bq, &bk, &bv})
        for (double& x : *bound) x = x * 1.01 + 1e-30;
    return {std::move(bq), std::move(bk), std::move(bv)};
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

    const BackwardBounds bounds = backward_bounds(c, in, probs_ref, rho_row, dod, {});
    cu::test::check_within("attention_backward dq", cu::test::download_checked(dq, "dq"), dq_ref, bounds.dq);
    cu::test::check_within("attention_backward dk", cu::test::download_checked(dk, "dk"), dk_ref, bounds.dk);
    cu::test::check_within("attention_backward dv", cu::test::download_checked(dv, "dv"), dv_ref, bounds.dv);
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


// The tiled training path (flash_attention_forward with log-sum-exps, flash_attention_backward)
// against the CPU twin in double (the tiled CPU ops, from the exact output and log-sum-exps) and
// against the exact CUDA kernels (products + fused softmax): each is within its bound of the CPU
// reference, so the two CUDA paths are within the sum of their bounds of each other.
template <int kHeadDim>
void check_flash_training(const Case& c) {
    CAPTURE(c.seq);
    CAPTURE(c.window);
    CAPTURE(c.kv_heads);
    CAPTURE(c.head_dim);
    REQUIRE(c.head_dim == kHeadDim);
    const Inputs in(c);
    const DeviceInputs dev(in);
    const std::size_t rows = static_cast<std::size_t>(c.batch) * c.heads * c.seq;
    const std::size_t q_elements = static_cast<std::size_t>(c.tokens()) * c.q_width();
    const std::size_t kv_elements = static_cast<std::size_t>(c.tokens()) * c.kv_width();
    auto out = cu::test::guarded_nan<__nv_bfloat16>(q_elements);
    auto lse = cu::test::guarded_nan<float>(rows);
    cu::Stream stream;
    cu::flash_attention_forward<kHeadDim>(stream, c.cuda_shape(), dev.q.data(), c.q_width(), dev.k.data(), c.kv_width(), dev.v(c),
                                          c.qkv_width(), out.data(), c.q_width(), lse.data());

    const auto qv = gemma3::const_view(in.qd.data(), c.tokens(), c.q_width());
    const auto kv = gemma3::const_view(in.kd.data(), c.tokens(), c.kv_width());
    const auto vv = gemma3::const_view(in.vd.data(), c.tokens(), c.kv_width());
    std::vector<double> exact_out_ref, probs_ref, out_ref(q_elements), lse_ref(rows);
    reference_forward(c, in, exact_out_ref, probs_ref);  // the probabilities, for the bounds
    gemma3::flash_attention_forward<double>(qv, kv, vv, c.cpu_shape(), gemma3::matrix_view(out_ref.data(), c.tokens(), c.q_width()),
                                            lse_ref.data());
    const std::vector<double> out_bound = output_bounds(c, in, exact_out_ref, probs_ref, true);
    const std::vector<double> out_got = cu::test::download_checked(out, "out");
    cu::test::check_within("flash_attention_forward out", out_got, out_ref, out_bound);

    // lse_i = m_i + log l_i. The computed scores move the exact log-sum-exp by at most E_i; the fp32
    // online sum l_i (per-lane partial sums rescaled once per key tile, then a 5-level butterfly)
    // has a relative error below (T + 64) u_f plus the exp arguments' roundings, at most
    // 2 S_i u_f with S_i = max_j |s_ij| + |lse_i|; log and the final add contribute 2 S_i u_f more.
    // P recomputed in the backward as exp(fl(s) - lse) then has a relative error of at most
    // rho_i = 2 E_i + (T + head_dim + 64 + 8 S_i) u_f (the score's own error, lse's, and the
    // roundings of the product by scale, the subtraction and __expf).
    std::vector<double> lse_bound(rows), rho_row(rows);
    const int per_kv = c.heads / c.kv_heads;
    for (int b = 0; b < c.batch; ++b)
        for (int h = 0; h < c.heads; ++h)
            for (int i = 0; i < c.seq; ++i) {
                const std::size_t row = (static_cast<std::size_t>(b) * c.heads + h) * c.seq + i;
                double largest = 0;
                for (int j = c.first_key(i); j <= i; ++j) {
                    double score = 0;
                    for (int d = 0; d < c.head_dim; ++d) score += in.q_at(c, b, i, h, d) * in.k_at(c, b, j, h / per_kv, d);
                    largest = std::max(largest, std::fabs(score * c.scale()));
                }
                const double magnitude = largest + std::fabs(lse_ref[row]), e = score_error(c, in, b, h, i);
                lse_bound[row] = (e + (c.seq + 64 + 4 * magnitude) * fp32_unit) * 1.01;
                rho_row[row] = 2 * e + (c.seq + c.head_dim + 64 + 8 * magnitude) * fp32_unit;
            }
    cu::test::check_within("flash_attention_forward lse", cu::test::download_checked(lse, "lse"), lse_ref, lse_bound);

    // Backward from the device's own output and log-sum-exps, as the model runs it.
    const std::vector<float> d_out = cu::test::bf16_values(q_elements, -1.0f, 1.0f, c.seed + 3);
    const std::vector<double> dod = cu::test::to_double(d_out);
    auto device_d_out = cu::test::guarded_from<__nv_bfloat16>(d_out);
    auto delta = cu::test::guarded_nan<float>(rows);
    auto dq = cu::test::guarded_nan<float>(q_elements);
    auto dk = cu::test::guarded_nan<float>(kv_elements);
    auto dv = cu::test::guarded_nan<float>(kv_elements);
    cu::flash_attention_backward<kHeadDim>(stream, c.cuda_shape(), dev.q.data(), c.q_width(), dev.k.data(), c.kv_width(), dev.v(c),
                                           c.qkv_width(), out.data(), c.q_width(), lse.data(), device_d_out.data(), c.q_width(),
                                           delta.data(), dq.data(), c.q_width(), dk.data(), c.kv_width(), dv.data(), c.kv_width());
    std::vector<double> dq_ref(q_elements), dk_ref(kv_elements), dv_ref(kv_elements);
    gemma3::flash_attention_backward<double>(qv, kv, vv, gemma3::const_view(out_ref.data(), c.tokens(), c.q_width()), lse_ref.data(),
                                             gemma3::const_view(dod.data(), c.tokens(), c.q_width()), c.cpu_shape(),
                                             gemma3::matrix_view(dq_ref.data(), c.tokens(), c.q_width()),
                                             gemma3::matrix_view(dk_ref.data(), c.tokens(), c.kv_width()),
                                             gemma3::matrix_view(dv_ref.data(), c.tokens(), c.kv_width()));
    // delta_i = dO_i . O_i from the bf16 output, which is within out_bound of the exact one, summed
    // in fp32 (head_dim / 32 terms per lane, then the butterfly).
    std::vector<double> delta_error(rows, 0.0);
    for (int b = 0; b < c.batch; ++b)
        for (int h = 0; h < c.heads; ++h)
            for (int i = 0; i < c.seq; ++i) {
                double error = 0, magnitude = 0;
                for (int d = 0; d < c.head_dim; ++d) {
                    const std::size_t k = static_cast<std::size_t>(b * c.seq + i) * c.q_width() + h * c.head_dim + d;
                    error += std::fabs(dod[k]) * out_bound[k];
                    magnitude += std::fabs(dod[k]) * (std::fabs(out_ref[k]) + out_bound[k]);
                }
                delta_error[(static_cast<std::size_t>(b) * c.heads + h) * c.seq + i] = error + (c.head_dim + 2) * fp32_unit * magnitude;
            }
    const BackwardBounds bounds = backward_bounds(c, in, probs_ref, rho_row, dod, delta_error);
    const std::vector<double> dq_got = cu::test::download_checked(dq, "dq"), dk_got = cu::test::download_checked(dk, "dk"),
                              dv_got = cu::test::download_checked(dv, "dv");
    cu::test::check_within("flash_attention_backward dq", dq_got, dq_ref, bounds.dq);
    cu::test::check_within("flash_attention_backward dk", dk_got, dk_ref, bounds.dk);
    cu::test::check_within("flash_attention_backward dv", dv_got, dv_ref, bounds.dv);

    // The exact CUDA kernels on the same inputs.
    const std::size_t scores = static_cast<std::size_t>(c.batch) * c.heads * c.seq * c.seq;
    cu::DeviceBuffer<float> score_scratch(scores), d_probs(scores);
    cu::DeviceBuffer<__nv_bfloat16> probs(scores), d_scores(scores), exact_out(q_elements);
    cu::DeviceBuffer<float> exact_dq(q_elements), exact_dk(kv_elements), exact_dv(kv_elements);
    cu::Gemm gemm;
    cu::attention_forward(gemm, stream, c.cuda_shape(), dev.q.data(), c.q_width(), dev.k.data(), c.kv_width(), dev.v(c), c.qkv_width(),
                          score_scratch.data(), probs.data(), exact_out.data(), c.q_width());
    cu::attention_backward(gemm, stream, c.cuda_shape(), dev.q.data(), c.q_width(), dev.k.data(), c.kv_width(), dev.v(c), c.qkv_width(),
                           probs.data(), device_d_out.data(), c.q_width(), d_probs.data(), d_scores.data(), exact_dq.data(), c.q_width(),
                           exact_dk.data(), c.kv_width(), exact_dv.data(), c.kv_width());
    std::vector<double> exact_rho(rows);
    for (int b = 0; b < c.batch; ++b)
        for (int h = 0; h < c.heads; ++h)
            for (int i = 0; i < c.seq; ++i)
                exact_rho[(static_cast<std::size_t>(b) * c.heads + h) * c.seq + i] =
                    bf16_unit * 1.0001 + 2 * score_error(c, in, b, h, i) + (c.seq + 16) * fp32_unit;
    const auto sum = [](std::vector<double> a, const std::vector<double>& b) {
        for (std::size_t i = 0; i < a.size(); ++i) a[i] += b[i];
        return a;
    };
    const auto host = [](const auto& buffer) { return cu::test::to_double(buffer.download()); };
    cu::test::check_within("flash vs exact CUDA out", out_got, host(exact_out),
                           sum(out_bound, output_bounds(c, in, exact_out_ref, probs_ref, false)));
    const BackwardBounds exact_bounds = backward_bounds(c, in, probs_ref, exact_rho, dod, {});
    cu::test::check_within("flash vs exact CUDA dq", dq_got, host(exact_dq), sum(bounds.dq, exact_bounds.dq));
    cu::test::check_within("flash vs exact CUDA dk", dk_got, host(exact_dk), sum(bounds.dk, exact_bounds.dk));
    cu::test::check_within("flash vs exact CUDA dv", dv_got, host(exact_dv), sum(bounds.dv, exact_bounds.dv));
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("flash attention, training (output, log-sum-exps, backward): window 5 < tile over 37 tokens, 4 query heads on 2 kv heads") {
    check_flash_training<16>({2, 37, 4, 2, 16, 5, 11u});
}

GEMMA3_CUDA_TEST_CASE("flash attention, training: window 20 > tile over 45 tokens, multi-query, head_dim 32") {
    check_flash_training<32>({1, 45, 4, 1, 32, 20, 12u});
}

GEMMA3_CUDA_TEST_CASE("flash attention, training: full causal over 29 tokens, multi-query, head_dim 24; head_dim 256") {
    check_flash_training<24>({2, 29, 2, 1, 24, 0, 13u});
    check_flash_training<256>({1, 20, 2, 1, 256, 0, 14u});
}

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
