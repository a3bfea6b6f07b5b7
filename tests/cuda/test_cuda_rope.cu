// RoPE kernels (include/gemma3/cuda/ops/rope.cuh) against the CPU RoPE in double
// (include/gemma3/ops/rope.hpp, with a double table), both given the same explicit positions: 0..seq-1
// per sequence as training passes them, and non-contiguous, repeated and out-of-order positions as a
// KV cache's ring can produce.
//
// Bound (u_b = 2^-8, u_f = 2^-24): the device table holds cos and sin rounded to fp32 (u_f each) and
// a rotated element is two products and a sum in fp32, so it is within 4 u_f (|x_d| + |x_d+half|)
// of the exact rotation before its own output rounding (u_b for bf16, u_f for fp32).
#include "kernel_test_support.hpp"

#include <gemma3/cuda/ops/rope.cuh>
#include <gemma3/ops/rope.hpp>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::bf16_unit;
using cu::test::fp32_unit;

// 0..seq-1 in each of `batch` sequences.
std::vector<std::int32_t> sequence_positions(int batch, int seq) {
    std::vector<std::int32_t> positions(static_cast<std::size_t>(batch * seq));
    for (int t = 0; t < batch * seq; ++t) positions[static_cast<std::size_t>(t)] = t % seq;
    return positions;
}

// Rows of the input at `positions` (one per token); the device table holds table_positions.
template <class In, class Out>
void check_rope(bool backward, const std::vector<std::int32_t>& positions, std::int64_t table_positions, int heads, int head_dim,
                double theta, std::int64_t in_ld, int in_offset, std::int64_t out_ld, bool in_place, std::uint32_t seed) {
    const int tokens = static_cast<int>(positions.size());
    const std::size_t in_size = static_cast<std::size_t>(tokens) * in_ld;
    std::vector<float> x = cu::test::random_floats(in_size, -2.0f, 2.0f, seed);
    if constexpr (!std::is_same_v<In, float>) x = cu::test::bf16_values(in_size, -2.0f, 2.0f, seed);
    const cu::DeviceRopeTable table(theta, head_dim, table_positions);
    const auto device_positions = cu::DeviceBuffer<std::int32_t>::from_host(std::span<const std::int32_t>(positions));
    cu::Stream stream;

    auto device_in = cu::test::guarded_from<In>(x);
    auto device_out = cu::test::guarded_nan<Out>(static_cast<std::size_t>(tokens) * out_ld);
    Out* out_data = device_out.data();
    std::int64_t ld_out = out_ld;
    int out_offset = 0;
    if constexpr (std::is_same_v<In, Out>) {
        if (in_place) {
            out_data = device_in.data();
            ld_out = in_ld;
            out_offset = in_offset;
        }
    }
    const In* source = device_in.data() + in_offset;
    if (backward) {
        cu::rope_backward<In, Out>(stream, source, in_ld, out_data + out_offset, ld_out, tokens, heads, device_positions.data(),
                                   table);
    } else {
        cu::rope_forward<In, Out>(stream, source, in_ld, out_data + out_offset, ld_out, tokens, heads, device_positions.data(),
                                  table);
    }

    // CPU reference on the gathered [tokens, heads * head_dim] block.
    const int width = heads * head_dim, half = head_dim / 2;
    std::vector<double> ref(static_cast<std::size_t>(tokens) * width);
    for (int t = 0; t < tokens; ++t)
        for (int c = 0; c < width; ++c) ref[static_cast<std::size_t>(t) * width + c] = x[static_cast<std::size_t>(t) * in_ld + in_offset + c];
    const std::vector<double> input = ref;
    const gemma3::RopeTable<double> host_table(theta, head_dim, table_positions);
    if (backward) {
        gemma3::rope_backward<double>(gemma3::matrix_view(ref.data(), tokens, width), head_dim, positions, host_table);
    } else {
        gemma3::rope_forward<double>(gemma3::matrix_view(ref.data(), tokens, width), head_dim, positions, host_table);
    }

    const std::vector<double> all = in_place && std::is_same_v<In, Out> ? cu::test::download_checked(device_in, "x (in place)")
                                                                         : cu::test::download_checked(device_out, "out");
    const double u_out = std::is_same_v<Out, float> ? fp32_unit : bf16_unit;
    std::vector<double> got, bound;
    for (int t = 0; t < tokens; ++t) {
        for (int c = 0; c < width; ++c) {
            const int d = c % head_dim, head = c / head_dim;
            const int partner = head * head_dim + (d < half ? d + half : d - half);
            const std::size_t k = static_cast<std::size_t>(t) * width;
            got.push_back(all[static_cast<std::size_t>(t) * ld_out + out_offset + c]);
            bound.push_back(4 * fp32_unit * (std::fabs(input[k + c]) + std::fabs(input[k + partner])) +
                            u_out * std::fabs(ref[k + c]) * 1.0001);
        }
    }
    cu::test::check_within(backward ? "rope_backward" : "rope_forward", got, ref, bound);
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("rope_forward: bf16 q in place, 3 heads, positions restart in every sequence") {
    check_rope<__nv_bfloat16, __nv_bfloat16>(false, sequence_positions(2, 13), 16, 3, 20, 10000.0, 60, 0, 60, true, 1u);
}

GEMMA3_CUDA_TEST_CASE("rope_forward: out of place from inside a wider matrix (no q/k norm), base 1e6") {
    check_rope<__nv_bfloat16, __nv_bfloat16>(false, sequence_positions(3, 11), 14, 2, 16, 1e6, 100, 10, 32, false, 2u);
}

GEMMA3_CUDA_TEST_CASE("rope_backward: fp32 gradients in place rotate by the negative angle") {
    check_rope<float, float>(true, sequence_positions(2, 17), 20, 4, 24, 10000.0, 96, 0, 96, true, 3u);
}

// A decode step's positions: far from zero, out of order, repeated, with gaps (a ring buffer's).
const std::vector<std::int32_t> scattered_positions = {4095, 17, 0, 3000, 17, 1, 2048, 4094, 513, 7, 7, 999};

GEMMA3_CUDA_TEST_CASE("rope_forward: bf16 at explicit non-contiguous positions up to 4095") {
    check_rope<__nv_bfloat16, __nv_bfloat16>(false, scattered_positions, 4096, 2, 16, 10000.0, 32, 0, 32, true, 4u);
}

GEMMA3_CUDA_TEST_CASE("rope_backward: fp32 at explicit non-contiguous positions, base 1e6, out of place") {
    check_rope<float, float>(true, scattered_positions, 4096, 3, 8, 1e6, 40, 4, 24, false, 5u);
}

GEMMA3_CUDA_TEST_CASE("rope marks rows at positions outside its table with NaN, and needs positions") {
    const cu::DeviceRopeTable table(10000.0, 8, 4);
    const std::vector<std::int32_t> positions = {0, 4, -1, 3};
    const auto device_positions = cu::DeviceBuffer<std::int32_t>::from_host(std::span<const std::int32_t>(positions));
    std::vector<float> ones(4 * 8, 1.0f);
    auto x = cu::DeviceBuffer<float>::from_host(std::span<const float>(ones));
    cu::Stream stream;
    cu::rope_forward<float, float>(stream, x.data(), 8, x.data(), 8, 4, 1, device_positions.data(), table);
    std::vector<float> out(ones.size());
    cu::copy_to_host(out.data(), x.data(), out.size());
    for (int t = 0; t < 4; ++t) {
        for (int c = 0; c < 8; ++c) {
            const float value = out[static_cast<std::size_t>(t * 8 + c)];
            INFO("token " << t << ", column " << c << ": " << value);
            CHECK(std::isnan(value) == (t == 1 || t == 2));
        }
    }
    const std::string message = cu::test::thrown_message<std::invalid_argument>(
        [&] { cu::rope_forward<float, float>(stream, x.data(), 8, x.data(), 8, 4, 1, nullptr, table); });
    CHECK(cu::test::contains(message, "no positions given"));
}
