// GeGLU on the device: z = gelu_tanh(gate) * up, and its backward. The twin of
// include/gemma3/ops/geglu.hpp (docs/model.md §3.5, §9.5).
//
// gate and up are the two halves of one [tokens, 2F] product (the fused gate/up projection), so one
// thread reads a run of gate, the matching run of up (16-byte loads where aligned), and writes a run
// of z. Arithmetic is fp32 with the accurate tanhf; the kernels are bound by memory, not by tanh.
#pragma once

#include "common.cuh"

GEMMA3_CUDA_NAMESPACE_BEGIN

namespace kernels {

inline constexpr float gelu_c = 0.7978845608028654f;  // sqrt(2 / pi)
inline constexpr float gelu_a = 0.044715f;

// tanh(sqrt(2/pi) (x + 0.044715 x^3)): the one transcendental of tanh-GELU, 0.5 x (1 + t), and of
// its derivative, 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
__device__ __forceinline__ float gelu_tanh_t(float x) { return tanhf(gelu_c * (x + gelu_a * x * x * x)); }

// z [tokens, F] = gelu_tanh(gate_up[:, :F]) * gate_up[:, F:], gate_up [tokens, gate_up_ld].
template <int kVec>
__global__ void __launch_bounds__(256)
    geglu_forward_kernel(const bf16* __restrict__ gate_up, std::int64_t gate_up_ld, bf16* __restrict__ z, std::int64_t z_ld,
                         std::int64_t tokens, int hidden) {
    const int runs_per_row = hidden / kVec;
    const std::int64_t runs = tokens * runs_per_row;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < runs;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        const std::int64_t row = i / runs_per_row;
        const int c = static_cast<int>(i % runs_per_row) * kVec;
        float g[kVec], u[kVec], out[kVec];
        load(gate_up + row * gate_up_ld + c, g);
        load(gate_up + row * gate_up_ld + hidden + c, u);
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
            const float x = g[k];
            out[k] = 0.5f * x * (1.0f + gelu_tanh_t(x)) * u[k];
        }
        store(z + row * z_ld + c, out);
    }
}

// d_gate_up[:, :F] = dz * up * gelu'(gate), d_gate_up[:, F:] = dz * gelu(gate).
template <int kVec, class Dz>
__global__ void __launch_bounds__(256)
    geglu_backward_kernel(const bf16* __restrict__ gate_up, std::int64_t gate_up_ld, const Dz* __restrict__ dz,
                          std::int64_t dz_ld, bf16* __restrict__ d_gate_up, std::int64_t d_gate_up_ld, std::int64_t tokens,
                          int hidden) {
    const int runs_per_row = hidden / kVec;
    const std::int64_t runs = tokens * runs_per_row;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < runs;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        const std::int64_t row = i / runs_per_row;
        const int c = static_cast<int>(i % runs_per_row) * kVec;
        float g[kVec], u[kVec], d[kVec], d_gate[kVec], d_up[kVec];
        load(gate_up + row * gate_up_ld + c, g);
        load(gate_up + row * gate_up_ld + hidden + c, u);
        load(dz + row * dz_ld + c, d);
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
            const float x = g[k];
            const float t = gelu_tanh_t(x);
            d_up[k] = d[k] * 0.5f * x * (1.0f + t);
            d_gate[k] = d[k] * u[k] * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * gelu_c * (1.0f + 3.0f * gelu_a * x * x));
        }
        store(d_gate_up + row * d_gate_up_ld + c, d_gate);
        store(d_gate_up + row * d_gate_up_ld + hidden + c, d_up);
    }
}

}  // namespace kernels

// z [tokens, hidden] = gelu_tanh(gate) * up, gate and up side by side in gate_up [tokens, >= 2 hidden].
inline void geglu_forward(const Stream& stream, const bf16* gate_up, std::int64_t gate_up_ld, bf16* z, std::int64_t z_ld,
                          std::int64_t tokens, int hidden) {
    using namespace ops_detail;
    require(hidden > 0 && gate_up_ld >= 2 * static_cast<std::int64_t>(hidden) && z_ld >= hidden, "geglu_forward",
            "hidden " + std::to_string(hidden) + " does not fit the leading dimensions");
    if (tokens == 0) return;
    const int width = vector_width({operand(gate_up), operand(z)}, {hidden, gate_up_ld, z_ld});
    with_vector_width(width, [&](auto vec) {
        constexpr int kVec = decltype(vec)::value;
        launch(kernels::geglu_forward_kernel<kVec>, blocks_for(tokens * (hidden / kVec), 256, 8192), 256, 0, stream, gate_up,
               gate_up_ld, z, z_ld, tokens, hidden);
    });
}

// d_gate_up [tokens, 2 hidden] (overwritten) from dz [tokens, hidden] (fp32 or bf16).
template <class Dz>
void geglu_backward(const Stream& stream, const bf16* gate_up, std::int64_t gate_up_ld, const Dz* dz, std::int64_t dz_ld,
                    bf16* d_gate_up, std::int64_t d_gate_up_ld, std::int64_t tokens, int hidden) {
    using namespace ops_detail;
    require(hidden > 0 && gate_up_ld >= 2 * static_cast<std::int64_t>(hidden) &&
                d_gate_up_ld >= 2 * static_cast<std::int64_t>(hidden) && dz_ld >= hidden,
            "geglu_backward", "hidden " + std::to_string(hidden) + " does not fit the leading dimensions");
    if (tokens == 0) return;
    const int width = vector_width({operand(gate_up), operand(dz), operand(d_gate_up)}, {hidden, gate_up_ld, dz_ld, d_gate_up_ld});
    with_vector_width(width, [&](auto vec) {
        constexpr int kVec = decltype(vec)::value;
        launch(kernels::geglu_backward_kernel<kVec, Dz>, blocks_for(tokens * (hidden / kVec), 256, 8192), 256, 0, stream,
               gate_up, gate_up_ld, dz, dz_ld, d_gate_up, d_gate_up_ld, tokens, hidden);
    });
}

GEMMA3_CUDA_NAMESPACE_END
