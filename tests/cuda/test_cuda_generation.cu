// cuda::Generator (include/gemma3/cuda/generation.cuh): cached decoding on the device against the
// CPU's cached decoding (core/generation.hpp, Generator<C, double>) with the same bf16-rounded
// weights. Windows of 4 and 5 and 13 + 10 x window positions (a 13-token prompt prefilled in chunks
// of 6, then 10 x window single-token steps): the sliding layers' rings wrap a dozen times, a
// prefill chunk is longer than the ring, and the full layer's cache grows to every position.
//
// Bound (u_b = 2^-8), as for Model<C, Cuda>'s logits (test_cuda_model.cu): the device stores at most
// 11 intermediate tensors per block in bf16 (attn_in, qkv, normed and rotated q/k, attn, attn_proj,
// mlp_in, gate_up, act, mlp_out; the cache holds the rotated k and v exactly as stored, and the
// cached-attention kernel keeps scores and probabilities in fp32, one store fewer than the model's),
// plus the final norm's output: m = 11 L + 2 roundings of relative size <= u_b on a logit's
// dependency path, the residual stream and every accumulation fp32, the norms renormalising, so the
// normwise relative error of a logits row is about u_b sqrt(m / 3); we allow 4 u_b sqrt(m). The
// greedy token must then agree wherever the CPU's top-2 margin exceeds twice the absolute bound
// (4 u_b sqrt(m) ||row||_2 bounds every element's error): two logits that far apart cannot swap.
// Both generators are fed the same random tokens (not their own choices, which could differ where the
// margin is small, and which a dominant logit would turn into one token repeated): the greedy token
// of each step is the argmax of its logits row.
#include "kernel_test_support.hpp"

#include <gemma3/core/generation.hpp>
#include <gemma3/cuda/generation.cuh>

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::bf16_unit;

// Window 4 on layers 0 and 2, layer 1 full; grouped-query (2 kv heads for 4), q/k norms.
struct DecodeWindow4 {
    static constexpr std::string_view name = "DecodeWindow4";
    static constexpr int vocab_size = 41, context_length = 64, emb_dim = 32, n_heads = 4, n_kv_groups = 2, head_dim = 8,
                         hidden_dim = 48, n_layers = 3, sliding_window = 4;
    static constexpr bool qk_norm = true, tie_word_embeddings = false;
    static constexpr double query_pre_attn_scalar = 8, rope_local_base = 10000, rope_base = 1000000, rms_norm_eps = 1e-6;
    using layer_types = gemma3::LayerPattern<gemma3::SlidingAttention, gemma3::FullAttention, gemma3::SlidingAttention>;
};

// The same without q/k norms, with a tied head and multi-query attention (window 5).
struct DecodeWindow5Tied {
    static constexpr std::string_view name = "DecodeWindow5Tied";
    static constexpr int vocab_size = 31, context_length = 64, emb_dim = 24, n_heads = 2, n_kv_groups = 1, head_dim = 12,
                         hidden_dim = 40, n_layers = 2, sliding_window = 5;
    static constexpr bool qk_norm = false, tie_word_embeddings = true;
    static constexpr double query_pre_attn_scalar = 12, rope_local_base = 10000, rope_base = 1000000, rms_norm_eps = 1e-6;
    using layer_types = gemma3::LayerPattern<gemma3::SlidingAttention, gemma3::FullAttention>;
};

std::vector<double> row_of(const gemma3::ConstMatrixView<double>& m, gemma3::Index r) {
    std::vector<double> out(static_cast<std::size_t>(m.cols()));
    for (gemma3::Index c = 0; c < m.cols(); ++c) out[static_cast<std::size_t>(c)] = m(r, c);
    return out;
}
std::vector<double> row_of(const gemma3::ConstMatrixView<float>& m, gemma3::Index r) {
    std::vector<double> out(static_cast<std::size_t>(m.cols()));
    for (gemma3::Index c = 0; c < m.cols(); ++c) out[static_cast<std::size_t>(c)] = m(r, c);
    return out;
}

struct Comparison {
    int rows = 0, decided = 0, worst_row = -1;
    double worst_ratio = 0;
};

// Compares one row of logits, and the greedy tokens where the CPU's margin decides them.
void compare_row(const std::vector<double>& got, const std::vector<double>& expected, double tolerance, int row,
                         Comparison& summary) {
    const double error = cu::test::relative_error(got, expected);
    INFO("row " << row << ": relative error " << error << ", tolerance " << tolerance);
    CHECK(error <= tolerance);
    if (!(error / tolerance <= summary.worst_ratio)) {
        summary.worst_ratio = error / tolerance;
        summary.worst_row = row;
    }
    ++summary.rows;
    double norm = 0;
    for (const double e : expected) norm += e * e;
    const auto best = static_cast<std::size_t>(std::max_element(expected.begin(), expected.end()) - expected.begin());
    double second = -INFINITY;
    for (std::size_t c = 0; c < expected.size(); ++c)
        if (c != best) second = std::max(second, expected[c]);
    if (expected[best] - second > 2 * tolerance * std::sqrt(norm)) {
        ++summary.decided;
        const auto gpu_best = static_cast<std::size_t>(std::max_element(got.begin(), got.end()) - got.begin());
        CHECK(gpu_best == best);
    }
}

template <class C>
void check_cached_decoding(std::uint64_t seed) {
    using D = gemma3::Dims<C>;
    gemma3::Parameters<C, float> weights;
    gemma3::init_parameters(weights, gemma3::InitScheme::hf, 0.2, seed);
    std::mt19937 draw(static_cast<std::uint32_t>(seed));
    std::uniform_real_distribution<float> norm_weight(-0.3f, 0.3f);
    for (const auto& t : gemma3::parameter_tensors<C>())
        if (t.role == gemma3::TensorRole::norm)
            for (std::size_t i = 0; i < t.numel(); ++i) weights.data()[t.offset + i] = norm_weight(draw);
    {
        // Random weights give flat logits whose top-2 margins all lie below the bound, and the greedy
        // check would see nothing. So an untied head starts as a copy of the embedding (still read as
        // its own matrix), and the embedding is tripled so that a token's own row leads its residual
        // stream: the logits then have a clear maximum (at the input token) in most rows.
        const auto w = weights.weights();
        const std::size_t n = static_cast<std::size_t>(D::vocab) * D::model;
        if constexpr (!C::tie_word_embeddings) std::copy_n(w.embed, n, w.lm_head);
        for (std::size_t i = 0; i < n; ++i) w.embed[i] *= 3;
    }
    for (std::size_t i = 0; i < weights.size(); ++i) weights.data()[i] = gemma3::round_to_bf16_value(weights.data()[i]);

    gemma3::Model<C, gemma3::Cuda> gpu_model;
    for (std::size_t i = 0; i < weights.size(); ++i) gpu_model.parameters.data()[i] = weights.data()[i];
    gpu_model.upload();
    auto cpu_model = std::make_unique<gemma3::Model<C, gemma3::Cpu<double>>>();
    for (std::size_t i = 0; i < weights.size(); ++i) cpu_model->parameters.data()[i] = weights.data()[i];

    constexpr int prompt_length = 13, steps = 10 * static_cast<int>(D::window), chunk = 6;
    static_assert(chunk > D::window && prompt_length + steps <= D::context);
    std::vector<std::int32_t> sequence(prompt_length + steps);
    for (auto& t : sequence) t = static_cast<std::int32_t>(draw() % static_cast<unsigned>(D::vocab));
    const std::vector<std::int32_t> prompt(sequence.begin(), sequence.begin() + prompt_length);
    gemma3::Generator<C, double> cpu(*cpu_model, prompt_length + steps, chunk);
    cu::Generator<C> gpu(gpu_model, prompt_length + steps, chunk);
    const double tolerance = 4 * bf16_unit * std::sqrt(11.0 * D::layers + 2);
    Comparison summary;

    // Prefill with every prompt token's logits (three chunks: 6, 6, 1).
    const auto cpu_prompt = cpu.append(prompt, true);
    const auto gpu_prompt = gpu.append(prompt, true);
    REQUIRE(gpu_prompt.rows() == prompt_length);
    REQUIRE(gpu_prompt.cols() == D::vocab);
    const std::vector<double> first_logits = row_of(gpu_prompt, prompt_length - 1);
    for (int r = 0; r < prompt_length; ++r) compare_row(row_of(gpu_prompt, r), row_of(cpu_prompt, r), tolerance, r, summary);

    // Single-token decoding.
    for (int step = 0; step < steps; ++step) {
        const std::vector<std::int32_t> token{sequence[static_cast<std::size_t>(prompt_length + step)]};
        const auto expected = row_of(cpu.append(token), 0);
        const auto got = gpu.append(token);
        REQUIRE(got.rows() == 1);
        compare_row(row_of(got, 0), expected, tolerance, prompt_length + step, summary);
    }
    CHECK(gpu.length() == prompt_length + steps);
    MESSAGE(std::string(C::name) << ": " << summary.rows << " rows of logits, largest error/tolerance " << summary.worst_ratio
                                 << " (row " << summary.worst_row << "); greedy token checked in " << summary.decided
                                 << " rows whose top-2 margin exceeds the bound");
    CHECK(summary.decided >= summary.rows / 2);  // the check has teeth

    // The cache's bytes follow the CPU cache's formula, in bf16 (half of fp32's).
    CHECK(gpu.cache().used_bytes() == gemma3::KvCache<C, float>::bytes_for(prompt_length + steps) / 2);

    // A full cache refuses more tokens; reset() starts over and reproduces the same bits.
    const std::vector<std::int32_t> one{1};
    CHECK(cu::test::contains(cu::test::thrown_message<std::length_error>([&] { gpu.append(one); }),
                             std::to_string(prompt_length + steps + 1) + " positions exceed the cache's limit of " +
                                 std::to_string(prompt_length + steps)));
    CHECK(cu::test::contains(cu::test::thrown_message<std::invalid_argument>([&] { gpu.append({}); }), "no tokens"));
    gpu.reset();
    CHECK(gpu.length() == 0);
    CHECK(row_of(gpu.append(prompt), 0) == first_logits);
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("cuda::Generator: cached decoding with window 4 matches the CPU's over 40 steps (grouped-query, q/k norms)") {
    check_cached_decoding<DecodeWindow4>(21);
}

GEMMA3_CUDA_TEST_CASE("cuda::Generator: cached decoding with window 5 matches the CPU's over 50 steps (tied head, MQA, no q/k norms)") {
    check_cached_decoding<DecodeWindow5Tied>(22);
}

GEMMA3_CUDA_TEST_CASE("cuda::Generator with gemma3::generate(): greedy tokens stream, stop at the cache's end") {
    using C = DecodeWindow4;
    gemma3::Model<C, gemma3::Cuda> model;
    model.init(gemma3::InitScheme::hf, 0.2, 5);
    cu::Generator<C> generator(model, 12);
    gemma3::TokenSampler greedy({0.0, 0, 1.0, 0});
    std::vector<std::int32_t> streamed;
    const std::vector<std::int32_t> prompt{3, 1, 4, 1, 5};
    const auto tokens = gemma3::generate(generator, prompt, 100, greedy, -1, [&](std::int32_t t) { streamed.push_back(t); });
    CHECK(tokens.size() == 8);  // 5 + 8 = 13 > 12: the last token is sampled from position 11's logits, never appended
    CHECK(streamed == tokens);
    CHECK(generator.length() == 12);
}
