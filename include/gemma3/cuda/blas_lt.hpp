// Matrix products on the device through cuBLASLt, in the row-major terms of our CPU gemm()
// (include/gemma3/core/blas.hpp): c = alpha * op(a) * op(b) + beta * c with row-major a, b, c and
// leading dimensions (the distance in elements between consecutive rows).
//
// Types: bf16 inputs with fp32 accumulation and bf16 or fp32 output, or fp32 throughout (true fp32
// products: CUBLAS_COMPUTE_32F, no TF32). alpha and beta are fp32.
//
// Row-major to column-major: cuBLASLt is column-major. A row-major r x c matrix with leading
// dimension ld occupies exactly the bytes of the column-major c x r matrix with the same ld, i.e.
// of its transpose. Since C = op(A) op(B) is equivalent to C^T = op(B)^T op(A)^T, we ask cuBLASLt
// for the column-major product C^T (n x m) with its "A" operand = our b (stored as a column-major
// b.cols x b.rows matrix) and its "B" operand = our a (a.cols x a.rows), keeping each operand's
// transposition flag: TRANSA = op_b, TRANSB = op_a; m' = n, n' = m, k' = k. No data moves.
//
// Algorithms: cublasLtMatmulAlgoGetHeuristic runs once per problem signature (shapes, leading
// dimensions, transpositions, types, batch count and strides, and the actual alignment of the
// pointers, which the heuristic must be told), and the chosen algorithm is cached in the Gemm
// object. A Gemm is not thread-safe; use one per host thread or stream.
#pragma once

#include <gemma3/cuda/runtime.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

GEMMA3_CUDA_NAMESPACE_BEGIN

enum class Op { none, transpose };

// A row-major matrix in device memory: element (r, c) is data[r * ld + c], ld >= cols.
template <class T>
struct MatrixView {
    T* data = nullptr;
    std::int64_t rows = 0;
    std::int64_t cols = 0;
    std::int64_t ld = 0;
};

template <class T>
MatrixView<T> matrix_view(T* data, std::int64_t rows, std::int64_t cols, std::int64_t ld) {
    return {data, rows, cols, ld};
}
template <class T>
MatrixView<T> matrix_view(T* data, std::int64_t rows, std::int64_t cols) {
    return {data, rows, cols, cols};
}

// `batch` matrices of the same shape, `stride` elements apart (stride >= rows * ld).
template <class T>
struct StridedMatrices {
    MatrixView<T> matrix;
    std::int64_t stride = 0;
};

class Gemm {
public:
    static constexpr std::size_t default_workspace_bytes = std::size_t{32} << 20;

    explicit Gemm(std::size_t workspace_bytes = default_workspace_bytes) : workspace_(workspace_bytes) {
        GEMMA3_CUBLAS_CHECK(cublasLtCreate(&handle_));
    }
    ~Gemm() {
        if (handle_ != nullptr) (void)cublasLtDestroy(handle_);
    }
    Gemm(const Gemm&) = delete;
    Gemm& operator=(const Gemm&) = delete;

    // c = alpha * op(a) * op(b) + beta * c. With beta == 0, c is not read.
    template <class A, class B, class C>
    void multiply(const Stream& stream, MatrixView<A> a, Op op_a, MatrixView<B> b, Op op_b, MatrixView<C> c,
                  float alpha = 1.0f, float beta = 0.0f) {
        run(stream, 1, StridedMatrices<A>{a, 0}, op_a, StridedMatrices<B>{b, 0}, op_b, StridedMatrices<C>{c, 0}, alpha, beta);
    }

    // The same product for each of `batch` instances: c[i] = alpha * op(a[i]) * op(b[i]) + beta * c[i].
    template <class A, class B, class C>
    void multiply_strided_batched(const Stream& stream, std::int64_t batch, StridedMatrices<A> a, Op op_a,
                                  StridedMatrices<B> b, Op op_b, StridedMatrices<C> c, float alpha = 1.0f,
                                  float beta = 0.0f) {
        run(stream, batch, a, op_a, b, op_b, c, alpha, beta);
    }

    // Number of problem signatures whose descriptors and algorithm have been made so far.
    std::size_t cached_algorithm_count() const noexcept { return plans_.size(); }

private:
    using Key = std::array<std::int64_t, 18>;

    template <class T>
    static constexpr cudaDataType_t data_type() {
        if constexpr (std::is_same_v<T, float>) {
            return CUDA_R_32F;
        } else {
            static_assert(std::is_same_v<T, __nv_bfloat16>, "Gemm: operands are float or __nv_bfloat16");
            return CUDA_R_16BF;
        }
    }

    // Largest power of two (at most 256) dividing the address of every instance of a batch.
    static std::int64_t alignment_of(const void* data, std::int64_t stride_bytes, std::int64_t batch) {
        std::uint64_t bits = reinterpret_cast<std::uintptr_t>(data) | 256u;
        if (batch > 1) bits |= static_cast<std::uint64_t>(stride_bytes);
        return static_cast<std::int64_t>(bits & (~bits + 1));  // lowest set bit
    }

    template <class A, class B, class C>
    void run(const Stream& stream, std::int64_t batch, StridedMatrices<A> a, Op op_a, StridedMatrices<B> b, Op op_b,
             StridedMatrices<C> c, float alpha, float beta) {
        using In = std::remove_const_t<A>;
        using Out = C;
        static_assert(std::is_same_v<In, std::remove_const_t<B>>, "Gemm: a and b must have the same element type");
        static_assert(!std::is_const_v<C>, "Gemm: c is written");
        static_assert(std::is_same_v<Out, float> || std::is_same_v<In, __nv_bfloat16>,
                      "Gemm: fp32 inputs need an fp32 output");
        const std::int64_t m = op_a == Op::none ? a.matrix.rows : a.matrix.cols;
        const std::int64_t k = op_a == Op::none ? a.matrix.cols : a.matrix.rows;
        const std::int64_t k_b = op_b == Op::none ? b.matrix.rows : b.matrix.cols;
        const std::int64_t n = op_b == Op::none ? b.matrix.cols : b.matrix.rows;
        if (k != k_b || c.matrix.rows != m || c.matrix.cols != n)
            throw std::invalid_argument("Gemm: shape mismatch: op(a) is " + std::to_string(m) + "x" + std::to_string(k) +
                                        ", op(b) is " + std::to_string(k_b) + "x" + std::to_string(n) + ", c is " +
                                        std::to_string(c.matrix.rows) + "x" + std::to_string(c.matrix.cols));
        if (batch < 0) throw std::invalid_argument("Gemm: negative batch count " + std::to_string(batch));
        check_operand("a", a.matrix.rows, a.matrix.cols, a.matrix.ld, a.stride, batch, a.matrix.data);
        check_operand("b", b.matrix.rows, b.matrix.cols, b.matrix.ld, b.stride, batch, b.matrix.data);
        check_operand("c", c.matrix.rows, c.matrix.cols, c.matrix.ld, c.stride, batch, c.matrix.data);
        if (m == 0 || n == 0 || batch == 0) return;
        if (k == 0) throw std::invalid_argument("Gemm: k = 0 (an empty inner dimension) is not supported");
        if (batch > std::numeric_limits<std::int32_t>::max())
            throw std::invalid_argument("Gemm: batch count " + std::to_string(batch) + " exceeds cuBLASLt's int32");

        // cuBLASLt's operands (column-major), see the header comment: its A is our b, its B our a.
        const cudaDataType_t in_type = data_type<In>();
        const cudaDataType_t out_type = data_type<Out>();
        const std::int64_t align_lt_a = alignment_of(b.matrix.data, b.stride * std::int64_t{sizeof(In)}, batch);
        const std::int64_t align_lt_b = alignment_of(a.matrix.data, a.stride * std::int64_t{sizeof(In)}, batch);
        const std::int64_t align_c = alignment_of(c.matrix.data, c.stride * std::int64_t{sizeof(Out)}, batch);
        const Key key{static_cast<std::int64_t>(op_a), static_cast<std::int64_t>(op_b), m, n, k, a.matrix.ld, b.matrix.ld,
                      c.matrix.ld, batch, batch > 1 ? a.stride : 0, batch > 1 ? b.stride : 0, batch > 1 ? c.stride : 0,
                      static_cast<std::int64_t>(in_type), static_cast<std::int64_t>(out_type), align_lt_a, align_lt_b,
                      align_c, static_cast<std::int64_t>(workspace_.size())};
        // The descriptors depend only on the key: made once per signature, with the algorithm.
        auto found = plans_.find(key);
        if (found == plans_.end()) {
            Plan plan{Layout(in_type, b.matrix.cols, b.matrix.rows, b.matrix.ld, batch, b.stride),
                      Layout(in_type, a.matrix.cols, a.matrix.rows, a.matrix.ld, batch, a.stride),
                      Layout(out_type, c.matrix.cols, c.matrix.rows, c.matrix.ld, batch, c.stride),
                      MatmulDescription(op_b == Op::transpose, op_a == Op::transpose), {}};
            const Preference preference(workspace_.size(), align_lt_a, align_lt_b, align_c);
            cublasLtMatmulHeuristicResult_t result{};
            int returned = 0;
            GEMMA3_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, plan.description.get(), plan.lt_a.get(),
                                                               plan.lt_b.get(), plan.lt_c.get(), plan.lt_c.get(),
                                                               preference.get(), 1, &result, &returned));
            if (returned == 0 || result.state != CUBLAS_STATUS_SUCCESS)
                throw CudaError("cublasLtMatmulAlgoGetHeuristic found no algorithm for op(a) " + std::to_string(m) + "x" +
                                    std::to_string(k) + " times op(b) " + std::to_string(k) + "x" + std::to_string(n) +
                                    " (batch " + std::to_string(batch) + ")",
                                static_cast<int>(result.state));
            plan.algo = result.algo;
            found = plans_.emplace(key, std::move(plan)).first;
        }
        const Plan& plan = found->second;
        GEMMA3_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.description.get(), &alpha, b.matrix.data, plan.lt_a.get(),
                                           a.matrix.data, plan.lt_b.get(), &beta, c.matrix.data, plan.lt_c.get(),
                                           c.matrix.data, plan.lt_c.get(), &plan.algo, workspace_.data(),
                                           workspace_.size(), stream.get()));
    }

    static void check_operand(const char* name, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::int64_t stride,
                              std::int64_t batch, const void* data) {
        const std::string label = std::string("Gemm: ") + name + " (" + std::to_string(rows) + "x" + std::to_string(cols) + ")";
        if (rows < 0 || cols < 0) throw std::invalid_argument(label + ": negative dimension");
        if (ld < std::max<std::int64_t>(cols, 1))
            throw std::invalid_argument(label + ": leading dimension " + std::to_string(ld) + " is smaller than its " +
                                        std::to_string(cols) + " columns (row-major)");
        if (batch > 1 && stride < rows * ld)
            throw std::invalid_argument(label + ": batch stride " + std::to_string(stride) + " is smaller than one matrix (" +
                                        std::to_string(rows) + " rows x leading dimension " + std::to_string(ld) + ")");
        if (data == nullptr && rows > 0 && cols > 0 && batch > 0) throw std::invalid_argument(label + ": null data");
    }

    // RAII owners of the cuBLASLt descriptors.
    class Layout {
    public:
        Layout(cudaDataType_t type, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::int64_t batch, std::int64_t stride) {
            GEMMA3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_, type, static_cast<std::uint64_t>(rows),
                                                           static_cast<std::uint64_t>(cols), ld));
            if (batch <= 1) return;
            try {
                const std::int32_t count = static_cast<std::int32_t>(batch);
                const std::int64_t offset = stride;
                GEMMA3_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout_, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
                GEMMA3_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout_, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                                     &offset, sizeof offset));
            } catch (...) {
                (void)cublasLtMatrixLayoutDestroy(layout_);
                throw;
            }
        }
        ~Layout() {
            if (layout_ != nullptr) (void)cublasLtMatrixLayoutDestroy(layout_);
        }
        Layout(Layout&& other) noexcept : layout_(std::exchange(other.layout_, nullptr)) {}
        Layout(const Layout&) = delete;
        Layout& operator=(const Layout&) = delete;
        cublasLtMatrixLayout_t get() const noexcept { return layout_; }

    private:
        cublasLtMatrixLayout_t layout_ = nullptr;
    };

    class MatmulDescription {
    public:
        MatmulDescription(bool transpose_a, bool transpose_b) {
            GEMMA3_CUBLAS_CHECK(cublasLtMatmulDescCreate(&description_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
            try {
                const std::int32_t op_a = transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
                const std::int32_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
                GEMMA3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(description_, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
                GEMMA3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(description_, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
            } catch (...) {
                (void)cublasLtMatmulDescDestroy(description_);
                throw;
            }
        }
        ~MatmulDescription() {
            if (description_ != nullptr) (void)cublasLtMatmulDescDestroy(description_);
        }
        MatmulDescription(MatmulDescription&& other) noexcept : description_(std::exchange(other.description_, nullptr)) {}
        MatmulDescription(const MatmulDescription&) = delete;
        MatmulDescription& operator=(const MatmulDescription&) = delete;
        cublasLtMatmulDesc_t get() const noexcept { return description_; }

    private:
        cublasLtMatmulDesc_t description_ = nullptr;
    };

    class Preference {
    public:
        Preference(std::size_t workspace_bytes, std::int64_t align_a, std::int64_t align_b, std::int64_t align_c) {
            GEMMA3_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference_));
            try {
                set(workspace_bytes, align_a, align_b, align_c);
            } catch (...) {
                (void)cublasLtMatmulPreferenceDestroy(preference_);
                throw;
            }
        }
        ~Preference() { (void)cublasLtMatmulPreferenceDestroy(preference_); }
        Preference(const Preference&) = delete;
        Preference& operator=(const Preference&) = delete;
        cublasLtMatmulPreference_t get() const noexcept { return preference_; }

    private:
        void set(std::size_t workspace_bytes, std::int64_t align_a, std::int64_t align_b, std::int64_t align_c) {
            const std::uint64_t workspace = workspace_bytes;
            GEMMA3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference_, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                                     &workspace, sizeof workspace));
            const std::uint32_t alignments[4] = {static_cast<std::uint32_t>(align_a), static_cast<std::uint32_t>(align_b),
                                                 static_cast<std::uint32_t>(align_c), static_cast<std::uint32_t>(align_c)};
            const cublasLtMatmulPreferenceAttributes_t attributes[4] = {
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
            for (int i = 0; i < 4; ++i)
                GEMMA3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference_, attributes[i], &alignments[i],
                                                                         sizeof alignments[i]));
        }
        cublasLtMatmulPreference_t preference_ = nullptr;
    };

    // One product signature: its descriptors (cuBLASLt's A is our b, its B our a) and the algorithm.
    struct Plan {
        Layout lt_a, lt_b, lt_c;
        MatmulDescription description;
        cublasLtMatmulAlgo_t algo;
    };

    cublasLtHandle_t handle_ = nullptr;
    DeviceBuffer<std::byte> workspace_;
    std::map<Key, Plan> plans_;
};

GEMMA3_CUDA_NAMESPACE_END
