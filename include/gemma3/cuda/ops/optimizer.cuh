// The optimizer's kernels on the device: the global L2 norm of the gradients and AdamW with fp32
// master weights and moments, writing the bf16 compute copy in the same pass. The twin of
// include/gemma3/train/optimizer.hpp (AdamW, global_norm, clip_grad_norm; docs/model.md §8.4, §8.6).
//
// The norm is deterministic: a fixed grid of 512 blocks sums squares in double (each thread a
// grid-stride slice, then a block tree), and one block adds the 512 partials in order. Clipping is
// folded into AdamW: the gradient is multiplied by the clip coefficient as it is read, instead of a
// separate pass that rewrites every gradient (the flat gradient buffer itself is left unscaled).
#pragma once

#include "common.cuh"

GEMMA3_CUDA_NAMESPACE_BEGIN

namespace kernels {

inline constexpr int squared_norm_blocks = 512;

// partials[blockIdx.x] = this block's sum of values[i]^2 (double).
template <int = 0>
__global__ void __launch_bounds__(256)
    squared_norm_partials_kernel(const float* __restrict__ values, std::size_t n, double* __restrict__ partials) {
    __shared__ double scratch[32];
    const std::size_t first = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
    const std::size_t runs = n / 4;
    double sum = 0.0;
    for (std::size_t i = first; i < runs; i += stride) {
        float v[4];
        load(values + 4 * i, v);
#pragma unroll
        for (int k = 0; k < 4; ++k) sum += static_cast<double>(v[k]) * static_cast<double>(v[k]);
    }
    for (std::size_t i = 4 * runs + first; i < n; i += stride) sum += static_cast<double>(values[i]) * static_cast<double>(values[i]);
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// The constants of one AdamW step, computed on the host as the CPU AdamW computes them.
struct AdamWConstants {
    float clip = 1.0f;       // gradient multiplier (clip_grad_norm's coefficient, or 1)
    float decay = 1.0f;      // 1 - lr * weight_decay
    float step_size = 0.0f;  // lr / (1 - beta1^t)
    float inv_bias2_sqrt = 1.0f;
    float beta1 = 0.9f, one_minus_beta1 = 0.1f, beta2 = 0.95f, one_minus_beta2 = 0.05f, eps = 1e-9f;
};

// p *= decay; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= step_size m / (sqrt(v) / sqrt(1 - b2^t) + eps);
// compute = bf16(p). g = grads * clip.
template <int = 0>
__global__ void __launch_bounds__(256)
    adamw_kernel(float* __restrict__ master, bf16* __restrict__ compute, const float* __restrict__ grads, float* __restrict__ m,
                 float* __restrict__ v, std::size_t n, AdamWConstants c) {
    const std::size_t first = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
    const auto update = [&c](float& p, float& mi, float& vi, float g) {
        g *= c.clip;
        p *= c.decay;
        mi = c.beta1 * mi + c.one_minus_beta1 * g;
        vi = c.beta2 * vi + c.one_minus_beta2 * g * g;
        p -= c.step_size * mi / (sqrtf(vi) * c.inv_bias2_sqrt + c.eps);
    };
    const std::size_t runs = n / 4;
    for (std::size_t i = first; i < runs; i += stride) {
        float p[4], g[4], mi[4], vi[4];
        load(master + 4 * i, p);
        load(grads + 4 * i, g);
        load(m + 4 * i, mi);
        load(v + 4 * i, vi);
#pragma unroll
        for (int k = 0; k < 4; ++k) update(p[k], mi[k], vi[k], g[k]);
        store(master + 4 * i, p);
        store(m + 4 * i, mi);
        store(v + 4 * i, vi);
        store(compute + 4 * i, p);
    }
    for (std::size_t i = 4 * runs + first; i < n; i += stride) {
        float p = master[i], mi = m[i], vi = v[i];
        update(p, mi, vi, grads[i]);
        master[i] = p;
        m[i] = mi;
        v[i] = vi;
        compute[i] = __float2bfloat16(p);
    }
}

}  // namespace kernels

// *squared_norm = sum of values[i]^2 over n elements (double, device). `partials` holds
// kernels::squared_norm_blocks doubles of scratch.
inline void squared_norm(const Stream& stream, const float* values, std::size_t n, double* partials, double* squared_norm) {
    using namespace ops_detail;
    require(aligned_to(values, 16), "squared_norm", "the values must be 16-byte aligned (a cudaMalloc'ed buffer)");
    memset_device_async(squared_norm, 0, sizeof(double), stream);
    launch(kernels::squared_norm_partials_kernel<>, kernels::squared_norm_blocks, 256, 0, stream, values, n, partials);
    launch(kernels::sum_in_order_kernel<>, 1, 256, 0, stream, static_cast<const double*>(partials),
           kernels::squared_norm_blocks, squared_norm);
}

// One AdamW step over n elements (all buffers 16-byte aligned: cudaMalloc'ed).
inline void adamw_step(const Stream& stream, float* master, bf16* compute, const float* grads, float* m, float* v, std::size_t n,
                       const kernels::AdamWConstants& constants) {
    using namespace ops_detail;
    require(aligned_to(master, 16) && aligned_to(compute, 8) && aligned_to(grads, 16) && aligned_to(m, 16) && aligned_to(v, 16),
            "adamw_step", "the buffers must be 16-byte aligned (bf16 copy: 8-byte)");
    if (n == 0) return;
    launch(kernels::adamw_kernel<>, blocks_for(static_cast<std::int64_t>((n + 3) / 4), 256, 4096), 256, 0, stream, master, compute,
           grads, m, v, n, constants);
}

GEMMA3_CUDA_NAMESPACE_END
