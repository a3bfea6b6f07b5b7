// gemma3::cuda::Gemm (cuBLASLt) against a CPU product in double precision, on the emulator and on
// the device. The bounds come from the fp32 accumulation: each computed element is within
// (k + 2) * 2^-23 * (|alpha| sum_l |a_il b_lj| + |beta| |c_ij|) of the exact value (k products and
// additions and the alpha and beta scalings, each rounded with a relative error of at most 2^-23,
// which covers round-to-nearest and the truncation some tensor-core paths use), plus half a bf16
// ulp (2^-8 relative) for a bf16 output. A wrong leading dimension or transposition gives errors of
// the order of the values themselves, far outside these bounds.
// bf16 inputs are rounded to bf16 on the host first and the reference uses the rounded values.
#include "cuda_test.hpp"

#include <gemma3/cuda/blas_lt.hpp>
#include <gemma3/io/safetensors.hpp>  // float_to_bf16 / bf16_to_float

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::contains;

constexpr float pad_value = 12345.0f;  // fills the gaps between rows and between batch instances

template <class T>
T to_element(float value) {
    if constexpr (std::is_same_v<T, float>) {
        return value;
    } else {
        return cu::test::bf16_from_bits(gemma3::float_to_bf16(value));
    }
}

template <class T>
double to_double(T value) {
    if constexpr (std::is_same_v<T, float>) {
        return value;
    } else {
        return gemma3::bf16_to_float(cu::test::bf16_bits(value));
    }
}

template <class T>
std::uint32_t element_bits(T value) {
    if constexpr (std::is_same_v<T, float>) {
        return std::bit_cast<std::uint32_t>(value);
    } else {
        return cu::test::bf16_bits(value);
    }
}

// A batch of row-major matrices with padding: `ld` >= cols, `stride` >= rows * ld.
template <class T>
struct HostMatrices {
    std::int64_t batch, rows, cols, ld, stride;
    std::vector<T> data;

    HostMatrices(std::int64_t batch_count, std::int64_t row_count, std::int64_t col_count, std::int64_t leading,
                 std::int64_t batch_stride, std::uint32_t seed)
        : batch(batch_count), rows(row_count), cols(col_count), ld(leading), stride(batch_stride),
          data(static_cast<std::size_t>(batch_count * batch_stride), to_element<T>(pad_value)) {
        const std::vector<float> values = cu::test::random_floats(static_cast<std::size_t>(batch * rows * cols), -1.0f, 1.0f, seed);
        std::size_t next = 0;
        for (std::int64_t b = 0; b < batch; ++b)
            for (std::int64_t r = 0; r < rows; ++r)
                for (std::int64_t c = 0; c < cols; ++c) at(b, r, c) = to_element<T>(values[next++]);
    }
    T& at(std::int64_t b, std::int64_t r, std::int64_t c) { return data[static_cast<std::size_t>(b * stride + r * ld + c)]; }
    double value(std::int64_t b, std::int64_t r, std::int64_t c) const {
        return to_double(data[static_cast<std::size_t>(b * stride + r * ld + c)]);
    }
    bool in_matrix(std::size_t index) const {
        const auto offset = static_cast<std::int64_t>(index) % stride;
        return offset / ld < rows && offset % ld < cols;
    }
};

// Checks c = alpha op(a) op(b) + beta c0 element by element, and that padding is untouched.
template <class In, class Out>
void check_product(const HostMatrices<In>& a, cu::Op op_a, const HostMatrices<In>& b, cu::Op op_b, const HostMatrices<Out>& c0,
                   const std::vector<Out>& c, float alpha, float beta) {
    const std::int64_t m = c0.rows, n = c0.cols;
    const std::int64_t k = op_a == cu::Op::none ? a.cols : a.rows;
    const double u = std::ldexp(1.0, -23);
    int bad = 0;
    double worst_ratio = 0.0;
    for (std::int64_t inst = 0; inst < c0.batch; ++inst) {
        for (std::int64_t i = 0; i < m; ++i) {
            for (std::int64_t j = 0; j < n; ++j) {
                double exact = 0.0, magnitude = 0.0;
                for (std::int64_t l = 0; l < k; ++l) {
                    const double x = op_a == cu::Op::none ? a.value(inst, i, l) : a.value(inst, l, i);
                    const double y = op_b == cu::Op::none ? b.value(inst, l, j) : b.value(inst, j, l);
                    exact += x * y;
                    magnitude += std::fabs(x * y);
                }
                const double c_initial = c0.value(inst, i, j);
                const double expected = alpha * exact + beta * c_initial;
                double bound = static_cast<double>(k + 2) * u * (std::fabs(alpha) * magnitude + std::fabs(beta) * std::fabs(c_initial));
                if constexpr (!std::is_same_v<Out, float>) bound += std::ldexp(std::fabs(expected) + bound, -8);  // bf16 rounding
                const double got = to_double(c[static_cast<std::size_t>(inst * c0.stride + i * c0.ld + j)]);
                const double error = std::fabs(got - expected);
                worst_ratio = std::max(worst_ratio, error / bound);
                if (!(error <= bound) && ++bad <= 5)
                    FAIL_CHECK("c[" << inst << "](" << i << "," << j << ") = " << got << ", expected " << expected << " +- " << bound);
            }
        }
    }
    INFO("largest error / bound: " << worst_ratio);
    CHECK(bad == 0);
    int padding_changed = 0;
    for (std::size_t index = 0; index < c.size(); ++index)
        if (!c0.in_matrix(index) && element_bits(c[index]) != element_bits(c0.data[index])) ++padding_changed;
    CHECK(padding_changed == 0);
}

template <class In, class Out>
void run_product(cu::Gemm& gemm, cu::Op op_a, cu::Op op_b, std::int64_t batch, std::uint32_t seed) {
    const std::int64_t m = 37, n = 53, k = 29;
    const std::int64_t a_rows = op_a == cu::Op::none ? m : k, a_cols = op_a == cu::Op::none ? k : m;
    const std::int64_t b_rows = op_b == cu::Op::none ? k : n, b_cols = op_b == cu::Op::none ? n : k;
    const std::int64_t lda = a_cols + 3, ldb = b_cols + 5, ldc = n + 7;
    // Batch strides leave a gap of a few elements after each instance (checked for c).
    const HostMatrices<In> a(batch, a_rows, a_cols, lda, a_rows * lda + 11, seed);
    const HostMatrices<In> b(batch, b_rows, b_cols, ldb, b_rows * ldb + 4, seed + 1);
    const HostMatrices<Out> c0(batch, m, n, ldc, m * ldc + 9, seed + 2);
    const float alpha = 0.75f, beta = -0.5f;

    const auto device_a = cu::DeviceBuffer<In>::from_host(a.data);
    const auto device_b = cu::DeviceBuffer<In>::from_host(b.data);
    auto device_c = cu::DeviceBuffer<Out>::from_host(c0.data);
    cu::Stream stream;
    const auto view_a = cu::matrix_view(device_a.data(), a_rows, a_cols, lda);
    const auto view_b = cu::matrix_view(device_b.data(), b_rows, b_cols, ldb);
    const auto view_c = cu::matrix_view(device_c.data(), m, n, ldc);
    if (batch == 1) {
        gemm.multiply(stream, view_a, op_a, view_b, op_b, view_c, alpha, beta);
    } else {
        gemm.multiply_strided_batched(stream, batch, cu::StridedMatrices<const In>{view_a, a.stride}, op_a,
                                      cu::StridedMatrices<const In>{view_b, b.stride}, op_b,
                                      cu::StridedMatrices<Out>{view_c, c0.stride}, alpha, beta);
    }
    check_product(a, op_a, b, op_b, c0, device_c.download(), alpha, beta);
}

const cu::Op both_ops[] = {cu::Op::none, cu::Op::transpose};

}  // namespace

GEMMA3_CUDA_TEST_CASE("Gemm fp32: all four transpositions, odd sizes, leading dimensions wider than the rows") {
    cu::Gemm gemm;
    for (const cu::Op op_a : both_ops)
        for (const cu::Op op_b : both_ops) {
            CAPTURE(static_cast<int>(op_a));
            CAPTURE(static_cast<int>(op_b));
            run_product<float, float>(gemm, op_a, op_b, 1, 100u);
        }
    CHECK(gemm.cached_algorithm_count() == 4);
}

GEMMA3_CUDA_TEST_CASE("Gemm bf16 inputs with fp32 and with bf16 output: all four transpositions") {
    cu::Gemm gemm;
    for (const cu::Op op_a : both_ops)
        for (const cu::Op op_b : both_ops) {
            CAPTURE(static_cast<int>(op_a));
            CAPTURE(static_cast<int>(op_b));
            run_product<__nv_bfloat16, float>(gemm, op_a, op_b, 1, 200u);
            run_product<__nv_bfloat16, __nv_bfloat16>(gemm, op_a, op_b, 1, 300u);
        }
}

GEMMA3_CUDA_TEST_CASE("Gemm strided-batched products with gaps between the instances") {
    cu::Gemm gemm;
    run_product<float, float>(gemm, cu::Op::transpose, cu::Op::none, 3, 400u);
    run_product<__nv_bfloat16, float>(gemm, cu::Op::none, cu::Op::transpose, 3, 500u);
    run_product<__nv_bfloat16, __nv_bfloat16>(gemm, cu::Op::transpose, cu::Op::transpose, 2, 600u);
}

GEMMA3_CUDA_TEST_CASE("Gemm chooses an algorithm once per problem signature") {
    cu::Gemm gemm;
    cu::Stream stream;
    cu::DeviceBuffer<float> a(8 * 4), b(4 * 6), c(8 * 6);
    a.fill_bytes(0);
    b.fill_bytes(0);
    const auto view_a = cu::matrix_view<const float>(a.data(), 8, 4);
    const auto view_b = cu::matrix_view<const float>(b.data(), 4, 6);
    const auto view_c = cu::matrix_view(c.data(), 8, 6);
    gemm.multiply(stream, view_a, cu::Op::none, view_b, cu::Op::none, view_c);
    gemm.multiply(stream, view_a, cu::Op::none, view_b, cu::Op::none, view_c);
    CHECK(gemm.cached_algorithm_count() == 1);
    gemm.multiply(stream, cu::matrix_view<const float>(a.data(), 6, 4), cu::Op::none, view_b, cu::Op::none,
                  cu::matrix_view(c.data(), 6, 6));
    CHECK(gemm.cached_algorithm_count() == 2);
    CHECK(c.download() == std::vector<float>(48, 0.0f));
}

GEMMA3_CUDA_TEST_CASE("Gemm rejects inconsistent shapes and leading dimensions with clear messages") {
    cu::Gemm gemm;
    cu::Stream stream;
    cu::DeviceBuffer<float> a(64), b(64), c(64);
    const std::string shapes = cu::test::thrown_message<std::invalid_argument>([&] {
        gemm.multiply(stream, cu::matrix_view<const float>(a.data(), 4, 3), cu::Op::none,
                      cu::matrix_view<const float>(b.data(), 4, 5), cu::Op::none, cu::matrix_view(c.data(), 4, 5));
    });
    CHECK(contains(shapes, "op(a) is 4x3, op(b) is 4x5"));
    const std::string leading = cu::test::thrown_message<std::invalid_argument>([&] {
        gemm.multiply(stream, cu::matrix_view<const float>(a.data(), 4, 3, 2), cu::Op::none,
                      cu::matrix_view<const float>(b.data(), 3, 5), cu::Op::none, cu::matrix_view(c.data(), 4, 5));
    });
    CHECK(contains(leading, "leading dimension 2 is smaller than its 3 columns"));
}

GEMMA3_CUDA_TEST_CASE("cuBLASLt called directly follows the documented column-major semantics") {
    // D (m x n) = alpha * A^T * B + beta * C with A stored k x m (lda = k + 2), B stored k x n
    // (ldb = k + 1), C and D m x n (ldc = m + 3); element (r, c) of a column-major matrix is at c * ld + r.
    const std::int64_t m = 5, n = 7, k = 6, lda = k + 2, ldb = k + 1, ldc = m + 3;
    const std::vector<float> a = cu::test::random_floats(static_cast<std::size_t>(lda * m), -1.0f, 1.0f, 11u);
    const std::vector<float> b = cu::test::random_floats(static_cast<std::size_t>(ldb * n), -1.0f, 1.0f, 12u);
    const std::vector<float> c = cu::test::random_floats(static_cast<std::size_t>(ldc * n), -1.0f, 1.0f, 13u);
    const float alpha = 1.5f, beta = 0.25f;
    const auto device_a = cu::DeviceBuffer<float>::from_host(a);
    const auto device_b = cu::DeviceBuffer<float>::from_host(b);
    auto device_c = cu::DeviceBuffer<float>::from_host(c);
    cu::DeviceBuffer<std::byte> workspace(1 << 20);
    cu::Stream stream;

    cublasLtHandle_t handle = nullptr;
    GEMMA3_CUBLAS_CHECK(cublasLtCreate(&handle));
    cublasLtMatmulDesc_t description = nullptr;
    GEMMA3_CUBLAS_CHECK(cublasLtMatmulDescCreate(&description, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const std::int32_t transpose = CUBLAS_OP_T;
    GEMMA3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(description, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose));
    cublasLtMatrixLayout_t layout_a = nullptr, layout_b = nullptr, layout_c = nullptr;
    GEMMA3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_a, CUDA_R_32F, k, m, lda));
    GEMMA3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_b, CUDA_R_32F, k, n, ldb));
    GEMMA3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_c, CUDA_R_32F, m, n, ldc));
    cublasLtMatmulPreference_t preference = nullptr;
    GEMMA3_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const std::uint64_t workspace_bytes = workspace.size();
    GEMMA3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &workspace_bytes, sizeof workspace_bytes));
    cublasLtMatmulHeuristicResult_t heuristic{};
    int returned = 0;
    GEMMA3_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, description, layout_a, layout_b, layout_c, layout_c, preference,
                                                       1, &heuristic, &returned));
    REQUIRE(returned == 1);
    GEMMA3_CUBLAS_CHECK(cublasLtMatmul(handle, description, &alpha, device_a.data(), layout_a, device_b.data(), layout_b, &beta,
                                       device_c.data(), layout_c, device_c.data(), layout_c, &heuristic.algo,
                                       workspace.data(), workspace.size(), stream.get()));
    const std::vector<float> d = device_c.download();
    for (std::int64_t col = 0; col < n; ++col) {
        for (std::int64_t row = 0; row < ldc; ++row) {
            const float got = d[static_cast<std::size_t>(col * ldc + row)];
            const float initial = c[static_cast<std::size_t>(col * ldc + row)];
            if (row >= m) {
                CHECK(got == initial);  // rows between m and ldc are not part of the matrix
                continue;
            }
            double exact = 0.0, magnitude = 0.0;
            for (std::int64_t l = 0; l < k; ++l) {
                const double product = static_cast<double>(a[static_cast<std::size_t>(row * lda + l)]) *
                                       b[static_cast<std::size_t>(col * ldb + l)];
                exact += product;
                magnitude += std::fabs(product);
            }
            const double expected = alpha * exact + beta * static_cast<double>(initial);
            const double bound = (k + 2) * std::ldexp(1.0, -23) * (alpha * magnitude + beta * std::fabs(initial));
            CHECK(std::fabs(got - expected) <= bound);
        }
    }
    CHECK(cublasLtMatmulPreferenceDestroy(preference) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(layout_c) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(layout_b) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(layout_a) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescDestroy(description) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtDestroy(handle) == CUBLAS_STATUS_SUCCESS);
}
