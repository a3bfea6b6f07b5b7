// Rotary position embedding on the device, split-half convention, and its backward (the rotation
// by -angle). The twin of include/gemma3/ops/rope.hpp (docs/model.md §5, §9.8).
//
// The cos/sin tables are the CPU's RopeTable values (angles evaluated in double, rounded once to
// fp32), uploaded once per base: DeviceRopeTable. Row i of the [tokens, heads * head_dim] input is
// at position positions[i] (a device array of int32, one per token, as the CPU's rope_forward takes
// it): training passes 0..seq-1 per sequence, generation the cache positions p0, p0+1, ... A
// position outside the table makes that row's outputs NaN (the host cannot check a device array
// without a copy; NaN makes the mistake visible). One thread rotates one pair (d, d + head_dim/2) of one
// head; consecutive threads take consecutive d, so both halves are read coalesced. In and out may
// be the same buffer (each thread reads its pair before writing it), and their types may differ:
// the forward rotates bf16 q/k in place, the backward rotates fp32 gradients.
#pragma once

#include "common.cuh"

#include <gemma3/ops/rope.hpp>

GEMMA3_CUDA_NAMESPACE_BEGIN

namespace kernels {

template <class In, class Out>
__global__ void __launch_bounds__(256)
    rope_kernel(const In* in, std::int64_t in_ld, Out* out, std::int64_t out_ld, std::int64_t tokens, int heads, int head_dim,
                const std::int32_t* __restrict__ positions, std::int64_t table_positions,
                const float* __restrict__ cos_table, const float* __restrict__ sin_table, float sign) {
    const int half = head_dim / 2;
    const std::int64_t pairs = tokens * heads * half;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        const int d = static_cast<int>(i % half);
        const std::int64_t row = i / half;  // token * heads + head
        const std::int64_t token = row / heads;
        const int head = static_cast<int>(row % heads);
        const std::int64_t position = positions[token];
        const In* source = in + token * in_ld + static_cast<std::int64_t>(head) * head_dim;
        const float lo = to_float(source[d]), hi = to_float(source[d + half]);
        Out* destination = out + token * out_ld + static_cast<std::int64_t>(head) * head_dim;
        if (position < 0 || position >= table_positions) {
            destination[d] = destination[d + half] = from_float<Out>(__int_as_float(0x7FC0'0000));  // NaN
            continue;
        }
        const float c = cos_table[position * half + d], s = sign * sin_table[position * half + d];
        destination[d] = from_float<Out>(lo * c - hi * s);
        destination[d + half] = from_float<Out>(hi * c + lo * s);
    }
}

}  // namespace kernels

// cos and sin [positions, head_dim / 2] of one base on the device.
class DeviceRopeTable {
public:
    DeviceRopeTable() = default;
    DeviceRopeTable(double theta, int head_dim, std::int64_t positions) {
        const RopeTable<float> host(theta, head_dim, positions);
        cos_ = DeviceBuffer<float>::from_host(std::span<const float>(host.cos.data(), host.cos.size()));
        sin_ = DeviceBuffer<float>::from_host(std::span<const float>(host.sin.data(), host.sin.size()));
        head_dim_ = head_dim;
        positions_ = positions;
    }
    const float* cos() const noexcept { return cos_.data(); }
    const float* sin() const noexcept { return sin_.data(); }
    int head_dim() const noexcept { return head_dim_; }
    std::int64_t positions() const noexcept { return positions_; }

private:
    DeviceBuffer<float> cos_, sin_;
    int head_dim_ = 0;
    std::int64_t positions_ = 0;
};

namespace ops_detail {
template <class In, class Out>
void rope_rotate(const Stream& stream, const In* in, std::int64_t in_ld, Out* out, std::int64_t out_ld, std::int64_t tokens,
                 int heads, const std::int32_t* positions, const DeviceRopeTable& table, float sign) {
    require(table.head_dim() > 0 && table.head_dim() % 2 == 0, "rope", "the table's head_dim must be positive and even");
    require(tokens == 0 || positions != nullptr, "rope", "no positions given");
    require(heads > 0 && in_ld >= static_cast<std::int64_t>(heads) * table.head_dim() &&
                out_ld >= static_cast<std::int64_t>(heads) * table.head_dim(),
            "rope", "a leading dimension is smaller than heads * head_dim");
    const std::int64_t pairs = tokens * heads * (table.head_dim() / 2);
    if (pairs == 0) return;
    launch(kernels::rope_kernel<In, Out>, blocks_for(pairs, 256, 4096), 256, 0, stream, in, in_ld, out, out_ld, tokens, heads,
           table.head_dim(), positions, table.positions(), table.cos(), table.sin(), sign);
}
}  // namespace ops_detail

// out = RoPE(in) for `tokens` rows of `heads` heads, row i at position positions[i] (device memory,
// each in [0, table.positions())). in == out is allowed.
template <class In, class Out>
void rope_forward(const Stream& stream, const In* in, std::int64_t in_ld, Out* out, std::int64_t out_ld, std::int64_t tokens,
                  int heads, const std::int32_t* positions, const DeviceRopeTable& table) {
    ops_detail::rope_rotate(stream, in, in_ld, out, out_ld, tokens, heads, positions, table, 1.0f);
}

// The gradient with respect to rope_forward's input: the rotation by -angle.
template <class In, class Out>
void rope_backward(const Stream& stream, const In* d_out, std::int64_t in_ld, Out* d_in, std::int64_t out_ld,
                   std::int64_t tokens, int heads, const std::int32_t* positions, const DeviceRopeTable& table) {
    ops_detail::rope_rotate(stream, d_out, in_ld, d_in, out_ld, tokens, heads, positions, table, -1.0f);
}

GEMMA3_CUDA_NAMESPACE_END
