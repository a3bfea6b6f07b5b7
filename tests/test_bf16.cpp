// Mixed precision on the CPU (Model<C, Cpu<bf16>>, ops/linear.hpp): bf16 product inputs, fp32
// accumulation, outputs, element-wise math and master weights.
//
// Bounds (u_b = 2^-8, the unit roundoff of bf16; u_f = 2^-24, that of fp32):
//  - Each product against the double product of the same bf16-rounded operands (linear_product under
//    a Bf16Products scope in double rounds its operands to bf16 values and multiplies exactly): the
//    rounded operands are identical, so only fp32 accumulation differs, |error| <= k u_f sum|a||b| per
//    element for a depth-k sum; we allow twice that. A product left in fp32 or a rounding dropped
//    changes elements by up to u_b relative, about 2^16 times this bound.
//  - Each product against the exact double product of the unrounded operands: two roundings of
//    relative size u_b per term, |error| <= (2 u_b + u_b^2 + 2k u_f) sum|a||b|.
//  - The whole model (logits, loss, every gradient) against Cpu<double> on the same bf16-exact weights,
//    with the CUDA tests' rule (tests/cuda/test_cuda_model.cu): m roundings of relative size u_b on a
//    tensor's dependency path give a normwise relative error of about u_b sqrt(m / 3); we allow
//    4 u_b sqrt(m). Here the roundings are the product inputs: per block attn_in, attn, mlp_in and act
//    on the forward path (4 L, + the final norm output: m = 4 L + 1 for the logits) and the product
//    gradients d_qkv, d_attn_proj, d_gate_up, d_mlp_out on the backward path (+ d_logits): for the
//    gradients we allow m = 8 L + 2, every rounding of both passes.
//  - Training on real text: see the last test.
#include <doctest/doctest.h>
#include <omp.h>

#include <gemma3/core/configs.hpp>
#include <gemma3/model.hpp>
#include <gemma3/ops/cross_entropy.hpp>
#include <gemma3/ops/linear.hpp>
#include <gemma3/train/optimizer.hpp>
#include <gemma3/text/tokenizer.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <utility>
#include <vector>

using namespace gemma3;

namespace {

constexpr double u_b = 0x1p-8;
constexpr double u_f = 0x1p-24;

using MatD = RowMatrix<double>;
using MatF = RowMatrix<float>;

MatF random_float(Index rows, Index cols, std::mt19937_64& rng, double scale = 1.0) {
    std::normal_distribution<double> normal(0.0, scale);
    MatF m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(normal(rng));
    return m;
}

ConstMatrixView<float> cview(const MatF& m) { return const_view(m.data(), m.rows(), m.cols()); }
MatrixView<float> view(MatF& m) { return matrix_view(m.data(), m.rows(), m.cols()); }
ConstMatrixView<double> cview(const MatD& m) { return const_view(m.data(), m.rows(), m.cols()); }
MatrixView<double> view(MatD& m) { return matrix_view(m.data(), m.rows(), m.cols()); }

// An empty weight copy: every operand is rounded on the way in.
const Bf16WeightCopy no_weight_copy{};

// Checks |got - want| <= factor * scale element by element; the bound must not be vacuous.
void check_elementwise(const MatF& got, const MatD& want, const MatD& scale, double factor, double min_ratio = 100) {
    const MatD err = (got.cast<double>() - want).cwiseAbs();
    const MatD bound = factor * scale;
    CHECK((err.array() <= bound.array()).all());
    CHECK(want.cwiseAbs().maxCoeff() > min_ratio * bound.maxCoeff());
}

// Selects a bf16 product kernel for one test, and gives the choice back to the automatic one after.
struct Bf16KernelFor {
    explicit Bf16KernelFor(Bf16Kernel kernel) { set_bf16_kernel(kernel); }
    ~Bf16KernelFor() { set_bf16_kernel(Bf16Kernel::automatic); }
};

// Runs the calling test case once per bf16 kernel (as two doctest subcases); returns this run's.
Bf16Kernel each_bf16_kernel() {
    Bf16Kernel kernel = Bf16Kernel::native;
    SUBCASE("native bf16 products") { kernel = Bf16Kernel::native; }
    SUBCASE("widened bf16 products") { kernel = Bf16Kernel::widened; }
    return kernel;
}

// gemm() with bf16 inputs, both kernels, every transpose, alpha and beta, against the double product
// of the same bf16 values: only the fp32 accumulation differs (depth k, plus alpha, beta and the
// additions of k blocks: fewer than k + 4 roundings per element, we allow 2 (k + 4) u_f). The widened
// kernel is also run with tiny scratch budgets, which cut the product into blocks along m, n and k,
// and with operands given as Bf16Values.
TEST_CASE("bf16 products: native and widened kernels multiply bf16 values exactly and accumulate in fp32") {
    std::mt19937_64 rng(21);
    // Two shapes, so that either operand is the smaller (the one widened first, see the budgets).
    for (const auto& shape : {std::array<Index, 3>{37, 53, 29}, std::array<Index, 3>{29, 53, 37}}) {
        const Index m = shape[0], k = shape[1], n = shape[2];
        for (const Op op_a : {Op::none, Op::transpose}) {
            for (const Op op_b : {Op::none, Op::transpose}) {
                const RowMatrix<bf16> a = (op_a == Op::none ? random_float(m, k, rng) : random_float(k, m, rng)).cast<bf16>();
                const RowMatrix<bf16> b = (op_b == Op::none ? random_float(k, n, rng) : random_float(n, k, rng)).cast<bf16>();
                const MatF c0 = random_float(m, n, rng);
                const MatD ad = a.cast<float>().cast<double>(), bd = b.cast<float>().cast<double>();
                const MatD opa = op_a == Op::none ? ad : MatD(ad.transpose()), opb = op_b == Op::none ? bd : MatD(bd.transpose());
                for (const auto& [alpha, beta] : {std::pair{1.0f, 0.0f}, std::pair{-0.5f, 1.0f}, std::pair{2.0f, 0.25f}}) {
                    const MatD want = double(alpha) * opa * opb + double(beta) * c0.cast<double>();
                    const MatD scale = std::abs(alpha) * opa.cwiseAbs() * opb.cwiseAbs() + std::abs(beta) * c0.cast<double>().cwiseAbs();
                    const auto check = [&](const MatF& got) {
                        CAPTURE(static_cast<int>(op_a));
                        CAPTURE(static_cast<int>(op_b));
                        CAPTURE(alpha);
                        check_elementwise(got, want, scale, 2.0 * (k + 4) * u_f, 1e3);
                    };
                    for (const Bf16Kernel kernel : {Bf16Kernel::native, Bf16Kernel::widened}) {
                        const Bf16KernelFor selected(kernel);
                        MatF c = c0;
                        gemm(a, op_a, b, op_b, c, alpha, beta);
                        check(c);
                    }
                    // Budgets of 64 and 700 elements cut the product into blocks of a few rows, columns and
                    // depths (both halves of each dimension); 1 M leaves it whole; with 3,200 the smaller
                    // operand (29 x 53) fits in half the budget and is widened once, the other cut.
                    // Operands already holding bf16 values in fp32 (Bf16Values) are read in place and only
                    // the others are cut.
                    const MatF a_float = a.cast<float>(), b_float = b.cast<float>();
                    const Bf16Values a_values(cview(a_float)), b_values(cview(b_float));
                    for (const Index budget : {Index{64}, Index{700}, Index{3200}, Index{1} << 20}) {
                        CAPTURE(budget);
                        MatF c = c0;
                        detail::gemm_widened(a, op_a, b, op_b, c, alpha, beta, budget);
                        check(c);
                        c = c0;
                        detail::gemm_widened(a_values, op_a, b, op_b, c, alpha, beta, budget);
                        check(c);
                        c = c0;
                        detail::gemm_widened(a, op_a, b_values, op_b, c, alpha, beta, budget);
                        check(c);
                        c = c0;
                        detail::gemm_widened(a_values, op_a, b_values, op_b, c, alpha, beta, budget);
                        check(c);
                    }
                }
            }
        }
    }
}

// The widened kernel's own rounding against Eigen's float -> bfloat16 conversion (an independent
// implementation of round to nearest even): a million bit patterns spread over all of float, ties,
// subnormals, the largest finite values (which round to infinity) and the specials.
TEST_CASE("round_to_bf16_value rounds like Eigen's bfloat16, ties to even") {
    std::vector<std::uint32_t> patterns = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u,
                                           0x7f7fffffu, 0xff7fffffu, 0x7f7f8000u, 0x3f808000u, 0x3f818000u, 0x3f80ffffu,
                                           0x00008000u, 0x00018000u, 0x0000ffffu, 0x00000001u, 0x807fffffu};
    for (std::uint64_t bits = 0; bits < (std::uint64_t{1} << 32); bits += 4099) patterns.push_back(static_cast<std::uint32_t>(bits));
    int mismatches = 0;
    for (const auto bits : patterns) {
        const float x = std::bit_cast<float>(bits);
        const float got = round_to_bf16_value(x), want = static_cast<float>(bf16(x));
        if (std::isnan(want) ? !std::isnan(got) : std::bit_cast<std::uint32_t>(got) != std::bit_cast<std::uint32_t>(want)) {
            if (++mismatches <= 5) MESSAGE("0x" << std::hex << bits << ": " << got << " against " << want);
        }
    }
    CHECK(mismatches == 0);
}

TEST_CASE("all_bf16_values: true exactly when rounding to bf16 would change no value") {
    std::mt19937_64 rng(19);
    std::vector<float> values(10000);  // more than one of its blocks
    for (auto& v : values) v = round_to_bf16_value(static_cast<float>(std::normal_distribution<double>()(rng)));
    values[5] = 0.0f;
    values[6] = -0.0f;
    values[7] = std::numeric_limits<float>::infinity();
    values[8] = 0x1p-130f;  // a subnormal bf16 value
    CHECK(all_bf16_values(values.data(), values.size()));
    CHECK(all_bf16_values(values.data(), 0));
    // One value off the grid, in the last block: found.
    values.back() = std::nextafter(values.back(), 10.0f);
    CHECK(!all_bf16_values(values.data(), values.size()));
    CHECK(all_bf16_values(values.data(), values.size() - 1));
}

TEST_CASE("GEMMA3_BF16_KERNEL: a value other than native, widened or auto is an error naming it") {
    ::setenv("GEMMA3_BF16_KERNEL", "fastest", 1);
    CHECK_THROWS_WITH_AS(detail::automatic_bf16_kernel(), "GEMMA3_BF16_KERNEL=fastest: expected native, widened or auto",
                         std::invalid_argument);
    ::setenv("GEMMA3_BF16_KERNEL", "widened", 1);
    CHECK(detail::automatic_bf16_kernel() == Bf16Kernel::widened);
    ::unsetenv("GEMMA3_BF16_KERNEL");
}

// A linear layer's three products, in bf16 (float under the scope), against the double product of
// the same rounded operands and against the exact product.
TEST_CASE("bf16 linear forward and backward: fp32 accumulation of bf16-rounded operands") {
    const Bf16KernelFor selected(each_bf16_kernel());
    std::mt19937_64 rng(5);
    const Index tokens = 48, in = 96, out = 40;
    const MatF x = random_float(tokens, in, rng), w = random_float(out, in, rng, 0.1), dy = random_float(tokens, out, rng);
    MatF y(tokens, out), dx(tokens, in), dw = random_float(out, in, rng, 0.01);
    const MatF dw0 = dw;
    MatD y_r(tokens, out), dx_r(tokens, in), dw_r = dw0.cast<double>();
    {
        const Bf16Products bf16_products(no_weight_copy);
        linear_forward<float>(cview(x), cview(w), view(y));
        linear_backward<float>(cview(x), cview(w), cview(dy), view(dx), view(dw));
        const MatD xd = x.cast<double>(), wd = w.cast<double>(), dyd = dy.cast<double>();
        linear_forward<double>(cview(xd), cview(wd), view(y_r));
        linear_backward<double>(cview(xd), cview(wd), cview(dyd), view(dx_r), view(dw_r));
    }
    const auto rounded = [](const MatF& m) { return MatD(m.unaryExpr([](float v) { return double(float(bf16(v))); }).cast<double>()); };
    const MatD xr = rounded(x), wr = rounded(w), dyr = rounded(dy);
    // Same rounded operands: only fp32 accumulation differs.
    check_elementwise(y, y_r, xr.cwiseAbs() * wr.cwiseAbs().transpose(), 2.0 * in * u_f);
    check_elementwise(dx, dx_r, dyr.cwiseAbs() * wr.cwiseAbs(), 2.0 * out * u_f);
    check_elementwise(dw, dw_r, dyr.cwiseAbs().transpose() * xr.cwiseAbs() + dw0.cast<double>().cwiseAbs(),
                      2.0 * (tokens + 1) * u_f);
    // Against the unrounded operands: the bf16 roundings themselves, two per term.
    const MatD xd = x.cast<double>(), wd = w.cast<double>(), dyd = dy.cast<double>();
    const double two_roundings = 2 * u_b + u_b * u_b;
    check_elementwise(y, xd * wd.transpose(), xd.cwiseAbs() * wd.cwiseAbs().transpose(), two_roundings + 2.0 * in * u_f, 0.1);
    check_elementwise(dx, dyd * wd, dyd.cwiseAbs() * wd.cwiseAbs(), two_roundings + 2.0 * out * u_f, 0.1);
    // And the products really are rounded: the error against the exact product exceeds fp32's.
    CHECK((y.cast<double>() - xd * wd.transpose()).cwiseAbs().maxCoeff() >
          1e3 * in * u_f * (xd.cwiseAbs() * wd.cwiseAbs().transpose()).maxCoeff() / in);
}

TEST_CASE("bf16 products read operands inside the weight copy from it, others are rounded on the way in") {
    std::mt19937_64 rng(6);
    const MatF w = random_float(8, 16, rng), x = random_float(4, 16, rng);
    // A weight copy that deliberately differs from rounding (every element negated): the product must
    // come out negated, which shows the copy was read.
    Buffer<bf16> copy(static_cast<std::size_t>(w.size()));
    for (Index i = 0; i < w.size(); ++i) copy[static_cast<std::size_t>(i)] = bf16(-w.data()[i]);
    const Bf16WeightCopy weights{w.data(), copy.data(), copy.size()};
    MatF y(4, 4), y_rounded(4, 8);
    {
        const Bf16Products bf16_products(weights);
        // Rows 2..5 of w: a view inside the master weights, read from the copy.
        linear_forward<float>(cview(x), const_view(w.data() + 2 * 16, 4, 16), view(y));
    }
    {
        const Bf16Products bf16_products(no_weight_copy);
        linear_forward<float>(cview(x), cview(w), view(y_rounded));  // w rounded on the way in
    }
    // Same operands up to sign; only fp32 accumulation order may differ (depth 16).
    for (Index i = 0; i < 4; ++i)
        for (Index j = 0; j < 4; ++j) CHECK(std::abs(y(i, j) + y_rounded(i, 2 + j)) <= 32 * u_f * 16 * 4.0 * 3.0);
    CHECK(!Bf16Products::active());
}

TEST_CASE("widened bf16 products read master weights marked as bf16 values in place, unrounded") {
    const Bf16KernelFor selected(Bf16Kernel::widened);
    std::mt19937_64 rng(16);
    // w is deliberately not bf16 values: marked as such, it must be read as it is, so the product
    // is x rounded to bf16 times w unrounded (not w rounded, which would differ by up to u_b).
    const MatF w = random_float(8, 16, rng), x = random_float(4, 16, rng);
    const Bf16WeightCopy marked{w.data(), nullptr, static_cast<std::size_t>(w.size()), /*master_is_bf16=*/true};
    MatF y(4, 8), y_rounded(4, 8);
    {
        const Bf16Products bf16_products(marked);
        linear_forward<float>(cview(x), cview(w), view(y));
    }
    {
        const Bf16Products bf16_products(no_weight_copy);
        linear_forward<float>(cview(x), cview(w), view(y_rounded));
    }
    const MatD xr = x.cast<double>().unaryExpr([](double v) { return double(round_to_bf16_value(float(v))); });
    const MatD scale = xr.cwiseAbs() * w.cast<double>().cwiseAbs().transpose();
    check_elementwise(y, xr * w.cast<double>().transpose(), scale, 2.0 * 16 * u_f);
    // The rounded product is another one: w's rounding shows, far beyond fp32 accumulation.
    CHECK((y - y_rounded).cwiseAbs().maxCoeff() > 100 * 2.0 * 16 * u_f * scale.maxCoeff());
}

TEST_CASE("bf16 classifier: logits from bf16 operands, softmax and loss in fp32") {
    std::mt19937_64 rng(7);
    const Index n = 24, d = 32, vocab = 300;
    const MatF h = random_float(n, d, rng), head = random_float(vocab, d, rng, 0.2);
    std::vector<std::int32_t> targets(static_cast<std::size_t>(n));
    for (auto& t : targets) t = static_cast<std::int32_t>(rng() % vocab);
    Buffer<float> chunk;
    Buffer<double> chunk_d;
    MatF dh(n, d), d_head = MatF::Zero(vocab, d);
    MatD dh_exact(n, d), d_head_exact = MatD::Zero(vocab, d);
    const MatD hd = h.cast<double>(), headd = head.cast<double>();
    double loss = 0;
    {
        const Bf16Products bf16_products(no_weight_copy);
        loss = classifier_forward_backward<float>(cview(h), cview(head), targets, 1.0f / n, dh.data(), d_head.data(), chunk, 10)
                   .loss_sum;
    }
    const double loss_exact = classifier_forward_backward<double>(cview(hd), cview(headd), targets, 1.0 / n, dh_exact.data(),
                                                                  d_head_exact.data(), chunk_d, 10)
                                  .loss_sum;
    // Logits: two roundings per term of a depth-d sum, relative to sum|h||w| <= max over rows; the
    // loss is 1-Lipschitz in the max-norm of a row's logits, per row.
    const double logit_bound = (2 * u_b + u_b * u_b + 2.0 * d * u_f) * (hd.cwiseAbs() * headd.cwiseAbs().transpose()).maxCoeff();
    CHECK(std::abs(loss - loss_exact) <= 2 * n * logit_bound + 1e-5 * std::abs(loss_exact));
    // Gradients: d_logits (softmax - onehot) moves by its logits' error times its Lipschitz constant
    // (<= 2 in the max-norm), then is rounded once more and multiplied with a rounded operand: a
    // normwise relative error of at most 4 u_b sqrt(m) with m = 4 roundings on the path.
    const auto rel = [](const MatF& got, const MatD& want) { return (got.cast<double>() - want).cwiseAbs().maxCoeff() / want.cwiseAbs().maxCoeff(); };
    CHECK(rel(dh, dh_exact) <= 4 * u_b * 2 + 2 * logit_bound);
    CHECK(rel(d_head, d_head_exact) <= 4 * u_b * 2 + 2 * logit_bound);
}

// With h the identity, d_head = d_logits^T exactly (one nonzero term per element), so d_head shows
// the d_logits the products read: softmax - onehot, rounded to bf16 values.
TEST_CASE("bf16 classifier: the products read d_logits rounded to bf16") {
    const Bf16KernelFor selected(each_bf16_kernel());
    std::mt19937_64 rng(8);
    const Index n = 16, vocab = 300;
    const MatF h = MatF::Identity(n, n), head = random_float(vocab, n, rng);
    std::vector<std::int32_t> targets(static_cast<std::size_t>(n));
    for (auto& t : targets) t = static_cast<std::int32_t>(rng() % vocab);
    Buffer<float> chunk;
    MatF dh(n, n), d_head = MatF::Zero(vocab, n);
    {
        const Bf16Products bf16_products(no_weight_copy);
        classifier_forward_backward<float>(cview(h), cview(head), targets, 1.0f, dh.data(), d_head.data(), chunk, 10);
    }
    // Expected: (softmax - onehot) of the logits h head^T = rounded head^T, in double. In fp32 each
    // d_logit is within eps = 2 (vocab + 4) u_f of it, relative (a sum of vocab positive terms, exp,
    // a division; the target's p - 1 loses at most a factor 2 more while p < 1/2); rounding to bf16
    // then adds at most u_b relative.
    const MatD logits = head.unaryExpr([](float v) { return double(float(bf16(v))); }).transpose().cast<double>();
    int not_bf16 = 0;
    double worst = 0;
    for (Index i = 0; i < n; ++i) {
        const Eigen::RowVectorXd p = (logits.row(i).array() - logits.row(i).maxCoeff()).exp().matrix();
        Eigen::RowVectorXd want = p / p.sum();
        want(targets[static_cast<std::size_t>(i)]) -= 1;
        CHECK(want(targets[static_cast<std::size_t>(i)]) < -0.5);
        for (Index v = 0; v < vocab; ++v) {
            const float got = d_head(v, i);
            not_bf16 += round_to_bf16_value(got) != got;
            worst = std::max(worst, std::abs(double(got) - want(v)) / (std::abs(want(v)) * u_b + 1e-30));
        }
    }
    CHECK(not_bf16 == 0);
    const double eps = 2.0 * double(vocab + 4) * u_f;
    CHECK(worst <= (1 + eps) + eps / u_b);
}

// Model-level: Gemma3Tiny (MQA, q/k norms, sliding window active at 24 tokens, untied head).
template <class C>
std::vector<std::int32_t> random_tokens(std::size_t n, std::uint32_t seed) {
    std::mt19937 generator(seed);
    std::vector<std::int32_t> tokens(n);
    for (auto& t : tokens) t = static_cast<std::int32_t>(generator() % static_cast<unsigned>(C::vocab_size));
    return tokens;
}

double normwise(const float* got, const double* want, std::size_t count) {
    double diff = 0, ref = 0;
    for (std::size_t i = 0; i < count; ++i) {
        diff = std::max(diff, std::abs(static_cast<double>(got[i]) - want[i]));
        ref = std::max(ref, std::abs(want[i]));
    }
    return diff / ref;
}

TEST_CASE("Cpu<bf16> forward and backward track Cpu<double> within the bf16 bounds") {
    const Bf16KernelFor selected(each_bf16_kernel());
    using C = configs::Gemma3Tiny;
    using D = Dims<C>;
    const Index batch = 2, seq = 24, n = batch * seq;
    auto mixed = std::make_unique<Model<C, Cpu<bf16>>>();
    auto exact = std::make_unique<Model<C, Cpu<double>>>();
    mixed->init(InitScheme::seed, 0.02, 3);
    // Non-zero norm weights, and every weight exact in bf16 so that the copy adds no rounding.
    std::mt19937 generator(4);
    std::uniform_real_distribution<float> norm_weight(-0.3f, 0.3f);
    for (const auto& t : parameter_tensors<C>())
        if (t.role == TensorRole::norm)
            for (std::size_t i = 0; i < t.numel(); ++i) mixed->parameters.data()[t.offset + i] = norm_weight(generator);
    for (std::size_t i = 0; i < mixed->parameters.size(); ++i) {
        mixed->parameters.data()[i] = static_cast<float>(bf16(mixed->parameters.data()[i]));
        exact->parameters.data()[i] = mixed->parameters.data()[i];
    }
    mixed->weights_updated();
    const auto tokens = random_tokens<C>(static_cast<std::size_t>(n), 8), targets = random_tokens<C>(static_cast<std::size_t>(n), 9);

    const auto logits = mixed->forward(tokens, batch, seq);
    const auto logits_exact = exact->forward(tokens, batch, seq);
    const int L = D::layers;
    const double logits_error = normwise(logits.data(), logits_exact.data(), static_cast<std::size_t>(n * D::vocab));
    CHECK(logits_error <= 4 * u_b * std::sqrt(4.0 * L + 1));
    CHECK(logits_error > 10 * u_f);  // the products are not fp32

    Parameters<C, float> grads;
    Parameters<C, double> grads_exact;
    const double loss = mixed->forward_backward(tokens, targets, batch, seq, grads);
    // The GeGLU output, a product input only, is kept in bf16 alone (the down projection's weight
    // gradient below reads it from there).
    for (const auto& block : mixed->activations().blocks) {
        CHECK(block.act.empty());
        CHECK(block.act_bf16.size() == static_cast<std::size_t>(n * D::ffn));
    }
    const double loss_exact = exact->forward_backward(tokens, targets, batch, seq, grads_exact);
    // The loss is 1-Lipschitz in the logits' max-norm.
    double max_logit = 0;
    for (Index i = 0; i < logits_exact.size(); ++i) max_logit = std::max(max_logit, std::abs(logits_exact.data()[i]));
    CHECK(std::abs(loss - loss_exact) <= 4 * u_b * std::sqrt(4.0 * L + 1) * max_logit);
    double worst = 0;
    for (const auto& t : parameter_tensors<C>()) {
        const double err = normwise(grads.data() + t.offset, grads_exact.data() + t.offset, t.numel());
        CAPTURE(t.name);
        CHECK(err <= 4 * u_b * std::sqrt(8.0 * L + 2));
        worst = std::max(worst, err);
    }
    MESSAGE("Cpu<bf16> vs Cpu<double>: logits " << logits_error << " (bound " << 4 * u_b * std::sqrt(4.0 * L + 1)
                                                << "), worst gradient " << worst << " (bound "
                                                << 4 * u_b * std::sqrt(8.0 * L + 2) << ")");
}

TEST_CASE("Cpu<bf16> reads a weight copy refreshed after weights_updated()") {
    const Bf16KernelFor selected(Bf16Kernel::native);  // widened products hold no copy
    using C = configs::Gemma3Tiny;
    auto model = std::make_unique<Model<C, Cpu<bf16>>>();
    model->init(InitScheme::seed, 0.02, 1);
    const auto tokens = random_tokens<C>(16, 2);
    const auto first = model->forward(tokens, 1, 16);
    const std::vector<float> before(first.data(), first.data() + first.size());
    // Change a weight that only products read (the last block's down projection): until
    // weights_updated() the products still see the old copy.
    const auto w = model->parameters.weights();
    for (std::size_t i = 0; i < static_cast<std::size_t>(Dims<C>::model * Dims<C>::ffn); ++i) w.blocks.back().down_proj[i] *= 2.0f;
    const auto stale = model->forward(tokens, 1, 16);
    CHECK(std::equal(before.begin(), before.end(), stale.data()));
    model->weights_updated();
    const auto fresh = model->forward(tokens, 1, 16);
    CHECK(!std::equal(before.begin(), before.end(), fresh.data()));
}

TEST_CASE("Cpu<bf16>, widened products: weights are read in place while bf16 values, rounded again once they are not") {
    const Bf16KernelFor selected(Bf16Kernel::widened);
    using C = configs::Gemma3Tiny;
    const auto to_bf16_values = [](Parameters<C, float>& p) {
        for (std::size_t i = 0; i < p.size(); ++i) p.data()[i] = round_to_bf16_value(p.data()[i]);
    };
    auto model = std::make_unique<Model<C, Cpu<bf16>>>(), rounded = std::make_unique<Model<C, Cpu<bf16>>>();
    model->init(InitScheme::seed, 0.02, 17);
    to_bf16_values(model->parameters);  // as a bf16 checkpoint gives them: read in place
    model->weights_updated();
    const auto tokens = random_tokens<C>(32, 18);
    const auto first = model->forward(tokens, 2, 16);
    const std::vector<float> before(first.data(), first.data() + first.size());
    // An update moves the last block's down projection off the bf16 grid (times 1.1): after
    // weights_updated() the products must round it again, giving what a model holding the rounded
    // weights gives. Read in place instead (the stale answer), that product's inputs would differ
    // from the rounded ones by up to u_b relative, 2^16 times the fp32 bound below.
    auto down = model->parameters.weights().blocks.back().down_proj;
    for (std::size_t i = 0; i < static_cast<std::size_t>(Dims<C>::model * Dims<C>::ffn); ++i) down[i] *= 1.1f;
    model->weights_updated();
    std::copy_n(model->parameters.data(), model->parameters.size(), rounded->parameters.data());
    to_bf16_values(rounded->parameters);
    rounded->weights_updated();
    const auto got = model->forward(tokens, 2, 16);
    const auto want = rounded->forward(tokens, 2, 16);
    // Same bf16 operands in every product: only the fp32 accumulation may differ, the model test's
    // propagation rule with u_f in place of u_b.
    const double bound = 4 * u_f * std::sqrt(4.0 * Dims<C>::layers + 1);
    CHECK(normwise(got.data(), std::vector<double>(want.data(), want.data() + want.size()).data(),
                   static_cast<std::size_t>(want.size())) <= bound);
    CHECK(!std::equal(before.begin(), before.end(), want.data()));  // the rounded change still shows
}

// Real text: the first ~60 KB of the King James Bible (scripts/fetch_corpus.sh) in GPT-2 tokens, each
// token mapped to its frequency rank, the 511 most frequent keeping their own id and the rest sharing
// one, to fit Gemma3Tiny's 512-entry vocabulary.
std::vector<std::int32_t> kjv_tokens() {
    const std::filesystem::path root = GEMMA3_SOURCE_DIR;
    const auto corpus = root / "data/kjv/kjv.txt", ranks = root / "data/gpt2.tiktoken";
    REQUIRE_MESSAGE(std::filesystem::exists(corpus), corpus.string() << " is missing: run scripts/fetch_corpus.sh");
    REQUIRE_MESSAGE(std::filesystem::exists(ranks), ranks.string() << " is missing: run scripts/fetch_tokenizer.sh");
    std::ifstream file(corpus);
    std::string text(60000, '\0');
    file.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(file.gcount()));
    const auto ids = Tokenizer::from_tiktoken_file(ranks).encode_ordinary(text);
    std::vector<std::pair<int, std::int32_t>> counts;
    std::vector<int> count(50257, 0);
    for (const auto id : ids) ++count[static_cast<std::size_t>(id)];
    for (std::int32_t id = 0; id < 50257; ++id)
        if (count[static_cast<std::size_t>(id)] > 0) counts.emplace_back(-count[static_cast<std::size_t>(id)], id);
    std::sort(counts.begin(), counts.end());
    std::vector<std::int32_t> rank(50257, 511);
    for (std::size_t r = 0; r < std::min<std::size_t>(511, counts.size()); ++r) rank[static_cast<std::size_t>(counts[r].second)] = static_cast<std::int32_t>(r);
    std::vector<std::int32_t> mapped(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) mapped[i] = rank[static_cast<std::size_t>(ids[i])];
    return mapped;
}

// The training losses of `iterations` AdamW steps on batches drawn from `tokens` (same draws for every P).
template <class P>
std::vector<double> train_losses(const std::vector<std::int32_t>& tokens, int iterations) {
    using C = configs::Gemma3Tiny;
    const Index batch = 4, seq = 32;
    // One thread: the model is small enough that threads only add overhead (and contention on a
    // busy machine).
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    auto model = std::make_unique<Model<C, Cpu<P>>>();
    model->init(InitScheme::seed, 0.02, 11);
    Parameters<C, float> grads;
    AdamW<float> adamw(grads.size(), {0.9, 0.95, 1e-8, 0.1});
    std::mt19937_64 rng(12);
    std::vector<std::int32_t> x(static_cast<std::size_t>(batch * seq)), y(x.size());
    std::vector<double> losses;
    for (int it = 0; it < iterations; ++it) {
        for (Index b = 0; b < batch; ++b) {
            const auto start = static_cast<std::size_t>(rng() % (tokens.size() - static_cast<std::size_t>(seq) - 1));
            for (Index t = 0; t < seq; ++t) {
                x[static_cast<std::size_t>(b * seq + t)] = tokens[start + static_cast<std::size_t>(t)];
                y[static_cast<std::size_t>(b * seq + t)] = tokens[start + static_cast<std::size_t>(t) + 1];
            }
        }
        losses.push_back(model->forward_backward(x, y, batch, seq, grads));
        const double lr = 3e-3 * std::min(1.0, (it + 1) / 20.0);
        const double norm = global_norm(grads.data(), grads.size());
        adamw.step(model->parameters.data(), grads.data(), lr, clip_coefficient(norm, 1.0), /*zero_grads=*/true);
        model->weights_updated();
    }
    omp_set_num_threads(threads);
    return losses;
}

// Why these bounds. Iteration 0 runs from identical weights: its loss moves by at most the logits'
// bound times max(1, loss), 4 u_b sqrt(4 L + 1) ~ 0.078 relative (the model test's rule). Later the
// runs follow slightly different trajectories (each AdamW step turns gradient differences of relative
// size ~u_b into weight differences); mixed precision must keep them within that same one-pass bound
// at every iteration, i.e. the trajectory difference may not grow beyond what one pass's roundings
// cause. The learning curve itself is compared on means over 50 iterations (the same batches in both
// runs), where the per-batch roundings, unbiased, average out: the means must agree within 1% (a
// systematic bias, e.g. small updates lost to bf16 master weights, shows up there), and both runs
// must learn (the mean drops by at least 1.5 nats from the first window to the last).
TEST_CASE("200 iterations of bf16 training on real text track fp32's losses") {
    const auto tokens = kjv_tokens();
    REQUIRE(tokens.size() > 5000);
    const int iterations = 200;
    const auto fp32 = train_losses<float>(tokens, iterations);
    const auto mixed = train_losses<bf16>(tokens, iterations);
    const double one_pass = 4 * u_b * std::sqrt(4.0 * Dims<configs::Gemma3Tiny>::layers + 1);
    for (int i = 0; i < iterations; ++i) {
        CAPTURE(i);
        CHECK(std::abs(mixed[static_cast<std::size_t>(i)] - fp32[static_cast<std::size_t>(i)]) <=
              one_pass * std::max(1.0, fp32[static_cast<std::size_t>(i)]));
    }
    const auto window_mean = [](const std::vector<double>& v, int first) {
        double s = 0;
        for (int i = first; i < first + 50; ++i) s += v[static_cast<std::size_t>(i)];
        return s / 50;
    };
    std::ostringstream report;
    double max_step_difference = 0;
    for (int i = 0; i < iterations; ++i)
        max_step_difference = std::max(max_step_difference, std::abs(fp32[static_cast<std::size_t>(i)] - mixed[static_cast<std::size_t>(i)]));
    report << " largest per-iteration difference " << max_step_difference << ";";
    for (int w = 0; w < iterations; w += 50) {
        const double a = window_mean(fp32, w), b = window_mean(mixed, w);
        report << " [" << w << "," << w + 50 << "): fp32 " << a << ", bf16 " << b << ";";
        CHECK(std::abs(a - b) <= 0.01 * a);
    }
    CHECK(window_mean(fp32, 0) - window_mean(fp32, 150) >= 1.5);
    CHECK(window_mean(mixed, 0) - window_mean(mixed, 150) >= 1.5);
    MESSAGE("mean training loss per 50 iterations:" << report.str());
}

}  // namespace
