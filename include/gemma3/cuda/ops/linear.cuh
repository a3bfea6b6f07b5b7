// Bias-free linear layer on the device, PyTorch's weight layout [out, in]: y = x W^T. The twin of
// include/gemma3/ops/linear.hpp (docs/model.md §1).
//
// Both products go to cuBLASLt through gemma3::cuda::Gemm (bf16 operands, fp32 accumulation,
// algorithm cached per shape). Outputs are bf16 when the next consumer is another product, fp32
// when it is an element-wise kernel (the gradients flowing into the norms keep fp32 that way).
// Weight gradients are fp32 and accumulate (beta = 1), so the micro-batches of one optimizer step
// add up in place, as in the CPU back end.
#pragma once

#include "common.cuh"

#include <gemma3/cuda/blas_lt.hpp>

GEMMA3_CUDA_NAMESPACE_BEGIN

// y [tokens, out] = x [tokens, in] * W^T with W [out, in].
template <class Y>
void linear_forward(Gemm& gemm, const Stream& stream, MatrixView<const bf16> x, MatrixView<const bf16> weight, MatrixView<Y> y) {
    gemm.multiply(stream, x, Op::none, weight, Op::transpose, y);
}

// dx [tokens, in] = dy W (overwritten, or added to with accumulate_dx); dW [out, in] += dy^T x.
template <class Dx>
void linear_backward(Gemm& gemm, const Stream& stream, MatrixView<const bf16> x, MatrixView<const bf16> weight,
                     MatrixView<const bf16> dy, MatrixView<Dx> dx, MatrixView<float> d_weight, bool accumulate_dx = false) {
    gemm.multiply(stream, dy, Op::none, weight, Op::none, dx, 1.0f, accumulate_dx ? 1.0f : 0.0f);
    gemm.multiply(stream, dy, Op::transpose, x, Op::none, d_weight, 1.0f, 1.0f);
}

GEMMA3_CUDA_NAMESPACE_END
