// The cuBLASLt subset that gemma3::cuda::Gemm uses, emulated on the CPU with the semantics the
// cublasLt.h documentation gives, so that the wrapper's real calls run in CI:
//
//   D = alpha * op(A) * op(B) + beta * C, all matrices column-major (CUBLASLT_ORDER_COL): element
//   (r, c) of a layout with leading dimension ld is at offset c * ld + r, and instance i of a
//   strided batch starts STRIDED_BATCH_OFFSET * i elements after instance 0. op(A) is m x k, op(B)
//   is k x n, C and D are m x n; the TRANSA/TRANSB attributes say whether A/B are stored transposed.
//   Products accumulate in fp32 (OpenBLAS sgemm on the operands widened to float); alpha and beta
//   are host floats; the result is rounded once to D's type (bf16: nearest even). With beta == 0, C
//   is not read.
//
// Checks made here, each failing with the status the header documents for it: attribute buffers of
// the wrong size (INVALID_VALUE), ld < rows, inconsistent shapes or batch counts (INVALID_VALUE),
// type combinations other than bf16 x bf16 -> bf16/fp32 and fp32 x fp32 -> fp32 with fp32 compute
// and scale types (NOT_SUPPORTED), requestedAlgoCount <= 0 (INVALID_VALUE), a null handle
// (NOT_INITIALIZED). Modelled beyond the documentation: an operand less aligned than the minimum
// alignment the heuristic was asked for (default 256 bytes) fails with NOT_SUPPORTED, and an
// operand that reaches outside its device allocation fails with EXECUTION_FAILED instead of
// reading stray memory. Not emulated (NOT_SUPPORTED): other orders, epilogues, device pointer
// modes, TRANSC != N. The emulator accepts only equal batch counts for A, B, C and D.
#pragma once

#include "bfloat16.hpp"
#include "runtime_api.hpp"
#include "types.hpp"

#include <cblas.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

namespace gemma3::cuda::emulator::api {

enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};

enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };

enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
using cudaDataType = cudaDataType_t;

enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 };

enum cublasLtOrder_t { CUBLASLT_ORDER_COL = 0 };
enum cublasLtPointerMode_t { CUBLASLT_POINTER_MODE_HOST = 0 };
enum cublasLtEpilogue_t { CUBLASLT_EPILOGUE_DEFAULT = 1 };

enum cublasLtMatmulDescAttributes_t {
    CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0,
    CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1,
    CUBLASLT_MATMUL_DESC_POINTER_MODE = 2,
    CUBLASLT_MATMUL_DESC_TRANSA = 3,
    CUBLASLT_MATMUL_DESC_TRANSB = 4,
    CUBLASLT_MATMUL_DESC_TRANSC = 5,
    CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
};

enum cublasLtMatrixLayoutAttribute_t {
    CUBLASLT_MATRIX_LAYOUT_TYPE = 0,
    CUBLASLT_MATRIX_LAYOUT_ORDER = 1,
    CUBLASLT_MATRIX_LAYOUT_ROWS = 2,
    CUBLASLT_MATRIX_LAYOUT_COLS = 3,
    CUBLASLT_MATRIX_LAYOUT_LD = 4,
    CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,
    CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6,
};

enum cublasLtMatmulPreferenceAttributes_t {
    CUBLASLT_MATMUL_PREF_SEARCH_MODE = 0,
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};

// The descriptors hold what the attributes set, in the attribute's documented type.
// A handle carries no state: detail::live_handles() knows which ones exist.
struct cublasLtContext {};
using cublasLtHandle_t = cublasLtContext*;

struct cublasLtMatrixLayoutOpaque_t {
    std::uint32_t type;
    std::int32_t order;
    std::uint64_t rows;
    std::uint64_t cols;
    std::int64_t ld;
    std::int32_t batch_count;
    std::int64_t batch_offset;
};
using cublasLtMatrixLayout_t = cublasLtMatrixLayoutOpaque_t*;

struct cublasLtMatmulDescOpaque_t {
    std::int32_t compute_type;
    std::int32_t scale_type;
    std::int32_t pointer_mode;
    std::int32_t transa;
    std::int32_t transb;
    std::int32_t transc;
    std::uint32_t epilogue;
};
using cublasLtMatmulDesc_t = cublasLtMatmulDescOpaque_t*;

struct cublasLtMatmulPreferenceOpaque_t {
    std::uint32_t search_mode;
    std::uint64_t max_workspace_bytes;
    std::uint32_t min_alignment[4];  // A, B, C, D
};
using cublasLtMatmulPreference_t = cublasLtMatmulPreferenceOpaque_t*;

struct cublasLtMatmulAlgo_t {
    std::uint64_t data[8];
};

struct cublasLtMatmulHeuristicResult_t {
    cublasLtMatmulAlgo_t algo;
    std::size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
};

}  // namespace gemma3::cuda::emulator::api

namespace gemma3::cuda::emulator::detail {

using namespace ::gemma3::cuda::emulator::api;

// The handles created and not yet destroyed: a destroyed handle is recognised without reading the
// memory it pointed to.
class LiveHandles {
public:
    void add(const cublasLtContext* handle) {
        std::lock_guard lock(mutex_);
        handles_.insert(handle);
    }
    bool remove(const cublasLtContext* handle) {
        std::lock_guard lock(mutex_);
        return handles_.erase(handle) == 1;
    }
    bool contains(const cublasLtContext* handle) {
        std::lock_guard lock(mutex_);
        return handles_.count(handle) == 1;
    }

private:
    std::mutex mutex_;
    std::unordered_set<const cublasLtContext*> handles_;
};
inline LiveHandles& live_handles() {
    static auto* handles = new LiveHandles();  // never destroyed: handles may outlive static destruction
    return *handles;
}

inline constexpr std::uint64_t algo_magic = 0x67656d6d61334167ull;  // "gemma3Ag"

inline cublasStatus_t blas_fail(cublasStatus_t status, std::string detail) {
    error_state().detail = std::move(detail);
    return status;
}

template <class Field>
cublasStatus_t set_attribute(Field& field, const void* buffer, std::size_t size, const char* call, const char* attribute) {
    if (buffer == nullptr) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, std::string(call) + "(" + attribute + "): null buffer");
    if (size != sizeof(Field))
        return blas_fail(CUBLAS_STATUS_INVALID_VALUE, std::string(call) + "(" + attribute + "): the attribute holds " +
                                                          std::to_string(sizeof(Field)) + " bytes, not " + std::to_string(size));
    std::memcpy(&field, buffer, sizeof(Field));
    return CUBLAS_STATUS_SUCCESS;
}

inline std::size_t element_bytes(std::uint32_t type) noexcept {
    return type == CUDA_R_32F ? 4 : (type == CUDA_R_16BF || type == CUDA_R_16F) ? 2 : 0;
}

inline bool transposed(std::int32_t op) noexcept { return op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

struct MatmulShape {
    std::uint64_t m, n, k;
};

// The checks cublasLtMatmulAlgoGetHeuristic and cublasLtMatmul share.
inline cublasStatus_t validate_matmul(const char* call, const cublasLtMatmulDescOpaque_t* desc,
                                      const cublasLtMatrixLayoutOpaque_t* a, const cublasLtMatrixLayoutOpaque_t* b,
                                      const cublasLtMatrixLayoutOpaque_t* c, const cublasLtMatrixLayoutOpaque_t* d,
                                      MatmulShape& shape) {
    const std::string name(call);
    if (desc == nullptr || a == nullptr || b == nullptr || c == nullptr || d == nullptr)
        return blas_fail(CUBLAS_STATUS_INVALID_VALUE, name + ": a descriptor is null");
    for (const std::int32_t op : {desc->transa, desc->transb})
        if (op != CUBLAS_OP_N && op != CUBLAS_OP_T && op != CUBLAS_OP_C)
            return blas_fail(CUBLAS_STATUS_INVALID_VALUE, name + ": transposition " + std::to_string(op) + " is not a cublasOperation_t");
    if (desc->transc != CUBLAS_OP_N)
        return blas_fail(CUBLAS_STATUS_NOT_SUPPORTED, name + ": TRANSC must be CUBLAS_OP_N");
    if (desc->pointer_mode != CUBLASLT_POINTER_MODE_HOST)
        return blas_fail(CUBLAS_STATUS_NOT_SUPPORTED, name + ": the emulator supports only host alpha/beta (CUBLASLT_POINTER_MODE_HOST)");
    if (desc->epilogue != CUBLASLT_EPILOGUE_DEFAULT)
        return blas_fail(CUBLAS_STATUS_NOT_SUPPORTED, name + ": the emulator supports only CUBLASLT_EPILOGUE_DEFAULT");
    const struct {
        const char* label;
        const cublasLtMatrixLayoutOpaque_t* layout;
    } matrices[] = {{"A", a}, {"B", b}, {"C", c}, {"D", d}};
    for (const auto& matrix : matrices) {
        const std::string label = name + ": matrix " + matrix.label;
        if (matrix.layout->order != CUBLASLT_ORDER_COL)
            return blas_fail(CUBLAS_STATUS_NOT_SUPPORTED, label + ": the emulator supports only CUBLASLT_ORDER_COL");
        if (matrix.layout->ld < 0 || (matrix.layout->rows > 0 && static_cast<std::uint64_t>(matrix.layout->ld) < matrix.layout->rows))
            return blas_fail(CUBLAS_STATUS_INVALID_VALUE, label + ": leading dimension " + std::to_string(matrix.layout->ld) +
                                                              " is smaller than its " + std::to_string(matrix.layout->rows) +
                                                              " rows (column-major)");
        if (matrix.layout->batch_count < 1)
            return blas_fail(CUBLAS_STATUS_INVALID_VALUE, label + ": batch count " + std::to_string(matrix.layout->batch_count));
        if (matrix.layout->batch_offset < 0)
            return blas_fail(CUBLAS_STATUS_INVALID_VALUE, label + ": negative batch offset");
        if (matrix.layout->batch_count != d->batch_count)
            return blas_fail(CUBLAS_STATUS_INVALID_VALUE, label + ": batch count " + std::to_string(matrix.layout->batch_count) +
                                                              " differs from D's " + std::to_string(d->batch_count));
    }
    const bool bf16_inputs = a->type == CUDA_R_16BF && b->type == CUDA_R_16BF && (d->type == CUDA_R_16BF || d->type == CUDA_R_32F);
    const bool fp32_inputs = a->type == CUDA_R_32F && b->type == CUDA_R_32F && d->type == CUDA_R_32F;
    const bool fp32_compute = desc->compute_type == CUBLAS_COMPUTE_32F || desc->compute_type == CUBLAS_COMPUTE_32F_FAST_TF32;
    if (!(bf16_inputs || fp32_inputs) || c->type != d->type || !fp32_compute || desc->scale_type != CUDA_R_32F)
        return blas_fail(CUBLAS_STATUS_NOT_SUPPORTED,
                         name + ": unsupported type combination (A " + std::to_string(a->type) + ", B " + std::to_string(b->type) +
                             ", C " + std::to_string(c->type) + ", D " + std::to_string(d->type) + ", compute " +
                             std::to_string(desc->compute_type) + ", scale " + std::to_string(desc->scale_type) + ")");
    const std::uint64_t a_rows = transposed(desc->transa) ? a->cols : a->rows;
    const std::uint64_t a_cols = transposed(desc->transa) ? a->rows : a->cols;
    const std::uint64_t b_rows = transposed(desc->transb) ? b->cols : b->rows;
    const std::uint64_t b_cols = transposed(desc->transb) ? b->rows : b->cols;
    if (a_cols != b_rows || a_rows != d->rows || b_cols != d->cols || c->rows != d->rows || c->cols != d->cols)
        return blas_fail(CUBLAS_STATUS_INVALID_VALUE,
                         name + ": shapes do not match: op(A) is " + std::to_string(a_rows) + "x" + std::to_string(a_cols) +
                             ", op(B) is " + std::to_string(b_rows) + "x" + std::to_string(b_cols) + ", C is " +
                             std::to_string(c->rows) + "x" + std::to_string(c->cols) + ", D is " + std::to_string(d->rows) +
                             "x" + std::to_string(d->cols));
    shape = MatmulShape{d->rows, d->cols, a_cols};
    return CUBLAS_STATUS_SUCCESS;
}

// Number of elements from the first to one past the last element of a (batched) layout.
inline std::uint64_t layout_extent(const cublasLtMatrixLayoutOpaque_t& layout) noexcept {
    if (layout.rows == 0 || layout.cols == 0) return 0;
    return static_cast<std::uint64_t>(layout.batch_count - 1) * static_cast<std::uint64_t>(layout.batch_offset) +
           (layout.cols - 1) * static_cast<std::uint64_t>(layout.ld) + layout.rows;
}

inline float load_element(const unsigned char* base, std::uint32_t type, std::uint64_t index) noexcept {
    if (type == CUDA_R_32F) {
        float value;
        std::memcpy(&value, base + index * 4, 4);
        return value;
    }
    unsigned short bits;
    std::memcpy(&bits, base + index * 2, 2);
    return bf16_bits::to_float(bits);
}

inline void store_element(unsigned char* base, std::uint32_t type, std::uint64_t index, float value) noexcept {
    if (type == CUDA_R_32F) {
        std::memcpy(base + index * 4, &value, 4);
        return;
    }
    const unsigned short bits = bf16_bits::from_float_rn(value);
    std::memcpy(base + index * 2, &bits, 2);
}

// Copies instance `batch` of a layout into a dense column-major float matrix (ld = rows).
inline void gather(const unsigned char* base, const cublasLtMatrixLayoutOpaque_t& layout, std::int64_t batch,
                   std::vector<float>& dense) {
    dense.resize(layout.rows * layout.cols);
    const std::uint64_t start = static_cast<std::uint64_t>(batch) * static_cast<std::uint64_t>(layout.batch_offset);
    for (std::uint64_t col = 0; col < layout.cols; ++col)
        for (std::uint64_t row = 0; row < layout.rows; ++row)
            dense[col * layout.rows + row] =
                load_element(base, layout.type, start + col * static_cast<std::uint64_t>(layout.ld) + row);
}

}  // namespace gemma3::cuda::emulator::detail

namespace gemma3::cuda::emulator::api {

inline const char* cublasLtGetStatusName(cublasStatus_t status) noexcept {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

inline const char* cublasLtGetStatusString(cublasStatus_t status) noexcept {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS: return "success";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
        case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
        case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
        case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    }
    return "unknown error";
}

inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
    if (handle == nullptr) return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtCreate: null output pointer");
    *handle = new cublasLtContext{};
    detail::live_handles().add(*handle);
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
    if (!detail::live_handles().remove(handle))
        return detail::blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtDestroy: not a live handle");
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute_type,
                                               cudaDataType_t scale_type) {
    if (desc == nullptr) return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescCreate: null output pointer");
    *desc = new cublasLtMatmulDescOpaque_t{compute_type, scale_type, CUBLASLT_POINTER_MODE_HOST,
                                           CUBLAS_OP_N,  CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT};
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute,
                                                     const void* buffer, std::size_t size) {
    constexpr const char* call = "cublasLtMatmulDescSetAttribute";
    if (desc == nullptr) return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE, std::string(call) + ": null descriptor");
    switch (attribute) {
        case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return detail::set_attribute(desc->compute_type, buffer, size, call, "COMPUTE_TYPE");
        case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return detail::set_attribute(desc->scale_type, buffer, size, call, "SCALE_TYPE");
        case CUBLASLT_MATMUL_DESC_POINTER_MODE: return detail::set_attribute(desc->pointer_mode, buffer, size, call, "POINTER_MODE");
        case CUBLASLT_MATMUL_DESC_TRANSA: return detail::set_attribute(desc->transa, buffer, size, call, "TRANSA");
        case CUBLASLT_MATMUL_DESC_TRANSB: return detail::set_attribute(desc->transb, buffer, size, call, "TRANSB");
        case CUBLASLT_MATMUL_DESC_TRANSC: return detail::set_attribute(desc->transc, buffer, size, call, "TRANSC");
        case CUBLASLT_MATMUL_DESC_EPILOGUE: return detail::set_attribute(desc->epilogue, buffer, size, call, "EPILOGUE");
    }
    return detail::blas_fail(CUBLAS_STATUS_NOT_SUPPORTED, std::string(call) + ": attribute " + std::to_string(attribute) + " is not emulated");
}

inline cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, std::uint64_t rows,
                                                 std::uint64_t cols, std::int64_t ld) {
    if (layout == nullptr) return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutCreate: null output pointer");
    *layout = new cublasLtMatrixLayoutOpaque_t{static_cast<std::uint32_t>(type), CUBLASLT_ORDER_COL, rows, cols, ld, 1, 0};
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attribute,
                                                       const void* buffer, std::size_t size) {
    constexpr const char* call = "cublasLtMatrixLayoutSetAttribute";
    if (layout == nullptr) return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE, std::string(call) + ": null layout");
    switch (attribute) {
        case CUBLASLT_MATRIX_LAYOUT_TYPE: return detail::set_attribute(layout->type, buffer, size, call, "TYPE");
        case CUBLASLT_MATRIX_LAYOUT_ORDER: return detail::set_attribute(layout->order, buffer, size, call, "ORDER");
        case CUBLASLT_MATRIX_LAYOUT_ROWS: return detail::set_attribute(layout->rows, buffer, size, call, "ROWS");
        case CUBLASLT_MATRIX_LAYOUT_COLS: return detail::set_attribute(layout->cols, buffer, size, call, "COLS");
        case CUBLASLT_MATRIX_LAYOUT_LD: return detail::set_attribute(layout->ld, buffer, size, call, "LD");
        case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return detail::set_attribute(layout->batch_count, buffer, size, call, "BATCH_COUNT");
        case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET:
            return detail::set_attribute(layout->batch_offset, buffer, size, call, "STRIDED_BATCH_OFFSET");
    }
    return detail::blas_fail(CUBLAS_STATUS_NOT_SUPPORTED, std::string(call) + ": attribute " + std::to_string(attribute) + " is not emulated");
}

inline cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* preference) {
    if (preference == nullptr)
        return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceCreate: null output pointer");
    *preference = new cublasLtMatmulPreferenceOpaque_t{0, 0, {256, 256, 256, 256}};
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t preference) {
    delete preference;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t preference,
                                                           cublasLtMatmulPreferenceAttributes_t attribute, const void* buffer,
                                                           std::size_t size) {
    constexpr const char* call = "cublasLtMatmulPreferenceSetAttribute";
    if (preference == nullptr) return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE, std::string(call) + ": null preference");
    switch (attribute) {
        case CUBLASLT_MATMUL_PREF_SEARCH_MODE: return detail::set_attribute(preference->search_mode, buffer, size, call, "SEARCH_MODE");
        case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
            return detail::set_attribute(preference->max_workspace_bytes, buffer, size, call, "MAX_WORKSPACE_BYTES");
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
            return detail::set_attribute(preference->min_alignment[0], buffer, size, call, "MIN_ALIGNMENT_A_BYTES");
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
            return detail::set_attribute(preference->min_alignment[1], buffer, size, call, "MIN_ALIGNMENT_B_BYTES");
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
            return detail::set_attribute(preference->min_alignment[2], buffer, size, call, "MIN_ALIGNMENT_C_BYTES");
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
            return detail::set_attribute(preference->min_alignment[3], buffer, size, call, "MIN_ALIGNMENT_D_BYTES");
    }
    return detail::blas_fail(CUBLAS_STATUS_NOT_SUPPORTED, std::string(call) + ": attribute " + std::to_string(attribute) + " is not emulated");
}

inline cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                                     cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                                     cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                                     cublasLtMatmulPreference_t preference, int requested,
                                                     cublasLtMatmulHeuristicResult_t results[], int* returned) {
    constexpr const char* call = "cublasLtMatmulAlgoGetHeuristic";
    if (!detail::live_handles().contains(handle))
        return detail::blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, std::string(call) + ": not a live handle");
    if (requested <= 0 || results == nullptr || returned == nullptr || preference == nullptr)
        return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE,
                                 std::string(call) + ": requestedAlgoCount must be positive and the output arrays non-null");
    *returned = 0;
    detail::MatmulShape shape{};
    if (const cublasStatus_t status = detail::validate_matmul(call, desc, a, b, c, d, shape); status != CUBLAS_STATUS_SUCCESS)
        return status;
    cublasLtMatmulHeuristicResult_t result{};
    result.algo.data[0] = detail::algo_magic;
    for (int i = 0; i < 4; ++i) result.algo.data[1 + i] = preference->min_alignment[i];
    result.workspaceSize = 0;
    result.state = CUBLAS_STATUS_SUCCESS;
    result.wavesCount = 1.0f;
    results[0] = result;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* a_data,
                                     cublasLtMatrixLayout_t a, const void* b_data, cublasLtMatrixLayout_t b, const void* beta,
                                     const void* c_data, cublasLtMatrixLayout_t c, void* d_data, cublasLtMatrixLayout_t d,
                                     const cublasLtMatmulAlgo_t* algo, void* workspace, std::size_t workspace_bytes,
                                     cudaStream_t stream) {
    constexpr const char* call = "cublasLtMatmul";
    const std::string name(call);
    (void)workspace;
    (void)workspace_bytes;  // the emulated algorithm needs no workspace
    if (!detail::live_handles().contains(handle))
        return detail::blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, name + ": not a live handle");
    detail::MatmulShape shape{};
    if (const cublasStatus_t status = detail::validate_matmul(call, desc, a, b, c, d, shape); status != CUBLAS_STATUS_SUCCESS)
        return status;
    if (alpha == nullptr || beta == nullptr) return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE, name + ": alpha or beta is null");
    if (!detail::stream_registry().valid(stream))
        return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE, name + ": the stream is not a live stream");
    if (algo != nullptr && algo->data[0] != detail::algo_magic)
        return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE, name + ": algo was not produced by cublasLtMatmulAlgoGetHeuristic");
    float alpha_value;
    float beta_value;
    std::memcpy(&alpha_value, alpha, sizeof alpha_value);
    std::memcpy(&beta_value, beta, sizeof beta_value);
    const struct {
        const char* label;
        const void* data;
        const cublasLtMatrixLayoutOpaque_t* layout;
        bool read;
    } operands[] = {{"A", a_data, a, true}, {"B", b_data, b, true}, {"C", c_data, c, beta_value != 0.0f}, {"D", d_data, d, true}};
    for (int i = 0; i < 4; ++i) {
        const auto& operand = operands[i];
        const std::uint64_t extent = detail::layout_extent(*operand.layout);
        if (extent == 0 || !operand.read) continue;
        const std::size_t element = detail::element_bytes(operand.layout->type);
        const auto address = reinterpret_cast<std::uintptr_t>(operand.data);
        if (operand.data == nullptr || address % element != 0)
            return detail::blas_fail(CUBLAS_STATUS_INVALID_VALUE,
                                     name + ": matrix " + operand.label + " pointer is null or not aligned to its element size");
        const std::uint64_t required = algo != nullptr ? algo->data[1 + i] : 1;
        if (required > 1 && address % required != 0)
            return detail::blas_fail(CUBLAS_STATUS_NOT_SUPPORTED,
                                     name + ": matrix " + operand.label + " is less aligned than the " + std::to_string(required) +
                                         " bytes the algorithm was chosen for (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*)");
        if (!detail::memory_registry().contains(operand.data, extent * element))
            return detail::blas_fail(CUBLAS_STATUS_EXECUTION_FAILED,
                                     name + ": matrix " + operand.label + " (" + std::to_string(operand.layout->rows) + "x" +
                                         std::to_string(operand.layout->cols) + ", ld " + std::to_string(operand.layout->ld) +
                                         ", " + std::to_string(operand.layout->batch_count) + " instances " +
                                         std::to_string(operand.layout->batch_offset) +
                                         " elements apart) reaches outside its device allocation");
    }
    const std::uint64_t m = shape.m, n = shape.n, k = shape.k;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    std::vector<float> dense_a, dense_b, dense_c, result(m * n);
    const auto* a_bytes = static_cast<const unsigned char*>(a_data);
    const auto* b_bytes = static_cast<const unsigned char*>(b_data);
    const auto* c_bytes = static_cast<const unsigned char*>(c_data);
    auto* d_bytes = static_cast<unsigned char*>(d_data);
    for (std::int32_t instance = 0; instance < d->batch_count; ++instance) {
        if (beta_value != 0.0f) {
            detail::gather(c_bytes, *c, instance, dense_c);
            for (std::uint64_t i = 0; i < m * n; ++i) result[i] = beta_value * dense_c[i];
        } else {
            std::fill(result.begin(), result.end(), 0.0f);  // C is not read when beta is zero
        }
        if (k > 0) {
            detail::gather(a_bytes, *a, instance, dense_a);
            detail::gather(b_bytes, *b, instance, dense_b);
            cblas_sgemm(CblasColMajor, detail::transposed(desc->transa) ? CblasTrans : CblasNoTrans,
                        detail::transposed(desc->transb) ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
                        static_cast<blasint>(n), static_cast<blasint>(k), alpha_value, dense_a.data(),
                        static_cast<blasint>(std::max<std::uint64_t>(1, a->rows)), dense_b.data(),
                        static_cast<blasint>(std::max<std::uint64_t>(1, b->rows)), 1.0f, result.data(),
                        static_cast<blasint>(m));
        }
        const std::uint64_t start = static_cast<std::uint64_t>(instance) * static_cast<std::uint64_t>(d->batch_offset);
        for (std::uint64_t col = 0; col < n; ++col)
            for (std::uint64_t row = 0; row < m; ++row)
                detail::store_element(d_bytes, d->type, start + col * static_cast<std::uint64_t>(d->ld) + row,
                                      result[col * m + row]);
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace gemma3::cuda::emulator::api
