// Embedding kernels (include/gemma3/cuda/ops/embedding.cuh) against the CPU embedding in double
// (include/gemma3/ops/embedding.hpp).
//
// Bounds (u_f = 2^-24): the forward is one fp32 product of a bf16 value and the fp32 scale, within
// u_f |out|. The backward adds k = (occurrences of the token) scaled rows to the existing gradient in
// fp32, within (k + 2) u_f (|initial| + sum |scale g|), in either order of the additions.
#include "kernel_test_support.hpp"

#include <gemma3/cuda/ops/embedding.cuh>
#include <gemma3/ops/embedding.hpp>

#include <cmath>
#include <map>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::fp32_unit;

// Token ids with many repeats (and some ids never used), as in real batches.
std::vector<int> sample_tokens(int count, int vocab, std::uint32_t seed) {
    std::mt19937 generator(seed);
    std::vector<int> tokens(static_cast<std::size_t>(count));
    for (int& t : tokens) t = static_cast<int>(generator() % static_cast<unsigned>(vocab / 3)) * 3 % vocab;
    tokens[0] = vocab - 1;  // the last row is reachable
    return tokens;
}

void check_forward(int count, int vocab, int dim, std::uint32_t seed) {
    const std::vector<float> table = cu::test::bf16_values(static_cast<std::size_t>(vocab) * dim, -1.0f, 1.0f, seed);
    const std::vector<int> tokens = sample_tokens(count, vocab, seed + 1);
    const float scale = static_cast<float>(std::sqrt(static_cast<double>(dim)));
    auto device_table = cu::test::guarded_from<__nv_bfloat16>(table);
    const auto device_tokens = cu::DeviceBuffer<int>::from_host(tokens);
    auto out = cu::test::guarded_nan<float>(static_cast<std::size_t>(count) * dim);
    cu::Stream stream;
    cu::embedding_forward(stream, device_table.data(), device_tokens.data(), scale, out.data(), count, dim);

    std::vector<double> table_d = cu::test::to_double(table), expected(out.size());
    gemma3::embedding_forward<double>(gemma3::const_view(table_d.data(), vocab, dim), tokens, scale,
                                      gemma3::matrix_view(expected.data(), count, dim));
    std::vector<double> bound(expected.size());
    for (std::size_t i = 0; i < bound.size(); ++i) bound[i] = fp32_unit * std::fabs(expected[i]);
    cu::test::check_within("embedding_forward", cu::test::download_checked(out, "out"), expected, bound);
}

void check_backward(bool deterministic, int count, int vocab, int dim, std::uint32_t seed) {
    const std::vector<int> tokens = sample_tokens(count, vocab, seed);
    const std::vector<float> d_out = cu::test::random_floats(static_cast<std::size_t>(count) * dim, -1.0f, 1.0f, seed + 1);
    const std::vector<float> initial = cu::test::random_floats(static_cast<std::size_t>(vocab) * dim, -0.5f, 0.5f, seed + 2);
    const float scale = 25.298221f;
    const auto device_tokens = cu::DeviceBuffer<int>::from_host(tokens);
    auto device_d_out = cu::test::guarded_from<float>(d_out);
    auto d_table = cu::test::guarded_from<float>(initial);
    cu::Stream stream;
    if (deterministic) {
        const auto segments = cu::EmbeddingSegments::of(tokens);
        const auto segment_tokens = cu::DeviceBuffer<int>::from_host(segments.segment_tokens);
        const auto offsets = cu::DeviceBuffer<int>::from_host(segments.offsets);
        const auto order = cu::DeviceBuffer<int>::from_host(segments.order);
        cu::embedding_backward_sorted(stream, segment_tokens.data(), offsets.data(), order.data(),
                                      static_cast<int>(segments.segment_tokens.size()), scale, device_d_out.data(), d_table.data(), dim);
    } else {
        cu::embedding_backward_atomic(stream, device_tokens.data(), scale, device_d_out.data(), d_table.data(), count, dim);
    }

    std::vector<double> expected = cu::test::to_double(initial), d_out_d = cu::test::to_double(d_out);
    gemma3::embedding_backward<double>(tokens, scale, gemma3::const_view(d_out_d.data(), count, dim),
                                       gemma3::matrix_view(expected.data(), vocab, dim));
    std::map<int, int> occurrences;
    for (int t : tokens) ++occurrences[t];
    std::vector<double> bound(expected.size());
    for (int v = 0; v < vocab; ++v) {
        for (int c = 0; c < dim; ++c) {
            double magnitude = std::fabs(initial[static_cast<std::size_t>(v) * dim + c]);
            for (int n = 0; n < count; ++n)
                if (tokens[static_cast<std::size_t>(n)] == v) magnitude += std::fabs(scale * d_out[static_cast<std::size_t>(n) * dim + c]);
            const int k = occurrences.count(v) ? occurrences[v] : 0;
            bound[static_cast<std::size_t>(v) * dim + c] = (k + 2) * fp32_unit * magnitude;
        }
    }
    cu::test::check_within(deterministic ? "embedding_backward (sorted)" : "embedding_backward (atomic)",
                           cu::test::download_checked(d_table, "d_table"), expected, bound);
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("embedding_forward: gather times sqrt(D), 16-byte runs and an odd width") {
    check_forward(45, 97, 64, 1u);
    check_forward(45, 97, 37, 2u);
}

GEMMA3_CUDA_TEST_CASE("embedding_backward: atomic scatter-add with repeated tokens") {
    check_backward(false, 120, 61, 40, 3u);
    check_backward(false, 33, 61, 37, 4u);
}

GEMMA3_CUDA_TEST_CASE("embedding_backward: deterministic segmented sum with repeated tokens") {
    check_backward(true, 120, 61, 40, 5u);
    check_backward(true, 33, 61, 37, 6u);
}

GEMMA3_CUDA_TEST_CASE("embedding_backward: the deterministic mode gives the same bits on every run") {
    const int count = 200, vocab = 7, dim = 24;  // few distinct tokens, each repeated many times
    const std::vector<int> tokens = sample_tokens(count, vocab, 7u);
    const std::vector<float> d_out = cu::test::random_floats(static_cast<std::size_t>(count) * dim, -1.0f, 1.0f, 8u);
    const auto device_d_out = cu::DeviceBuffer<float>::from_host(d_out);
    const auto segments = cu::EmbeddingSegments::of(tokens);
    const auto segment_tokens = cu::DeviceBuffer<int>::from_host(segments.segment_tokens);
    const auto offsets = cu::DeviceBuffer<int>::from_host(segments.offsets);
    const auto order = cu::DeviceBuffer<int>::from_host(segments.order);
    cu::Stream stream;
    std::vector<std::vector<float>> results;
    for (int run = 0; run < 3; ++run) {
        cu::DeviceBuffer<float> d_table(static_cast<std::size_t>(vocab) * dim);
        d_table.fill_bytes(0);
        cu::embedding_backward_sorted(stream, segment_tokens.data(), offsets.data(), order.data(),
                                      static_cast<int>(segments.segment_tokens.size()), 2.0f, device_d_out.data(), d_table.data(), dim);
        results.push_back(d_table.download());
    }
    CHECK(results[0] == results[1]);
    CHECK(results[0] == results[2]);
}

GEMMA3_CUDA_TEST_CASE("EmbeddingSegments groups positions by token in increasing order") {
    const std::vector<std::int32_t> tokens{5, 2, 5, 9, 2, 5};
    const auto s = cu::EmbeddingSegments::of(tokens);
    CHECK(s.segment_tokens == std::vector<int>{2, 5, 9});
    CHECK(s.offsets == std::vector<int>{0, 2, 5, 6});
    CHECK(s.order == std::vector<int>{1, 4, 0, 2, 5, 3});
}
