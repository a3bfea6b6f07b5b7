// Gemma RMSNorm on the device: y = x * r * (1 + w), r = 1 / sqrt(mean(x^2) + eps), and its backward.
// The twin of include/gemma3/ops/rmsnorm.hpp (docs/model.md §3.2, §9.3).
//
// Rows: the four block norms and the final norm run over rows of emb_dim; the q/k norms over rows of
// head_dim, one per (token, head), read in place inside the [tokens, q + 2 kv] projection output.
// HeadRows describes both: row r is head r % heads of token r / heads, at
// data + (r / heads) * ld + (r % heads) * cols.
//
// Fusions (the residual adds of the block, docs/model.md §3.3): the forward can add an fp32 residual to its
// output (x_out = residual + norm(branch)); the backward can add an fp32 gradient to its dx
// (d x_in = d x_out + norm'(...)). Statistics are fp32; one warp owns a row, so the row's sum of
// squares is a warp reduction, with 16-byte loads where the pointers allow.
//
// The weight gradient is deterministic: each block sums its rows' dy * x * r per column in shared
// memory (one slice per warp, so no atomics), writes one partial row, and a second kernel adds the
// partials in block order to dw. A fixed grid (capped at 256 blocks) makes the order independent of
// the device.
#pragma once

#include "common.cuh"

GEMMA3_CUDA_NAMESPACE_BEGIN

template <class T>
struct HeadRows {
    T* data = nullptr;
    std::int64_t ld = 0;  // elements between consecutive tokens
    int heads = 1;        // rows per token
};

template <class T>
HeadRows<T> token_rows(T* data, std::int64_t ld) {
    return {data, ld, 1};
}
template <class T>
HeadRows<T> head_rows(T* data, std::int64_t ld, int heads) {
    return {data, ld, heads};
}

namespace kernels {

inline constexpr int norm_forward_threads = 256;
inline constexpr int norm_backward_threads = 128;
inline constexpr int norm_backward_max_blocks = 256;

template <int kVec, class In, class Out>
__global__ void __launch_bounds__(norm_forward_threads)
    rmsnorm_forward_kernel(const In* __restrict__ x, std::int64_t x_ld, Out* __restrict__ y, std::int64_t y_ld,
                           const float* __restrict__ residual, std::int64_t residual_ld, const bf16* __restrict__ weight,
                           float* __restrict__ rstd, int rows, int heads, int cols, float inv_cols, float eps) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int row = static_cast<int>(blockIdx.x) * (norm_forward_threads / 32) + static_cast<int>(threadIdx.x) / 32;
    if (row >= rows) return;  // whole warps leave together
    const std::int64_t token = row / heads, head = row % heads;
    const In* xr = x + token * x_ld + head * cols;
    float sum = 0.0f;
#pragma unroll 2  // more unrolling makes ptxas spill on sm_90 to stay at 32 registers
    for (int c = lane * kVec; c < cols; c += 32 * kVec) {
        float v[kVec];
        load(xr + c, v);
#pragma unroll
        for (int i = 0; i < kVec; ++i) sum += v[i] * v[i];
    }
    sum = warp_sum(sum);
    const float r = rsqrtf(sum * inv_cols + eps);
    if (lane == 0 && rstd != nullptr) rstd[row] = r;
    Out* yr = y + token * y_ld + head * cols;
    const float* rr = residual != nullptr ? residual + token * residual_ld + head * cols : nullptr;
#pragma unroll 2  // more unrolling makes ptxas spill on sm_90 to stay at 32 registers
    for (int c = lane * kVec; c < cols; c += 32 * kVec) {
        float v[kVec], w[kVec], out[kVec];
        load(xr + c, v);
        load(weight + c, w);
#pragma unroll
        for (int i = 0; i < kVec; ++i) out[i] = v[i] * r * (1.0f + w[i]);
        if (rr != nullptr) {
            float add[kVec];
            load(rr + c, add);
#pragma unroll
            for (int i = 0; i < kVec; ++i) out[i] += add[i];
        }
        store(yr + c, out);
    }
}

// dx = r g' - (r^3 / n) x sum_k(g'_k x_k), g' = dy (1 + w); dx (+)= dx_add; partial dw per block.
// Dynamic shared memory: (blockDim.x / 32) * cols floats.
template <int kVec, class In, class Dy, class Dx>
__global__ void __launch_bounds__(norm_backward_threads)
    rmsnorm_backward_kernel(const In* __restrict__ x, std::int64_t x_ld, const bf16* __restrict__ weight,
                            const float* __restrict__ rstd, const Dy* __restrict__ dy, std::int64_t dy_ld, Dx* dx,
                            std::int64_t dx_ld, const float* dx_add, std::int64_t dx_add_ld,
                            float* __restrict__ dw_partials, int rows, int heads, int cols, float inv_cols) {
    constexpr int warps = norm_backward_threads / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    float* column_sums = dynamic_shared<float>() + warp * cols;  // this warp's slice
    // Lanes own the same columns in every loop below, so no synchronisation is needed within a warp.
    for (int c = lane * kVec; c < cols; c += 32 * kVec) {
#pragma unroll
        for (int i = 0; i < kVec; ++i) column_sums[c + i] = 0.0f;
    }
    for (int row = static_cast<int>(blockIdx.x) * warps + warp; row < rows; row += static_cast<int>(gridDim.x) * warps) {
        const std::int64_t token = row / heads, head = row % heads;
        const In* xr = x + token * x_ld + head * cols;
        const Dy* gr = dy + token * dy_ld + head * cols;
        const float r = rstd[row];
        float dot = 0.0f;
        for (int c = lane * kVec; c < cols; c += 32 * kVec) {
            float v[kVec], g[kVec], w[kVec];
            load(xr + c, v);
            load(gr + c, g);
            load(weight + c, w);
#pragma unroll
            for (int i = 0; i < kVec; ++i) {
                dot += g[i] * (1.0f + w[i]) * v[i];
                column_sums[c + i] += g[i] * v[i] * r;
            }
        }
        dot = warp_sum(dot);
        const float correction = r * r * r * dot * inv_cols;
        Dx* dxr = dx + token * dx_ld + head * cols;
        const float* addr = dx_add != nullptr ? dx_add + token * dx_add_ld + head * cols : nullptr;
        for (int c = lane * kVec; c < cols; c += 32 * kVec) {
            float v[kVec], g[kVec], w[kVec], out[kVec];
            load(xr + c, v);
            load(gr + c, g);
            load(weight + c, w);
#pragma unroll
            for (int i = 0; i < kVec; ++i) out[i] = g[i] * (1.0f + w[i]) * r - v[i] * correction;
            if (addr != nullptr) {
                float add[kVec];
                load(addr + c, add);
#pragma unroll
                for (int i = 0; i < kVec; ++i) out[i] += add[i];
            }
            store(dxr + c, out);
        }
    }
    __syncthreads();
    const float* all_sums = dynamic_shared<float>();
    for (int c = static_cast<int>(threadIdx.x); c < cols; c += norm_backward_threads) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < warps; ++w) sum += all_sums[w * cols + c];
        dw_partials[static_cast<std::int64_t>(blockIdx.x) * cols + c] = sum;
    }
}

// out[c] += sum over b < blocks of partials[b * cols + c], in block order.
// A template only for its linkage: a kernel defined in a header must not be a plain function.
template <int = 0>
__global__ void __launch_bounds__(256) column_sum_kernel(const float* __restrict__ partials, int blocks, int cols,
                                                         float* __restrict__ out) {
    for (int c = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); c < cols;
         c += static_cast<int>(gridDim.x * blockDim.x)) {
        float sum = 0.0f;
        for (int b = 0; b < blocks; ++b) sum += partials[static_cast<std::int64_t>(b) * cols + c];
        out[c] += sum;
    }
}

}  // namespace kernels

namespace ops_detail {
inline int norm_backward_blocks(std::int64_t rows) {
    return static_cast<int>(blocks_for(rows, kernels::norm_backward_threads / 32, kernels::norm_backward_max_blocks));
}
}  // namespace ops_detail

// Floats of workspace rmsnorm_backward needs for `rows` rows of `cols` columns.
inline std::size_t rmsnorm_backward_workspace(std::int64_t rows, int cols) {
    return static_cast<std::size_t>(ops_detail::norm_backward_blocks(rows)) * static_cast<std::size_t>(cols);
}

// y = x * r * (1 + w) (+ residual) for tokens * heads rows of `cols` elements; rstd (nullable)
// receives r per row (row = token * heads + head). residual: nullptr, or an fp32 [tokens, ld]
// matrix laid out like y.
template <class In, class Out>
void rmsnorm_forward(const Stream& stream, HeadRows<const In> x, const bf16* weight, float eps, HeadRows<Out> y, float* rstd,
                     std::int64_t tokens, int cols, const float* residual = nullptr, std::int64_t residual_ld = 0) {
    using namespace ops_detail;
    require(x.heads == y.heads && x.heads >= 1, "rmsnorm_forward", "input and output must have the same positive heads per token");
    require(cols > 0 && tokens >= 0, "rmsnorm_forward", "cols " + std::to_string(cols) + " must be positive");
    require(x.ld >= x.heads * cols && y.ld >= y.heads * cols, "rmsnorm_forward", "a leading dimension is smaller than heads * cols");
    const std::int64_t rows = tokens * x.heads;
    if (rows == 0) return;
    require(rows <= INT32_MAX, "rmsnorm_forward", std::to_string(rows) + " rows exceed int32");
    const int width = vector_width({operand(x.data), operand(y.data), operand(weight), operand(residual)},
                                   {cols, x.ld, y.ld, residual != nullptr ? residual_ld : 0});
    const unsigned blocks = blocks_for(rows, kernels::norm_forward_threads / 32, INT32_MAX);
    with_vector_width(width, [&](auto vec) {
        launch(kernels::rmsnorm_forward_kernel<decltype(vec)::value, In, Out>, blocks, kernels::norm_forward_threads, 0, stream,
               x.data, x.ld, y.data, y.ld, residual, residual_ld, weight, rstd, static_cast<int>(rows), x.heads, cols,
               static_cast<float>(1.0 / cols), eps);
    });
}

// dx = RMSNorm'(x)^T dy (+ dx_add), overwriting dx (which may be dx_add itself); dw += the weight
// gradient. `workspace` holds rmsnorm_backward_workspace(rows, cols) floats.
template <class In, class Dy, class Dx>
void rmsnorm_backward(const Stream& stream, HeadRows<const In> x, const bf16* weight, const float* rstd, HeadRows<const Dy> dy,
                      HeadRows<Dx> dx, float* dw, float* workspace, std::int64_t tokens, int cols,
                      const float* dx_add = nullptr, std::int64_t dx_add_ld = 0) {
    using namespace ops_detail;
    require(x.heads == dy.heads && x.heads == dx.heads && x.heads >= 1, "rmsnorm_backward",
            "x, dy and dx must have the same positive heads per token");
    require(cols > 0 && tokens >= 0, "rmsnorm_backward", "cols " + std::to_string(cols) + " must be positive");
    require(x.ld >= x.heads * cols && dy.ld >= dy.heads * cols && dx.ld >= dx.heads * cols &&
                (dx_add == nullptr || dx_add_ld >= x.heads * cols),
            "rmsnorm_backward", "a leading dimension is smaller than heads * cols");
    const std::int64_t rows = tokens * x.heads;
    if (rows == 0) return;
    require(rows <= INT32_MAX, "rmsnorm_backward", std::to_string(rows) + " rows exceed int32");
    const int blocks = norm_backward_blocks(rows);
    const std::size_t shared = static_cast<std::size_t>(kernels::norm_backward_threads / 32) * cols * sizeof(float);
    const int width = vector_width({operand(x.data), operand(dy.data), operand(dx.data), operand(weight), operand(dx_add)},
                                   {cols, x.ld, dy.ld, dx.ld, dx_add != nullptr ? dx_add_ld : 0});
    with_vector_width(width, [&](auto vec) {
        const auto kernel = kernels::rmsnorm_backward_kernel<decltype(vec)::value, In, Dy, Dx>;
        if (shared > 48 * 1024) set_max_dynamic_shared_bytes(kernel, shared);
        launch(kernel, blocks, kernels::norm_backward_threads, shared, stream, x.data, x.ld, weight, rstd, dy.data, dy.ld,
               dx.data, dx.ld, dx_add, dx_add_ld, workspace, static_cast<int>(rows), x.heads, cols,
               static_cast<float>(1.0 / cols));
    });
    launch(kernels::column_sum_kernel<>, blocks_for(cols, 256), 256, 0, stream, static_cast<const float*>(workspace), blocks,
           cols, dw);
}

GEMMA3_CUDA_NAMESPACE_END
