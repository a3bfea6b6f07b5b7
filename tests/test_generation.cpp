// Generation: cached decoding equals a full recompute, the cache's memory follows its formula, and
// sampling is deterministic and draws from the right distribution.
//
// Cached and full forward passes compute the same sums in different orders (the cache path splits
// each softmax over two key sets), so in double they agree to a few ulps times the chain of
// reductions: 1e-12 relative.
#include <doctest/doctest.h>

#include <gemma3/generation.hpp>

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
