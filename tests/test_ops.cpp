// Each op against its direct formula (forward) and against central finite differences in double
// (backward).
//
// Tolerances. Forward: the op and the naive loop compute the same sums in different orders, so they
// differ by a few ulps times the reduction length: double 1e-12 relative. Backward: for a scalar
// probe L = <out, r>, the central difference (L(x + h v) - L(x - h v)) / 2h has truncation error
// h^2 |L'''| / 6 ~ 1e-12 and rounding error ~ eps |L| / h ~ 1e-10 with h = 1e-6, so directional
// derivatives must agree to 1e-8 relative.
#include <doctest/doctest.h>

#include <gemma3/core/blas.hpp>
#include <gemma3/ops/attention.hpp>
#include <gemma3/ops/embedding.hpp>
#include <gemma3/ops/geglu.hpp>
#include <gemma3/ops/linear.hpp>
#include <gemma3/ops/rmsnorm.hpp>
#include <gemma3/ops/rope.hpp>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

using namespace gemma3;
using Mat = RowMatrix<double>;

namespace {

Mat random_matrix(Index rows, Index cols, std::mt19937_64& rng, double scale = 1.0) {
    std::normal_distribution<double> normal(0.0, scale);
    Mat m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
    return m;
}

MatrixView<double> view(Mat& m) { return matrix_view(m.data(), m.rows(), m.cols()); }
ConstMatrixView<double> cview(const Mat& m) { return const_view(m.data(), m.rows(), m.cols()); }

double max_abs(const Mat& m) { return m.cwiseAbs().maxCoeff(); }
double rel_error(const Mat& got, const Mat& want) { return (got - want).cwiseAbs().maxCoeff() / max_abs(want); }

// Checks <analytic_grad, v> against the central difference of `loss` along v, for a few random v.
void check_directional_derivative(Mat& x, const Mat& analytic_grad, const std::function<double()>& loss,
                                  std::mt19937_64& rng, double tolerance = 1e-8) {
    const double h = 1e-6;
    for (int trial = 0; trial < 3; ++trial) {
        const Mat v = random_matrix(x.rows(), x.cols(), rng);
        const Mat x0 = x;
        x = x0 + h * v;
        const double plus = loss();
        x = x0 - h * v;
        const double minus = loss();
        x = x0;
        const double numeric = (plus - minus) / (2 * h);
        const double analytic = (analytic_grad.array() * v.array()).sum();
        CHECK(std::abs(numeric - analytic) <= tolerance * std::max(1.0, std::abs(analytic)));
    }
}

}  // namespace

TEST_CASE("gemm handles transposes and strided views like the naive product") {
    std::mt19937_64 rng(1);
    Mat a = random_matrix(7, 5, rng), b = random_matrix(6, 5, rng), big = random_matrix(10, 12, rng);
    Mat c = Mat::Zero(7, 6);
    gemm(cview(a), Op::none, cview(b), Op::transpose, view(c));
    Mat want(7, 6);
    for (Index i = 0; i < 7; ++i)
        for (Index j = 0; j < 6; ++j) {
            double s = 0;
            for (Index k = 0; k < 5; ++k) s += a(i, k) * b(j, k);
            want(i, j) = s;
        }
    CHECK(rel_error(c, want) < 1e-14);

    // A 3x4 block at (2, 5) of a 10x12 matrix, transposed, times a.T block: strides respected.
    Mat out = Mat::Constant(4, 7, 1.0);
    auto block = sub_view(cview(big), 2, 5, 5, 4);  // 5 x 4
    gemm(block, Op::transpose, cview(a), Op::transpose, view(out), 2.0, 1.0);
    Mat want2 = 2.0 * big.block(2, 5, 5, 4).transpose() * a.transpose() + Mat::Constant(4, 7, 1.0);
    CHECK(rel_error(out, want2) < 1e-14);
}

TEST_CASE("gemm with a single row (the matrix-vector path) handles every transpose and beta") {
    std::mt19937_64 rng(12);
    const Mat b = random_matrix(9, 7, rng), row = random_matrix(1, 9, rng), column = random_matrix(9, 1, rng);
    const Mat bt = random_matrix(7, 9, rng);
    Mat c = Mat::Constant(1, 7, 2.0);
    gemm(cview(row), Op::none, cview(b), Op::none, view(c), 1.5, 0.5);  // 1x9 * 9x7
    CHECK(rel_error(c, 1.5 * row * b + Mat::Constant(1, 7, 1.0)) < 1e-14);
    gemm(cview(row), Op::none, cview(bt), Op::transpose, view(c));  // 1x9 * (7x9)^T
    CHECK(rel_error(c, row * bt.transpose()) < 1e-14);
    gemm(cview(column), Op::transpose, cview(b), Op::none, view(c));  // (9x1)^T * 9x7
    CHECK(rel_error(c, column.transpose() * b) < 1e-14);
    // A row inside a wider matrix: strides respected.
    Mat wide = random_matrix(3, 20, rng);
    gemm(sub_view(cview(wide), 1, 4, 1, 9), Op::none, cview(bt), Op::transpose, view(c));
    CHECK(rel_error(c, wide.block(1, 4, 1, 9) * bt.transpose()) < 1e-14);
}

// float and bf16-input products (oneDNN when built with it) against the double product of the same
// inputs. Bounds: the inputs are exactly representable in the product's input type, so only the
// fp32 accumulation rounds: |error| <= k u32 sum|a||b| (u32 = 2^-24), with k = 64 here; we allow
// 2k u32 of sum |a_i||b_i|, per element.
TEST_CASE("gemm in float and with bf16 inputs matches the double product for every transpose, stride, alpha and beta") {
    std::mt19937_64 rng(21);
    const Index m = 37, n = 29, k = 64;
    for (const bool bf16_inputs : {false, true}) {
        for (const int transposes : {0, 1, 2, 3}) {
            const Op op_a = transposes & 1 ? Op::transpose : Op::none, op_b = transposes & 2 ? Op::transpose : Op::none;
            // Operands inside wider matrices (outer stride > cols), values exact in bf16.
            Mat a_big = random_matrix(op_a == Op::none ? m : k, (op_a == Op::none ? k : m) + 3, rng);
            Mat b_big = random_matrix(op_b == Op::none ? k : n, (op_b == Op::none ? n : k) + 5, rng);
            for (Mat* x : {&a_big, &b_big})
                for (Index i = 0; i < x->size(); ++i) x->data()[i] = static_cast<double>(static_cast<float>(bf16(static_cast<float>(x->data()[i]))));
            const auto a_d = a_big.leftCols(a_big.cols() - 3), b_d = b_big.leftCols(b_big.cols() - 5);
            const Mat c0 = random_matrix(m, n, rng);
            const double alpha = 0.75, beta = -1.5;
            const Mat oa = op_a == Op::none ? Mat(a_d) : Mat(a_d.transpose()), ob = op_b == Op::none ? Mat(b_d) : Mat(b_d.transpose());
            const Mat want = alpha * oa * ob + beta * c0;
            const Mat scale = oa.cwiseAbs() * ob.cwiseAbs();
            RowMatrix<float> c = c0.cast<float>();
            const RowMatrix<float> a_f = a_big.cast<float>(), b_f = b_big.cast<float>();
            const RowMatrix<bf16> a_h = a_f.cast<bf16>(), b_h = b_f.cast<bf16>();
            if (bf16_inputs) {
                gemm(const_view(a_h.data(), a_d.rows(), a_d.cols(), a_h.cols()), op_a,
                     const_view(b_h.data(), b_d.rows(), b_d.cols(), b_h.cols()), op_b,
                     matrix_view(c.data(), m, n), float(alpha), float(beta));
            } else {
                gemm(const_view(a_f.data(), a_d.rows(), a_d.cols(), a_f.cols()), op_a,
                     const_view(b_f.data(), b_d.rows(), b_d.cols(), b_f.cols()), op_b,
                     matrix_view(c.data(), m, n), float(alpha), float(beta));
            }
            const double u32 = std::ldexp(1.0, -24);
            const Mat err = (c.cast<double>() - want).cwiseAbs();
            const Mat bound = (2.0 * k * u32) * (std::abs(alpha) * scale + std::abs(beta) * c0.cwiseAbs()) +
                              Mat::Constant(m, n, 1e-30);
            INFO("bf16 inputs " << bf16_inputs << ", transposes " << transposes);
            CHECK((err.array() <= bound.array()).all());
            // Not vacuous: the products are far from zero next to the bound.
            CHECK(want.cwiseAbs().maxCoeff() > 1e3 * bound.maxCoeff());
        }
    }
}

// The float one-row product against a transposed row-major weight, y = alpha W x + beta y, which
// decoding runs for every projection (a hand-written AVX-512 kernel where the CPU has it): shapes
// with row and column tails (4 rows and 16 columns per step), a strided W, beta 0 over a NaN-filled
// y (ignored, as BLAS does) and not, and a size that splits across threads. Bound as above.
TEST_CASE("gemm's float single-row product against a transposed weight matches the double product") {
    std::mt19937_64 rng(33);
    struct Shape {
        Index n, k;
    };
    for (const Shape shape : {Shape{7, 5}, Shape{13, 35}, Shape{64, 640}, Shape{517, 531}}) {
        for (const double beta : {0.0, -1.5}) {
            const Index n = shape.n, k = shape.k;
            CAPTURE(n);
            CAPTURE(k);
            CAPTURE(beta);
            const Mat w_big = random_matrix(n, k + 3, rng), x = random_matrix(1, k, rng), y0 = random_matrix(1, n, rng);
            const RowMatrix<float> w_f = w_big.cast<float>(), x_f = x.cast<float>();
            const Mat w_d = w_f.cast<double>().leftCols(k), x_d = x_f.cast<double>();  // the float inputs, exactly
            RowMatrix<float> y = beta == 0.0 ? RowMatrix<float>::Constant(1, n, std::nanf("")) : RowMatrix<float>(y0.cast<float>());
            const double alpha = 0.75;
            gemm(const_view(x_f.data(), 1, k), Op::none, const_view(w_f.data(), n, k, k + 3), Op::transpose, matrix_view(y.data(), 1, n),
                 float(alpha), float(beta));
            const Mat y0_d = y0.cast<float>().cast<double>();
            const Mat want = alpha * x_d * w_d.transpose() + beta * y0_d;
            const Mat scale = std::abs(alpha) * x_d.cwiseAbs() * w_d.cwiseAbs().transpose() + std::abs(beta) * y0_d.cwiseAbs();
            const Mat err = (y.cast<double>() - want).cwiseAbs();
            const Mat bound = (2.0 * (k + 2) * std::ldexp(1.0, -24)) * scale + Mat::Constant(1, n, 1e-30);
            CHECK((err.array() <= bound.array()).all());
            CHECK(want.cwiseAbs().maxCoeff() > 1e3 * bound.maxCoeff());  // not vacuous
        }
    }
}

TEST_CASE("embedding gathers scaled rows and scatter-adds repeated ids") {
    std::mt19937_64 rng(2);
    Mat table = random_matrix(11, 4, rng);
    std::vector<std::int32_t> ids = {3, 0, 3, 10, 3};
    Mat out(5, 4);
    embedding_forward<double>(cview(table), ids, 2.5, view(out));
    for (Index i = 0; i < 5; ++i) {
        const Mat want = 2.5 * table.row(ids[i]);  // one rounding, as in the op: equal bit for bit
        CHECK(out.row(i) == want);
    }

    Mat d_out = random_matrix(5, 4, rng);
    Mat d_table = Mat::Zero(11, 4);
    embedding_backward<double>(ids, 2.5, cview(d_out), view(d_table));
    Mat want = Mat::Zero(11, 4);
    for (Index i = 0; i < 5; ++i) want.row(ids[i]) += 2.5 * d_out.row(i);
    CHECK(rel_error(d_table, want) < 1e-15);

    std::vector<std::int32_t> bad = {1, 11};
    CHECK_THROWS_WITH_AS(check_token_ids(bad, 11), doctest::Contains("token id 11 at position 1"), std::out_of_range);
}

TEST_CASE("rmsnorm matches (1 + w) x / sqrt(mean(x^2) + eps) and its gradient") {
    std::mt19937_64 rng(3);
    const Index rows = 6, n = 10;
    const double eps = 1e-6;
    Mat x = random_matrix(rows, n, rng), w = random_matrix(1, n, rng, 0.3), y(rows, n);
    std::vector<double> rstd(rows);
    rmsnorm_forward<double>(cview(x), w.data(), eps, view(y), rstd.data());
    Mat want(rows, n);
    for (Index i = 0; i < rows; ++i) {
        double ms = 0;
        for (Index j = 0; j < n; ++j) ms += x(i, j) * x(i, j);
        ms /= n;
        for (Index j = 0; j < n; ++j) want(i, j) = x(i, j) / std::sqrt(ms + eps) * (1 + w(0, j));
    }
    CHECK(rel_error(y, want) < 1e-14);

    const Mat r = random_matrix(rows, n, rng);
    auto loss = [&] {
        Mat out(rows, n);
        std::vector<double> s(rows);
        rmsnorm_forward<double>(cview(x), w.data(), eps, view(out), s.data());
        return (out.array() * r.array()).sum();
    };
    Mat dx(rows, n), dw = Mat::Zero(1, n);
    rmsnorm_backward<double>(cview(x), w.data(), rstd.data(), cview(r), view(dx), dw.data());
    check_directional_derivative(x, dx, loss, rng);
    check_directional_derivative(w, dw, loss, rng);
}

TEST_CASE("rope rotates dimension pairs (d, d + half) by p * theta^(-2d/head_dim)") {
    std::mt19937_64 rng(4);
    const int head_dim = 8, heads = 3;
    const Index rows = 5;
    const double theta = 10000;
    RopeTable<double> table(theta, head_dim, 32);
    std::vector<std::int32_t> positions = {0, 1, 7, 30, 31};
    Mat x = random_matrix(rows, heads * head_dim, rng), y = x;
    rope_forward<double>(view(y), head_dim, positions, table);
    Mat want(rows, heads * head_dim);
    for (Index i = 0; i < rows; ++i)
        for (int h = 0; h < heads; ++h)
            for (int d = 0; d < head_dim / 2; ++d) {
                const double a = positions[i] * std::pow(theta, -2.0 * d / head_dim);
                const Index lo = h * head_dim + d, hi = lo + head_dim / 2;
                want(i, lo) = x(i, lo) * std::cos(a) - x(i, hi) * std::sin(a);
                want(i, hi) = x(i, hi) * std::cos(a) + x(i, lo) * std::sin(a);
            }
    CHECK(rel_error(y, want) < 1e-14);
    CHECK(y.row(0) == x.row(0));  // position 0 is the identity

    // The backward rotation is the transpose: <R x, g> = <x, R^T g>.
    Mat g = random_matrix(rows, heads * head_dim, rng), gt = g;
    rope_backward<double>(view(gt), head_dim, positions, table);
    CHECK(std::abs((y.array() * g.array()).sum() - (x.array() * gt.array()).sum()) < 1e-12);
}

TEST_CASE("geglu is gelu_tanh(gate) * up with the tanh-GELU derivative") {
    std::mt19937_64 rng(5);
    Mat gate = random_matrix(4, 6, rng, 2.0), up = random_matrix(4, 6, rng), z(4, 6);
    geglu_forward<double>(cview(gate), cview(up), view(z));
    for (Index i = 0; i < z.size(); ++i) {
        const double g = gate.data()[i];
        const double want = 0.5 * g * (1 + std::tanh(std::sqrt(2 / M_PI) * (g + 0.044715 * g * g * g))) * up.data()[i];
        CHECK(std::abs(z.data()[i] - want) <= 1e-15 * std::max(1.0, std::abs(want)));
    }
    const Mat r = random_matrix(4, 6, rng);
    auto loss = [&] {
        Mat out(4, 6);
        geglu_forward<double>(cview(gate), cview(up), view(out));
        return (out.array() * r.array()).sum();
    };
    Mat d_gate(4, 6), d_up(4, 6);
    geglu_backward<double>(cview(gate), cview(up), cview(r), view(d_gate), view(d_up));
    check_directional_derivative(gate, d_gate, loss, rng);
    check_directional_derivative(up, d_up, loss, rng);
}

TEST_CASE("linear computes x W^T with PyTorch's [out, in] layout, and its gradients") {
    std::mt19937_64 rng(6);
    Mat x = random_matrix(5, 7, rng), w = random_matrix(3, 7, rng), y(5, 3);
    linear_forward<double>(cview(x), cview(w), view(y));
    CHECK(rel_error(y, x * w.transpose()) < 1e-14);
    const Mat r = random_matrix(5, 3, rng);
    auto loss = [&] {
        Mat out(5, 3);
        linear_forward<double>(cview(x), cview(w), view(out));
        return (out.array() * r.array()).sum();
    };
    Mat dx(5, 7), dw = Mat::Zero(3, 7);
    linear_backward<double>(cview(x), cview(w), cview(r), view(dx), view(dw));
    check_directional_derivative(x, dx, loss, rng);
    check_directional_derivative(w, dw, loss, rng);
}

namespace {
// Attention by its definition, one (sequence, head, query) at a time.
Mat naive_attention(const Mat& q, const Mat& k, const Mat& v, const AttentionShape& s) {
    Mat out = Mat::Zero(q.rows(), q.cols());
    for (Index b = 0; b < s.batch; ++b)
        for (Index h = 0; h < s.heads; ++h) {
            const Index g = h / (s.heads / s.kv_heads);
            for (Index i = 0; i < s.seq; ++i) {
                std::vector<double> score(static_cast<std::size_t>(s.seq), -INFINITY);
                double max = -INFINITY;
                for (Index j = 0; j <= i; ++j) {
                    if (s.window > 0 && j <= i - s.window) continue;  // sees i - W < j <= i
                    double dot = 0;
                    for (Index d = 0; d < s.head_dim; ++d)
                        dot += q(b * s.seq + i, h * s.head_dim + d) * k(b * s.seq + j, g * s.head_dim + d);
                    score[j] = dot * s.scale;
                    max = std::max(max, score[j]);
                }
                double total = 0;
                for (auto& e : score) total += (e = std::exp(e - max));
                for (Index j = 0; j < s.seq; ++j)
                    for (Index d = 0; d < s.head_dim; ++d)
                        out(b * s.seq + i, h * s.head_dim + d) += score[j] / total * v(b * s.seq + j, g * s.head_dim + d);
            }
        }
    return out;
}
}  // namespace

TEST_CASE("attention matches its definition: causal, sliding window, grouped heads, long sequences") {
    std::mt19937_64 rng(7);
    struct Case {
        Index batch, seq, heads, kv_heads, head_dim, window;
    };
    // seq 150 spans three query tiles, so the tiling and the window's key range are exercised.
    for (const Case c : {Case{2, 9, 4, 1, 6, 0}, Case{2, 9, 4, 2, 6, 3}, Case{1, 150, 2, 1, 4, 70},
                         Case{1, 150, 4, 4, 4, 0}, Case{1, 7, 2, 1, 4, 1}}) {
        CAPTURE(c.seq);
        CAPTURE(c.window);
        const AttentionShape s{c.batch, c.seq, c.heads, c.kv_heads, c.head_dim, c.window, 0.37};
        const Index n = c.batch * c.seq;
        Mat q = random_matrix(n, c.heads * c.head_dim, rng), k = random_matrix(n, c.kv_heads * c.head_dim, rng),
            v = random_matrix(n, c.kv_heads * c.head_dim, rng);
        Mat out(n, q.cols());
        std::vector<double> probs(static_cast<std::size_t>(c.batch * c.heads * c.seq * c.seq));
        attention_forward<double>(cview(q), cview(k), cview(v), s, view(out), probs.data());
        CHECK(rel_error(out, naive_attention(q, k, v, s)) < 1e-13);
        Mat out_no_probs(n, q.cols());
        attention_forward<double>(cview(q), cview(k), cview(v), s, view(out_no_probs), nullptr);
        CHECK(rel_error(out_no_probs, out) < 1e-15);

        const Mat r = random_matrix(n, q.cols(), rng);
        auto loss = [&] {
            Mat o(n, q.cols());
            attention_forward<double>(cview(q), cview(k), cview(v), s, view(o), nullptr);
            return (o.array() * r.array()).sum();
        };
        Mat dq(n, q.cols()), dk(n, k.cols()), dv(n, v.cols());
        attention_backward<double>(cview(q), cview(k), cview(v), probs.data(), cview(r), s, view(dq), view(dk),
                                   view(dv));
        check_directional_derivative(q, dq, loss, rng);
        check_directional_derivative(k, dk, loss, rng);
        check_directional_derivative(v, dv, loss, rng);
    }
}

namespace {
// Each row's log-sum-exp of its scaled visible scores, by its definition.
std::vector<double> naive_lse(const Mat& q, const Mat& k, const AttentionShape& s) {
    std::vector<double> lse;
    for (Index b = 0; b < s.batch; ++b)
        for (Index h = 0; h < s.heads; ++h)
            for (Index i = 0; i < s.seq; ++i) {
                const Index g = h / (s.heads / s.kv_heads);
                double max = -INFINITY;
                std::vector<double> score;
                for (Index j = s.first_key(i); j <= i; ++j) {
                    score.push_back(s.scale * q.row(b * s.seq + i).segment(h * s.head_dim, s.head_dim).dot(
                                                  k.row(b * s.seq + j).segment(g * s.head_dim, s.head_dim)));
                    max = std::max(max, score.back());
                }
                double total = 0;
                for (double e : score) total += std::exp(e - max);
                lse.push_back(max + std::log(total));
            }
    return lse;
}
}  // namespace

// The tiled kernels compute the same sums as the exact ones in another order (the online softmax
// rescales partial sums; dS's row term is dO.O instead of sum dP*P): a few ulps times the reduction
// length apart, so 1e-12 relative in double.
TEST_CASE("tiled attention equals the exact attention, forward and backward") {
    std::mt19937_64 rng(17);
    struct Case {
        Index batch, seq, heads, kv_heads, head_dim, window;
    };
    // Tiles are 64 queries x 64 keys: seq 150 and 129 end in partial tiles; windows 5 and 40 are
    // smaller than a tile, 70 and 100 larger, 0 is full causal; kv_heads 1 is MQA, 2 of 4 GQA.
    for (const Case c : {Case{2, 150, 4, 1, 8, 0}, Case{1, 150, 4, 2, 8, 5}, Case{2, 129, 4, 1, 4, 40},
                         Case{1, 150, 2, 1, 4, 70}, Case{1, 200, 4, 2, 4, 100}, Case{2, 9, 4, 4, 6, 3},
                         Case{1, 64, 2, 1, 4, 64}, Case{1, 70, 2, 1, 4, 1}}) {
        CAPTURE(c.batch);
        CAPTURE(c.seq);
        CAPTURE(c.heads);
        CAPTURE(c.kv_heads);
        CAPTURE(c.window);
        const AttentionShape s{c.batch, c.seq, c.heads, c.kv_heads, c.head_dim, c.window, 0.37};
        const Index n = c.batch * c.seq, qw = c.heads * c.head_dim, kw = c.kv_heads * c.head_dim;
        // q, k and v side by side, as the model's fused projection leaves them (strided views).
        const Mat qkv = random_matrix(n, qw + 2 * kw, rng), d_out = random_matrix(n, qw, rng);
        const auto q = column_block(cview(qkv), 0, qw), k = column_block(cview(qkv), qw, kw),
                   v = column_block(cview(qkv), qw + kw, kw);

        Mat out_exact(n, qw), out(n, qw);
        std::vector<double> probs(static_cast<std::size_t>(c.batch * c.heads * c.seq * c.seq));
        std::vector<double> lse(static_cast<std::size_t>(c.batch * c.heads * c.seq));
        attention_forward<double>(q, k, v, s, view(out_exact), probs.data());
        flash_attention_forward<double>(q, k, v, s, view(out), lse.data());
        CHECK(rel_error(out, out_exact) < 1e-12);
        const auto lse_want = naive_lse(qkv.leftCols(qw), qkv.middleCols(qw, kw), s);
        double lse_error = 0, lse_max = 0;
        for (std::size_t i = 0; i < lse.size(); ++i) {
            lse_error = std::max(lse_error, std::abs(lse[i] - lse_want[i]));
            lse_max = std::max(lse_max, std::abs(lse_want[i]));
        }
        CHECK(lse_error <= 1e-12 * lse_max);
        Mat out_inference(n, qw);  // without lse: the same output
        flash_attention_forward<double>(q, k, v, s, view(out_inference), nullptr);
        CHECK(rel_error(out_inference, out) == 0);

        Mat dq_exact(n, qw), dk_exact(n, kw), dv_exact(n, kw), dq(n, qw), dk(n, kw), dv(n, kw);
        attention_backward<double>(q, k, v, probs.data(), cview(d_out), s, view(dq_exact), view(dk_exact), view(dv_exact));
        // The outputs start as garbage: the kernel must overwrite, not add.
        dq.setConstant(NAN);
        dk.setConstant(NAN);
        dv.setConstant(NAN);
        flash_attention_backward<double>(q, k, v, cview(out), lse.data(), cview(d_out), s, view(dq), view(dk), view(dv));
        CHECK(rel_error(dv, dv_exact) < 1e-12);
        if (c.window == 1) {
            // Each query sees only itself: P = 1, so dS = dP - dO.O is 0 exactly in the exact kernel
            // and a rounding difference of two equal dot products of O(1) numbers here.
            CHECK(max_abs(dq) < 1e-12 * c.head_dim);
            CHECK(max_abs(dk) < 1e-12 * c.head_dim);
        } else {
            CHECK(rel_error(dq, dq_exact) < 1e-12);
            CHECK(rel_error(dk, dk_exact) < 1e-12);
        }
    }
}

TEST_CASE("tiled attention's gradients match finite differences") {
    std::mt19937_64 rng(23);
    // Two query and key tiles with a window across their boundary; 4 query heads on 2 kv heads.
    const AttentionShape s{2, 80, 4, 2, 4, 20, 0.5};
    const Index n = s.batch * s.seq, qw = s.heads * s.head_dim, kw = s.kv_heads * s.head_dim;
    Mat q = random_matrix(n, qw, rng), k = random_matrix(n, kw, rng), v = random_matrix(n, kw, rng);
    const Mat r = random_matrix(n, qw, rng);
    Mat out(n, qw);
    std::vector<double> lse(static_cast<std::size_t>(s.batch * s.heads * s.seq));
    auto loss = [&] {
        Mat o(n, qw);
        flash_attention_forward<double>(cview(q), cview(k), cview(v), s, view(o), nullptr);
        return (o.array() * r.array()).sum();
    };
    flash_attention_forward<double>(cview(q), cview(k), cview(v), s, view(out), lse.data());
    Mat dq(n, qw), dk(n, kw), dv(n, kw);
    flash_attention_backward<double>(cview(q), cview(k), cview(v), cview(out), lse.data(), cview(r), s, view(dq),
                                     view(dk), view(dv));
    check_directional_derivative(q, dq, loss, rng);
    check_directional_derivative(k, dk, loss, rng);
    check_directional_derivative(v, dv, loss, rng);
}

TEST_CASE("tiled attention in float agrees with the double one to float rounding") {
    std::mt19937_64 rng(29);
    const AttentionShape s{1, 130, 4, 1, 16, 40, 0.25};
    const Index n = s.batch * s.seq, qw = s.heads * s.head_dim, kw = s.kv_heads * s.head_dim;
    const Mat q = random_matrix(n, qw, rng), k = random_matrix(n, kw, rng), v = random_matrix(n, kw, rng),
              d_out = random_matrix(n, qw, rng);
    using MatF = RowMatrix<float>;
    const MatF qf = q.cast<float>(), kf = k.cast<float>(), vf = v.cast<float>(), d_outf = d_out.cast<float>();
    const auto cf = [](const MatF& m) { return const_view(m.data(), m.rows(), m.cols()); };
    const auto vf_ = [](MatF& m) { return matrix_view(m.data(), m.rows(), m.cols()); };
    Mat out(n, qw), dq(n, qw), dk(n, kw), dv(n, kw);
    std::vector<double> lse(static_cast<std::size_t>(s.heads * s.seq));
    flash_attention_forward<double>(cview(q), cview(k), cview(v), s, view(out), lse.data());
    flash_attention_backward<double>(cview(q), cview(k), cview(v), cview(out), lse.data(), cview(d_out), s, view(dq),
                                     view(dk), view(dv));
    MatF outf(n, qw), dqf(n, qw), dkf(n, kw), dvf(n, kw);
    std::vector<float> lsef(lse.size());
    flash_attention_forward<float>(cf(qf), cf(kf), cf(vf), s, vf_(outf), lsef.data());
    flash_attention_backward<float>(cf(qf), cf(kf), cf(vf), cf(outf), lsef.data(), cf(d_outf), s, vf_(dqf), vf_(dkf),
                                    vf_(dvf));
    // fp32 unit roundoff 6e-8 times sums of ~100 terms, with inputs rounded to float: 1e-5 relative
    // (the fp32 bound), measured against the largest entry.
    CHECK(rel_error(outf.cast<double>(), out) < 1e-5);
    CHECK(rel_error(dqf.cast<double>(), dq) < 1e-5);
    CHECK(rel_error(dkf.cast<double>(), dk) < 1e-5);
    CHECK(rel_error(dvf.cast<double>(), dv) < 1e-5);
}
