// Generation: cached decoding equals a full recompute, the cache's memory follows its formula, and
// sampling is deterministic and draws from the right distribution. Packed inference weights (bf16,
// blockwise int8) decode like the double model holding the same packed weights.
//
// Cached and full forward passes compute the same sums in different orders (the cache path splits
// each softmax over two key sets), so in double they agree to a few ulps times the chain of
// reductions: 1e-12 relative.
//
// Packed weights. The generator then computes in fp32 (u_f = 2^-24) with the stored weights exactly
// (bf16 widens exactly; an int8 weight is q * scale, applied as a block's partial sum times its
// scale). Against the double model holding exactly those weights, each dot product of length n errs
// by at most n u_f times the sum of its terms' magnitudes (Higham's bound); a logit's dependency path
// has about 10 such operations per block (norms, products, attention, residual adds) plus the final
// norm and head, with gain of order one (the norms renormalise). So the normwise relative error is
// below (10 L + 2) n_max u_f, n_max the longest reduction (2 * hidden_dim). Weights left in fp32,
// i.e. not rounded to bf16, would differ by up to 2^-9 relative per weight: ten times that bound
// and more at these sizes, so the test notices.
#include <doctest/doctest.h>

#include <gemma3/core/generation.hpp>

#include <map>
#include <memory>
#include <random>

using namespace gemma3;

namespace {

// A window of 4 and sequences of 40: sliding layers wrap their ring buffer many times.
struct SmallWindow {
    static constexpr std::string_view name = "SmallWindow";
    static constexpr int vocab_size = 97, context_length = 64, emb_dim = 32, n_heads = 4, n_kv_groups = 2,
                         head_dim = 8, hidden_dim = 48, n_layers = 3, sliding_window = 4;
    static constexpr bool qk_norm = true, tie_word_embeddings = false;
    static constexpr double query_pre_attn_scalar = 8, rope_local_base = 10000, rope_base = 1000000,
                            rms_norm_eps = 1e-6;
    using layer_types = LayerPattern<SlidingAttention, FullAttention, SlidingAttention>;
};

template <class C>
std::unique_ptr<Model<C, Cpu<double>>> random_model() {
    auto model = std::make_unique<Model<C, Cpu<double>>>();
    model->init(InitScheme::hf, 0.2, 3);
    auto* p = model->parameters.data();
    for (const auto& t : parameter_tensors<C>())
        if (t.role == TensorRole::norm)
            for (std::size_t i = 0; i < t.numel(); ++i) p[t.offset + i] = 0.2 * std::cos(double(i + t.offset));
    return model;
}

double relative_difference(ConstMatrixView<double> a, ConstMatrixView<double> b) {
    return (a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff();
}

template <class C>
std::unique_ptr<Model<C, Cpu<float>>> to_float(const Model<C, Cpu<double>>& model) {
    auto out = std::make_unique<Model<C, Cpu<float>>>();
    const auto n = static_cast<std::size_t>(ParameterLayout<C>::total);
    for (std::size_t i = 0; i < n; ++i) out->parameters.data()[i] = static_cast<float>(model.parameters.data()[i]);
    return out;
}

// The double model whose weights are exactly the packed ones (norms: the fp32 model's).
template <class C>
std::unique_ptr<Model<C, Cpu<double>>> with_packed_weights(const Model<C, Cpu<float>>& source, const PackedWeights<C>& packed) {
    using D = Dims<C>;
    auto out = std::make_unique<Model<C, Cpu<double>>>();
    const auto n = static_cast<std::size_t>(ParameterLayout<C>::total);
    for (std::size_t i = 0; i < n; ++i) out->parameters.data()[i] = static_cast<double>(source.parameters.data()[i]);
    auto w = out->parameters.weights();
    const auto put = [](const PackedMatrix& m, double* dst) {
        for (Index r = 0; r < m.rows; ++r)
            for (Index c = 0; c < m.cols; ++c) dst[r * m.cols + c] = m.value(r, c);
    };
    for (int l = 0; l < D::layers; ++l) {
        const auto& p = packed.block(l);
        auto& b = w.blocks[static_cast<std::size_t>(l)];
        put(p.q_proj, b.q_proj);
        put(p.o_proj, b.o_proj);
        put(p.gate_proj, b.gate_proj);
        put(p.down_proj, b.down_proj);
    }
    put(packed.head(), w.lm_head);
    put(packed.embed(), w.embed);
    return out;
}

// Restores the kernel choice at the end of a scope.
struct ScalarKernels {
    explicit ScalarKernels(bool on) : saved(detail::packed_kernels_force_scalar()) { detail::packed_kernels_force_scalar() = on; }
    ~ScalarKernels() { detail::packed_kernels_force_scalar() = saved; }
    bool saved;
};

}  // namespace

TEST_CASE("cached decoding equals a full recompute at every step, far past the sliding window") {
    using C = SmallWindow;
    auto model = random_model<C>();
    std::mt19937 rng(9);
    std::vector<std::int32_t> tokens(40);
    for (auto& t : tokens) t = static_cast<std::int32_t>(rng() % C::vocab_size);

    for (const Index chunk : {Index{128}, Index{3}}) {  // one chunk per call, and chunks smaller than a call
        CAPTURE(chunk);
        Generator<C, double> generator(*model, C::context_length, chunk);
        // Feed the sequence in pieces of varying size: a prompt of 7, single tokens, a piece of 5, ...
        const std::vector<Index> pieces = {7, 1, 1, 5, 1, 9, 1, 1, 1, 13};
        Index done = 0;
        double worst = 0;
        for (const Index piece : pieces) {
            const auto cached = generator.append(std::span(tokens).subspan(static_cast<std::size_t>(done), static_cast<std::size_t>(piece)),
                                                 /*all_logits=*/true);
            const auto full = model->forward(std::span(tokens).first(static_cast<std::size_t>(done + piece)), 1, done + piece);
            const double err = relative_difference(cached, row_block(full, done, piece));
            worst = std::max(worst, err);
            CHECK(err <= 1e-12);
            done += piece;
            CHECK(generator.length() == done);
            // Memory: exactly K and V of min(window, n) positions on sliding layers, n on full ones.
            CHECK(generator.cache().used_bytes() == KvCache<C, double>::bytes_for(done));
            CHECK(generator.cache().layer(0).capacity() == C::sliding_window);
        }
        REQUIRE(done == 40);
        MESSAGE("chunk " << chunk << ": worst relative difference cached vs full over 40 positions = " << worst);
    }
}

// attention_with_cache splits the cache into spans of slots and combines their softmax pieces
// (flash-decoding). Whatever the span, the result is the plain softmax over the visible keys, written
// here directly in double: the same sums in another order, so 1e-12 relative.
TEST_CASE("attention against the cache is the plain softmax over visible keys, whatever the span") {
    std::mt19937 rng(21);
    std::normal_distribution<double> normal(0.0, 1.0);
    const auto random_matrix = [&](Index rows, Index cols) {
        RowMatrix<double> m(rows, cols);
        for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
        return m;
    };
    const auto view = [](const RowMatrix<double>& m) { return const_view(m.data(), m.rows(), m.cols()); };
    const Index heads = 4, kv_heads = 2, dh = 8;
    struct Case {
        Index window, limit, p0, n;  // window 0: full attention; a sliding layer's ring has `limit` slots
    };
    // Sliding rings that have wrapped (p0 past the window) and not, a full cache with unused slots,
    // single-token decoding and chunks.
    for (const Case c : {Case{5, 5, 12, 1}, Case{5, 5, 12, 4}, Case{5, 5, 3, 2}, Case{0, 40, 17, 1}, Case{0, 40, 17, 6}}) {
        CAPTURE(c.window);
        CAPTURE(c.p0);
        CAPTURE(c.n);
        const AttentionShape shape{1, c.p0 + c.n, heads, kv_heads, dh, c.window, 0.35};
        LayerKvCache<double> cache;
        cache.ring = c.window > 0;
        cache.limit = c.limit;
        cache.width = kv_heads * dh;
        cache.reserve(c.window > 0 ? c.limit : c.p0 + 9);  // a full layer's cache larger than its positions
        const auto cached_k = random_matrix(cache.capacity(), cache.width), cached_v = random_matrix(cache.capacity(), cache.width);
        std::copy_n(cached_k.data(), cached_k.size(), cache.k.data());
        std::copy_n(cached_v.data(), cached_v.size(), cache.v.data());
        for (Index pos = 0; pos < c.p0; ++pos) cache.position[static_cast<std::size_t>(cache.slot(pos))] = static_cast<std::int32_t>(pos);
        const auto q = random_matrix(c.n, heads * dh), k_new = random_matrix(c.n, cache.width), v_new = random_matrix(c.n, cache.width);

        // The reference: every visible key of token r (position p0 + r), from the cache or the chunk.
        RowMatrix<double> expected(c.n, heads * dh);
        for (Index r = 0; r < c.n; ++r) {
            const Index first = shape.first_key(c.p0 + r);
            for (Index h = 0; h < heads; ++h) {
                const Index g = h / (heads / kv_heads);
                std::vector<std::pair<double, Eigen::RowVectorXd>> terms;  // (score, value)
                const auto query = q.row(r).segment(h * dh, dh);
                for (Index slot = 0; slot < cache.capacity(); ++slot) {
                    const Index pos = cache.position[static_cast<std::size_t>(slot)];
                    if (pos < 0 || pos < first) continue;
                    terms.emplace_back(shape.scale * query.dot(cached_k.row(slot).segment(g * dh, dh)), cached_v.row(slot).segment(g * dh, dh));
                }
                for (Index j = 0; j <= r; ++j) {
                    if (c.p0 + j < first) continue;
                    terms.emplace_back(shape.scale * query.dot(k_new.row(j).segment(g * dh, dh)), v_new.row(j).segment(g * dh, dh));
                }
                double max = -1e300, sum = 0;
                for (const auto& t : terms) max = std::max(max, t.first);
                Eigen::RowVectorXd o = Eigen::RowVectorXd::Zero(dh);
                for (const auto& t : terms) {
                    sum += std::exp(t.first - max);
                    o += std::exp(t.first - max) * t.second;
                }
                expected.row(r).segment(h * dh, dh) = o / sum;
            }
        }
        for (const Index span : {Index{1}, Index{3}, Index{256}}) {
            CAPTURE(span);
            RowMatrix<double> out(c.n, heads * dh);
            attention_with_cache<double>(view(q), view(k_new), view(v_new), cache, c.p0, shape,
                                         matrix_view(out.data(), c.n, heads * dh), span);
            CHECK(relative_difference(view(out), view(expected)) <= 1e-12);
        }
    }
}

TEST_CASE("the seed config's KV cache at 32,768 tokens is window-sized on its 15 sliding layers") {
    // 2 (K, V) x (15 x 512 + 3 x 32768) positions x 1 kv head x 256 values x 4 bytes.
    CHECK(KvCache<configs::Gemma3_270M, float>::bytes_for(32768) == std::size_t{2} * (15 * 512 + 3 * 32768) * 256 * 4);
    CHECK(KvCache<configs::Gemma3_270M, float>::bytes_for(100) == std::size_t{2} * 18 * 100 * 256 * 4);
}

TEST_CASE("appending past the cache's limit is an error, not a wrap-around") {
    using C = SmallWindow;
    auto model = random_model<C>();
    Generator<C, double> generator(*model, 10);
    std::vector<std::int32_t> tokens(8, 1);
    generator.append(tokens);
    CHECK_THROWS_AS(generator.append(std::span(tokens).first(3)), std::length_error);
    std::vector<std::int32_t> bad = {97};
    CHECK_THROWS_AS(generator.append(bad), std::out_of_range);
}

TEST_CASE("greedy generation is deterministic and equals the argmax of full recomputes") {
    using C = SmallWindow;
    auto model = random_model<C>();
    const std::vector<std::int32_t> prompt = {5, 17, 3};
    std::vector<std::vector<std::int32_t>> runs;
    for (int run = 0; run < 2; ++run) {
        Generator<C, double> generator(*model);
        TokenSampler greedy({0.0, 0, 1.0, 0});
        runs.push_back(generate(generator, prompt, 20, greedy, -1));
    }
    CHECK(runs[0] == runs[1]);
    REQUIRE(runs[0].size() == 20);
    // The same tokens from argmax over the full recompute at each step.
    std::vector<std::int32_t> sequence = prompt;
    for (int i = 0; i < 20; ++i) {
        const auto logits = model->forward(sequence, 1, static_cast<Index>(sequence.size()));
        Index next = 0;
        logits.row(logits.rows() - 1).maxCoeff(&next);
        CHECK(next == runs[0][static_cast<std::size_t>(i)]);
        sequence.push_back(static_cast<std::int32_t>(next));
    }
}

TEST_CASE("sampling follows softmax(logits / temperature), restricted by top-k and top-p") {
    const std::vector<double> logits = {2.0, 1.0, 0.5, 0.0, -1.0, -3.0};
    const auto probabilities = [&](double temperature) {
        std::vector<double> p(logits.size());
        double total = 0;
        for (std::size_t i = 0; i < p.size(); ++i) total += p[i] = std::exp(logits[i] / temperature);
        for (auto& x : p) x /= total;
        return p;
    };
    const int draws = 40000;
    for (const double temperature : {1.0, 0.5, 2.0}) {
        CAPTURE(temperature);
        TokenSampler sampler({temperature, 0, 1.0, 123});
        std::vector<int> counts(logits.size());
        for (int i = 0; i < draws; ++i) ++counts[static_cast<std::size_t>(sampler.sample(std::span<const double>(logits)))];
        const auto p = probabilities(temperature);
        for (std::size_t i = 0; i < p.size(); ++i) {
            // A frequency has standard deviation sqrt(p(1-p)/N) <= 0.0025; allow 5 of them.
            CHECK(std::abs(counts[i] / double(draws) - p[i]) <= 5 * std::sqrt(p[i] * (1 - p[i]) / draws) + 1e-12);
        }
    }
    // top_k = 2: only the two largest logits, renormalised.
    TokenSampler top2({1.0, 2, 1.0, 7});
    std::map<int, int> seen;
    for (int i = 0; i < 20000; ++i) ++seen[top2.sample(std::span<const double>(logits))];
    CHECK(seen.size() == 2);
    CHECK(std::abs(seen[0] / 20000.0 - 1 / (1 + std::exp(-1.0))) < 0.02);
    // top_p: p = 0.561, 0.206, 0.125, ... at temperature 1, so top_p = 0.5 keeps only token 0 and 0.8
    // keeps 0, 1, 2 (0.767 < 0.8 <= 0.892).
    TokenSampler nucleus_small({1.0, 0, 0.5, 7});
    for (int i = 0; i < 100; ++i) CHECK(nucleus_small.sample(std::span<const double>(logits)) == 0);
    TokenSampler nucleus({1.0, 0, 0.8, 7});
    std::map<int, int> kept;
    for (int i = 0; i < 5000; ++i) ++kept[nucleus.sample(std::span<const double>(logits))];
    CHECK(kept.size() == 3);
    // The same seed gives the same draws.
    TokenSampler a({1.0, 0, 1.0, 99}), b({1.0, 0, 1.0, 99});
    for (int i = 0; i < 100; ++i) CHECK(a.sample(std::span<const double>(logits)) == b.sample(std::span<const double>(logits)));
    CHECK_THROWS_AS(TokenSampler({-1.0, 0, 1.0, 0}), std::invalid_argument);
    CHECK_THROWS_AS(TokenSampler({1.0, 0, 0.0, 0}), std::invalid_argument);
}

TEST_CASE("packed bf16 and int8 weights decode like the double model holding the same weights, cached = recompute") {
    using C = SmallWindow;
    using D = Dims<C>;
    const auto model = to_float(*random_model<C>());
    std::mt19937 rng(11);
    std::vector<std::int32_t> tokens(40);
    for (auto& t : tokens) t = static_cast<std::int32_t>(rng() % C::vocab_size);
    const double fp32_bound = (10.0 * D::layers + 2) * (2 * D::ffn) * 0x1p-24;
    // bf16 prefill (pieces of several tokens) rounds the inputs of its GEMMs to bf16: 4 per block
    // (attn_in, attn, mlp_in, act) and the head's, each a relative error of at most u_b = 2^-8,
    // independent from one to the next and carried with gain of order one: a random walk of
    // m = 4 L + 1 steps, u_b sqrt(m / 3); we allow 4 u_b sqrt(m) (as the CUDA model test does).
    const double bf16_prefill_bound = 4 * 0x1p-8 * std::sqrt(4.0 * D::layers + 1) + fp32_bound;
    for (const auto format : {WeightFormat::bf16, WeightFormat::int8}) {
        const PackedWeights<C> packed(std::as_const(model->parameters).weights(), format);
        const auto reference = with_packed_weights(*model, packed);
        const RowMatrix<double> full = reference->forward(tokens, 1, 40);
        for (const bool scalar : {false, true}) {  // the AVX-512 kernels (where the CPU has them) and the portable ones
            const ScalarKernels choice(scalar);
            // A prompt of 7, single tokens, pieces of 5, 9 and 13 in chunks of 128 or 3; and every
            // token on its own (decoding only: all products are the fp32 matrix-vector kernels).
            const std::vector<std::vector<Index>> schedules = {{7, 1, 1, 5, 1, 9, 1, 1, 1, 13}, std::vector<Index>(40, 1)};
            for (const auto& pieces : schedules) {
                const bool prefill = pieces[0] > 1;
                const double bound = format == WeightFormat::bf16 && prefill ? bf16_prefill_bound : fp32_bound;
                for (const Index chunk : {Index{128}, Index{3}}) {
                    CAPTURE(std::string(weight_format_name(format)));
                    CAPTURE(scalar);
                    CAPTURE(prefill);
                    CAPTURE(chunk);
                    Generator<C, float> generator(packed, C::context_length, chunk);
                    Index done = 0;
                    double worst = 0;
                    for (const Index piece : pieces) {
                        const auto cached = generator.append(
                            std::span(tokens).subspan(static_cast<std::size_t>(done), static_cast<std::size_t>(piece)), true);
                        const RowMatrix<double> got = cached.cast<double>();
                        const double err = relative_difference(const_view(got.data(), piece, D::vocab),
                                                               const_view(full.data() + done * D::vocab, piece, D::vocab));
                        worst = std::max(worst, err);
                        CHECK(err <= bound);
                        done += piece;
                    }
                    const std::string what = std::string(weight_format_name(format)) + (scalar ? " scalar" : " avx512") +
                                             (prefill ? " prefill+decode" : " decode only");
                    MESSAGE(what << " chunk " << chunk << ": worst relative difference " << worst
                                                                    << " (bound " << bound << ")");
                }
            }
        }
        // The fp32 bound is tight enough to notice weights that were not packed (the unrounded model).
        const auto unpacked = std::make_unique<Model<C, Cpu<double>>>();
        for (std::size_t i = 0; i < static_cast<std::size_t>(ParameterLayout<C>::total); ++i)
            unpacked->parameters.data()[i] = static_cast<double>(model->parameters.data()[i]);
        CHECK(relative_difference(unpacked->forward(tokens, 1, 40), const_view(full.data(), 40, D::vocab)) > 3 * fp32_bound);
    }
}

// Packed weights against the unpacked model. Packing perturbs each weight matrix W by dW with
// |dW_ij| <= u_b |W_ij| (bf16, u_b = 2^-8) or <= scale / 2 = max|block| / 254 (int8). A product's
// output then moves by ||dW x|| ~ eps_W ||W x||, eps_W = ||dW||_F / ||W||_F bounded from those
// definitions (computed below from the unpacked weights, not from the packer); the norms keep the
// gain of order one, and independent perturbations of the 4 L + 2 matrices add like a random walk:
// sqrt(sum eps_W^2). We allow four times that (plus the fp32 bound above) as the normwise relative
// error of the logits. Greedy tokens must then agree wherever the reference's top-2 margin exceeds
// twice that error (the bound applied row by row: each position's logits are their own product).
TEST_CASE("packed decoding stays within its quantisation bound of the unpacked model; greedy tokens agree where the margin is clear") {
    using C = SmallWindow;
    using D = Dims<C>;
    const auto source = random_model<C>();
    const auto model = to_float(*source);
    const auto w = std::as_const(model->parameters).weights();
    std::vector<ConstMatrixView<float>> matrices = {const_view(w.embed, D::vocab, D::model), const_view(w.lm_head, D::vocab, D::model)};
    for (const auto& b : w.blocks) {
        matrices.push_back(const_view(b.q_proj, D::qkv, D::model));
        matrices.push_back(const_view(b.o_proj, D::model, D::q));
        matrices.push_back(const_view(b.gate_proj, 2 * D::ffn, D::model));
        matrices.push_back(const_view(b.down_proj, D::model, D::ffn));
    }
    const double fp32_bound = (10.0 * D::layers + 2) * (2 * D::ffn) * 0x1p-24;
    // Greedy continuation of a prompt by the unpacked model (double), and its logits at every position.
    std::vector<std::int32_t> sequence = {5, 17, 3};
    const Index length = C::context_length;
    while (static_cast<Index>(sequence.size()) < length) {
        const auto logits = source->forward(sequence, 1, static_cast<Index>(sequence.size()));
        Index next = 0;
        logits.row(logits.rows() - 1).maxCoeff(&next);
        sequence.push_back(static_cast<std::int32_t>(next));
    }
    const RowMatrix<double> reference = source->forward(sequence, 1, length);
    for (const auto format : {WeightFormat::bf16, WeightFormat::int8}) {
        CAPTURE(std::string(weight_format_name(format)));
        double eps_squared = 0;
        for (const auto& m : matrices) {
            double perturbation = 0;  // bound on ||dW||_F^2
            if (format == WeightFormat::bf16) {
                perturbation = 0x1p-16 * m.cast<double>().squaredNorm();
            } else {
                for (Index r = 0; r < m.rows(); ++r) {
                    for (Index c0 = 0; c0 < m.cols(); c0 += PackedMatrix::block) {
                        const Index n = std::min(PackedMatrix::block, m.cols() - c0);
                        const double half_step = m.row(r).segment(c0, n).cwiseAbs().maxCoeff() / 254.0;
                        perturbation += static_cast<double>(n) * half_step * half_step;
                    }
                }
            }
            eps_squared += perturbation / m.cast<double>().squaredNorm();
        }
        const double bound = 4 * std::sqrt(eps_squared) + fp32_bound;
        const PackedWeights<C> packed(w, format);
        Generator<C, float> generator(packed, C::context_length, 8);
        const auto got = generator.append(sequence, true);
        const RowMatrix<double> logits = got.cast<double>();
        const double err = relative_difference(const_view(logits.data(), length, D::vocab), const_view(reference.data(), length, D::vocab));
        CHECK(err <= bound);
        int checked = 0;
        for (Index i = 2; i + 1 < length; ++i) {  // position i predicts sequence[i + 1]
            auto row = reference.row(i);
            Eigen::Index top = 0;
            const double best = row.maxCoeff(&top);
            double second = -1e300;
            for (Index c = 0; c < D::vocab; ++c)
                if (c != top) second = std::max(second, row(c));
            if (best - second <= 2 * bound * row.cwiseAbs().maxCoeff()) continue;
            Eigen::Index chosen = 0;
            logits.row(i).maxCoeff(&chosen);
            CHECK(chosen == top);
            ++checked;
        }
        CHECK(checked >= 5);  // the check must not be vacuous
        MESSAGE(std::string(weight_format_name(format)) << ": logits within " << err << " of the unpacked model (bound " << bound
                                           << "); greedy tokens compared at " << checked << " of " << length - 3 << " positions");
    }
}

// The packed products alone, at a size with several row panels (int8 prefill widens 1024 rows at a
// time), rows not a multiple of the kernels' 4 and columns with a partial block (72 = 2 x 32 + 8).
// Each output against the double product of the stored weights, within the componentwise bound of
// an fp32 dot product, gamma_n sum |w x| with gamma_n ~ n u_f (n = 72 terms, plus one for an int8
// block's scale); bf16 prefill also rounds x to bf16: + u_b sum |w x|.
// Two shapes: a small matrix, and one whose bf16 and int8 weights (4.2 and 2.1 MB) take the huge-page
// storage (from 2 MB on Linux), whose partly used last 2 MB must read as any other memory.
TEST_CASE("packed linear_forward equals the double product of the stored weights, one row and several") {
    for (const auto& [rows, cols] : {std::pair<Index, Index>{2101, 72}, std::pair<Index, Index>{2101, 1000}}) {
        CAPTURE(cols);
        std::mt19937 rng(5);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        RowMatrix<float> w(rows, cols), x(3, cols);
        for (Index i = 0; i < w.size(); ++i) w.data()[i] = normal(rng);
        for (Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
        for (const auto format : {WeightFormat::bf16, WeightFormat::int8}) {
            const auto packed = PackedMatrix::pack(const_view(w.data(), rows, cols), format);
#ifdef __linux__
            if (packed.bytes() >= (std::size_t{2} << 20)) {  // the storage starts on a 2 MB boundary
                const auto* start = format == WeightFormat::bf16 ? static_cast<const void*>(packed.bf16.data()) : packed.q.data();
                CHECK(reinterpret_cast<std::uintptr_t>(start) % (std::uintptr_t{1} << 21) == 0);
            }
#endif
            RowMatrix<double> stored(rows, cols);
            for (Index r = 0; r < rows; ++r)
                for (Index c = 0; c < cols; ++c) stored(r, c) = packed.value(r, c);
            for (const bool scalar : {false, true}) {
                const ScalarKernels choice(scalar);
                for (const Index m : {Index{1}, Index{3}}) {
                    CAPTURE(std::string(weight_format_name(format)));
                    CAPTURE(scalar);
                    CAPTURE(m);
                    RowMatrix<float> y(m, rows);
                    linear_forward<float>(const_view(x.data(), m, cols), packed, matrix_view(y.data(), m, rows));
                    const RowMatrix<double> xd = x.topRows(m).cast<double>();
                    const RowMatrix<double> exact = xd * stored.transpose();
                    const RowMatrix<double> magnitude = xd.cwiseAbs() * stored.cwiseAbs().transpose();
                    const double rounding = (format == WeightFormat::bf16 && m > 1 ? 0x1p-8 : 0.0) + (cols + 1) * 0x1p-24;
                    int bad = 0;
                    for (Index i = 0; i < m; ++i)
                        for (Index r = 0; r < rows; ++r)
                            if (std::abs(static_cast<double>(y(i, r)) - exact(i, r)) > rounding * magnitude(i, r)) ++bad;
                    CHECK(bad == 0);
                }
            }
        }
    }
}
