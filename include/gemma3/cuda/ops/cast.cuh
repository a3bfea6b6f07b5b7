// Element type conversions of (strided) matrices on the device: fp32 <-> bf16.
//
// Used where a product wants bf16 operands of an fp32 result (the summed key/value gradients into
// their columns of the q/k/v gradient), for the bf16 compute copy of fp32 weights, and to read
// results back as fp32. Rounding is the hardware's round-to-nearest-even (__float2bfloat16).
#pragma once

#include "common.cuh"

GEMMA3_CUDA_NAMESPACE_BEGIN

namespace kernels {

template <int kVec, class In, class Out>
__global__ void __launch_bounds__(256) cast_kernel(const In* __restrict__ in, std::int64_t in_ld, Out* __restrict__ out,
                                                   std::int64_t out_ld, std::int64_t rows, std::int64_t cols) {
    const std::int64_t runs_per_row = cols / kVec;
    const std::int64_t runs = rows * runs_per_row;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < runs;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        const std::int64_t row = i / runs_per_row, c = (i % runs_per_row) * kVec;
        float v[kVec];
        load(in + row * in_ld + c, v);
        store(out + row * out_ld + c, v);
    }
}

}  // namespace kernels

// out [rows, cols] (leading dimension out_ld) = in [rows, cols] (in_ld), converted.
template <class In, class Out>
void cast(const Stream& stream, const In* in, std::int64_t in_ld, Out* out, std::int64_t out_ld, std::int64_t rows,
          std::int64_t cols) {
    using namespace ops_detail;
    require(rows >= 0 && cols >= 0 && in_ld >= cols && out_ld >= cols, "cast",
            "a leading dimension is smaller than the " + std::to_string(cols) + " columns");
    if (rows == 0 || cols == 0) return;
    const int width = vector_width({operand(in), operand(out)}, {cols, in_ld, out_ld});
    with_vector_width(width, [&](auto vec) {
        constexpr int kVec = decltype(vec)::value;
        launch(kernels::cast_kernel<kVec, In, Out>, blocks_for(rows * (cols / kVec), 256, 8192), 256, 0, stream, in, in_ld, out,
               out_ld, rows, cols);
    });
}

// A contiguous array of n elements.
template <class In, class Out>
void cast(const Stream& stream, const In* in, Out* out, std::size_t n) {
    // One row of n elements when it is short; otherwise rows of 4096 and a tail row.
    constexpr std::int64_t row = 4096;
    const auto count = static_cast<std::int64_t>(n);
    if (count <= row) {
        cast(stream, in, count, out, count, 1, count);
        return;
    }
    const std::int64_t full_rows = count / row, tail = count % row;
    cast(stream, in, row, out, row, full_rows, row);
    if (tail > 0) cast(stream, in + full_rows * row, tail, out + full_rows * row, tail, 1, tail);
}

GEMMA3_CUDA_NAMESPACE_END
