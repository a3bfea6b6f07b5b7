// The large matrix products: gemm() over row-major views, in float, double or bfloat16 inputs.
//
// Engine (chosen at build time, cmake/gemma3Blas.cmake):
//  - oneDNN (default, GEMMA3_HAVE_ONEDNN): float and bfloat16 products. oneDNN picks its kernels from
//    the CPU's features at run time (AVX-512, AVX512_BF16, AMX...), so the speed does not depend on how
//    OpenBLAS was told to dispatch (OPENBLAS_CORETYPE). Its fp32 matmul runs ~2x OpenBLAS's Haswell
//    kernels on the machines of docs/design.md; its bf16 speed depends on the CPU (twice fp32 on the
//    AMD Zen 5 machines, half of it on an Intel Xeon with AVX512_BF16 and no AMX, where the widened
//    kernel below runs bf16 products instead). Debian's oneDNN uses OpenMP, so it shares our threads.
//  - CBLAS (OpenBLAS): double always (oneDNN has no f64 matmul on CPUs), float too when oneDNN is off,
//    and matrix-vector products (one token at a time) except the one decoding uses most.
//  - bf16 products have two kernels (Bf16Kernel, below): oneDNN's native bf16 one, or each operand
//    block widened to fp32 (exact) and the fp32 kernel; the faster on this CPU is timed once.
//  - Hand-written: the float one-row product against a row-major weight (y = W x, decoding's every
//    projection), on CPUs with AVX-512. It reads the weights at memory bandwidth, where OpenBLAS's
//    sgemv with the environment's Haswell kernels did not: the seed's 73 matrices, 2 threads, 14 GB/s
//    (OpenBLAS), 19 (oneDNN matmul, M = 1), 30 (this kernel); fp32 decoding went from 25 to 48-51
//    tokens/s. ops/packed_linear.hpp has its bf16 and int8 siblings.
// A oneDNN matmul primitive is created once per (shape, transposes, strides, types, alpha, beta) and
// cached per thread; creating one costs far more than a small product.
#pragma once

#include <gemma3/core/bf16_bits.hpp>
#include <gemma3/core/tensor.hpp>

#include <cblas.h>
#ifdef GEMMA3_HAVE_ONEDNN
// oneDNN's C API: its C++ header (dnnl.hpp) crashes the front end of nvcc 13 in C++20 mode, and the
// CUDA translation units include this header for the CPU reference model.
#include <dnnl.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define GEMMA3_X86_KERNELS 1  // hand-written AVX-512 kernels, chosen at run time (cpu_has_avx512)
#else
#define GEMMA3_X86_KERNELS 0
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>

namespace gemma3 {

enum class Op { none, transpose };

// bfloat16 storage: Eigen's type (round to nearest even on conversion from float).
using bf16 = Eigen::bfloat16;

// Which engine computes float and bfloat16 products in this build, and the instruction set oneDNN
// dispatches to on this CPU (e.g. "avx512_core_bf16"); for benchmarks and logs.
inline std::string gemm_engine_name();

// How products with bf16 inputs are computed. Both multiply the same bf16 values exactly and
// accumulate in fp32; they differ only in the order of the fp32 additions.
//  - native: oneDNN's bf16 kernels (AVX512_BF16 dot products, or AMX tiles).
//  - widened: each operand block widened to fp32 (exact) into scratch, then the fp32 kernel.
// Native wins where bf16 dot products issue at twice the FMA rate (AMD Zen 4/5; AMX). Some cores
// issue them at the FMA rate or below: on the Intel Xeon of docs/design.md oneDNN's bf16 kernel ran
// at 84 GFLOP/s per core against 152 in fp32, and widening at 130-143.
//  - automatic (the default): GEMMA3_BF16_KERNEL=native|widened if set, else widened without native
//    bf16 instructions, else whichever of the two a short timing finds faster (once per process).
enum class Bf16Kernel { automatic, native, widened };

// The kernel bf16 products use from now on, for every thread (tests; users who want one of them).
inline void set_bf16_kernel(Bf16Kernel kernel);
// The kernel bf16 products use: native or widened, never automatic.
inline Bf16Kernel bf16_kernel();

namespace detail {

#if GEMMA3_X86_KERNELS
inline bool cpu_has_avx512() {
    static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    return yes;
}

// How far ahead of its loads a one-row kernel asks for weights. The rows are read in address order,
// and the hardware prefetcher alone leaves the kernels waiting on DRAM: sweeping all of the seed's
// int8 matrices on one core read 9.4 GB/s with 2 KB ahead, 12.5 with 8 KB, no better with 16-32 KB
// (docs/design.md §6). Prefetches past the end never fault.
inline constexpr int prefetch_bytes = 8192;

// GCC 12 warns inside its own AVX-512 intrinsics (GCC bug 105593: an intentionally undefined vector);
// the pragma covers the inlining sites, so users' -Werror builds stay clean.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
// y[r] = alpha * (W[r, :] . x) (+ beta * y[r]) for rows [r0, r1) of a row-major W (row stride ld):
// four rows share each load of x, 16 columns per fused multiply-add, fp32 accumulation.
__attribute__((target("avx512f"))) inline void matvec_f32_avx512(const float* w, Index ld, Index cols, Index r0, Index r1,
                                                                 const float* x, float alpha, float beta, float* y) {
    const Index full = cols / 16 * 16;
    const auto finish = [&](Index r, float sum) {
        for (Index c = full; c < cols; ++c) sum += w[r * ld + c] * x[c];
        y[r] = beta == 0.0f ? alpha * sum : alpha * sum + beta * y[r];
    };
    Index r = r0;
    for (; r + 4 <= r1; r += 4) {
        __m512 acc[4];
        for (int i = 0; i < 4; ++i) acc[i] = _mm512_setzero_ps();
        for (Index c = 0; c < full; c += 16) {
            const __m512 xv = _mm512_loadu_ps(x + c);
            for (int i = 0; i < 4; ++i) {
                const float* p = w + (r + i) * ld + c;
                _mm_prefetch(reinterpret_cast<const char*>(p) + prefetch_bytes, _MM_HINT_T0);
                acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(p), xv, acc[i]);
            }
        }
        for (int i = 0; i < 4; ++i) finish(r + i, _mm512_reduce_add_ps(acc[i]));
    }
    for (; r < r1; ++r) {
        __m512 acc = _mm512_setzero_ps();
        for (Index c = 0; c < full; c += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(w + r * ld + c), _mm512_loadu_ps(x + c), acc);
        finish(r, _mm512_reduce_add_ps(acc));
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

#ifdef GEMMA3_HAVE_ONEDNN
// Throws naming the oneDNN call that failed.
inline void onednn_check(dnnl_status_t status, const char* call) {
    if (status != dnnl_success) {
        throw std::runtime_error(std::string("oneDNN: ") + call + " failed with status " +
                                 std::to_string(static_cast<int>(status)));
    }
}

// Owns a oneDNN handle (primitive, stream, memory, ...) and destroys it with `destroy`.
template <class Handle, dnnl_status_t (*destroy)(Handle)>
class OnednnHandle {
public:
    OnednnHandle() = default;
    explicit OnednnHandle(Handle h) : h_(h) {}
    OnednnHandle(OnednnHandle&& other) noexcept : h_(std::exchange(other.h_, nullptr)) {}
    OnednnHandle& operator=(OnednnHandle&& other) noexcept {
        std::swap(h_, other.h_);
        return *this;
    }
    OnednnHandle(const OnednnHandle&) = delete;
    OnednnHandle& operator=(const OnednnHandle&) = delete;
    ~OnednnHandle() {
        if (h_) destroy(h_);
    }
    Handle get() const { return h_; }

private:
    Handle h_ = nullptr;
};
using OnednnPrimitive = OnednnHandle<dnnl_primitive_t, dnnl_primitive_destroy>;
using OnednnPrimitiveDesc = OnednnHandle<dnnl_primitive_desc_t, dnnl_primitive_desc_destroy>;
using OnednnAttr = OnednnHandle<dnnl_primitive_attr_t, dnnl_primitive_attr_destroy>;
using OnednnPostOps = OnednnHandle<dnnl_post_ops_t, dnnl_post_ops_destroy>;
using OnednnStream = OnednnHandle<dnnl_stream_t, dnnl_stream_destroy>;
using OnednnMemory = OnednnHandle<dnnl_memory_t, dnnl_memory_destroy>;

// The CPU engine, made once and kept for the life of the process (oneDNN's primitives refer to it).
inline dnnl_engine_t onednn_engine() {
    static const dnnl_engine_t engine = [] {
        dnnl_engine_t e = nullptr;
        onednn_check(dnnl_engine_create(&e, dnnl_cpu, 0), "dnnl_engine_create");
        return e;
    }();
    return engine;
}

struct MatmulKey {
    std::array<std::int64_t, 8> dims{};  // m, n, k, lda, ldb, ldc, transposes | types, alpha/beta bits
    bool operator==(const MatmulKey&) const = default;
};
struct MatmulKeyHash {
    std::size_t operator()(const MatmulKey& key) const {
        std::size_t h = 0;
        for (const auto v : key.dims) h = h * 1000003u ^ static_cast<std::size_t>(v);
        return h;
    }
};

// A row-major [rows, cols] matrix with leading dimension ld, or its transpose view.
inline dnnl_memory_desc_t onednn_matrix(Index rows, Index cols, dnnl_data_type_t type, bool transposed, Index ld) {
    dnnl_memory_desc_t md;
    const dnnl_dims_t dims = {rows, cols};
    const dnnl_dims_t strides = {transposed ? 1 : ld, transposed ? ld : 1};
    onednn_check(dnnl_memory_desc_init_by_strides(&md, 2, dims, type, strides), "dnnl_memory_desc_init_by_strides");
    return md;
}

// c [m, n] (fp32, row-major, stride ldc) = alpha op(a) op(b) + beta c, with
// op(a) [m, k] and op(b) [k, n] of element type `in` (dnnl_f32 or dnnl_bf16).
inline void onednn_matmul(dnnl_data_type_t in, const void* a, bool trans_a, Index lda, const void* b, bool trans_b,
                          Index ldb, float* c, Index ldc, Index m, Index n, Index k, float alpha, float beta) {
    std::uint32_t alpha_bits, beta_bits;
    static_assert(sizeof(float) == sizeof(std::uint32_t));
    std::memcpy(&alpha_bits, &alpha, sizeof alpha);
    std::memcpy(&beta_bits, &beta, sizeof beta);
    const MatmulKey key{{m, n, k, lda, ldb, ldc,
                         (trans_a ? 1 : 0) | (trans_b ? 2 : 0) | (static_cast<std::int64_t>(in) << 2),
                         (static_cast<std::int64_t>(alpha_bits) << 32) | beta_bits}};
    const dnnl_memory_desc_t a_md = onednn_matrix(m, k, in, trans_a, lda);
    const dnnl_memory_desc_t b_md = onednn_matrix(k, n, in, trans_b, ldb);
    const dnnl_memory_desc_t c_md = onednn_matrix(m, n, dnnl_f32, false, ldc);
    const auto engine = onednn_engine();
    thread_local std::unordered_map<MatmulKey, OnednnPrimitive, MatmulKeyHash> cache;
    auto it = cache.find(key);
    if (it == cache.end()) {
        dnnl_primitive_attr_t raw_attr = nullptr;
        onednn_check(dnnl_primitive_attr_create(&raw_attr), "dnnl_primitive_attr_create");
        const OnednnAttr attr(raw_attr);
        if (alpha != 1.0f) {
            onednn_check(dnnl_primitive_attr_set_output_scales(attr.get(), 1, 0, &alpha),
                         "dnnl_primitive_attr_set_output_scales");
        }
        if (beta != 0.0f) {
            dnnl_post_ops_t raw_ops = nullptr;
            onednn_check(dnnl_post_ops_create(&raw_ops), "dnnl_post_ops_create");
            const OnednnPostOps ops(raw_ops);
            onednn_check(dnnl_post_ops_append_sum(ops.get(), beta), "dnnl_post_ops_append_sum");
            onednn_check(dnnl_primitive_attr_set_post_ops(attr.get(), ops.get()), "dnnl_primitive_attr_set_post_ops");
        }
        dnnl_matmul_desc_t desc;
        onednn_check(dnnl_matmul_desc_init(&desc, &a_md, &b_md, nullptr, &c_md), "dnnl_matmul_desc_init");
        dnnl_primitive_desc_t raw_pd = nullptr;
        onednn_check(dnnl_primitive_desc_create(&raw_pd, &desc, attr.get(), engine, nullptr),
                     "dnnl_primitive_desc_create (matmul)");
        const OnednnPrimitiveDesc pd(raw_pd);
        dnnl_primitive_t primitive = nullptr;
        onednn_check(dnnl_primitive_create(&primitive, pd.get()), "dnnl_primitive_create (matmul)");
        it = cache.emplace(key, OnednnPrimitive(primitive)).first;
    }
    thread_local const OnednnStream stream = [&] {
        dnnl_stream_t s = nullptr;
        onednn_check(dnnl_stream_create(&s, engine, dnnl_stream_default_flags), "dnnl_stream_create");
        return OnednnStream(s);
    }();
    const auto wrap = [&](const dnnl_memory_desc_t& md, const void* data) {
        dnnl_memory_t memory = nullptr;
        onednn_check(dnnl_memory_create(&memory, &md, engine, const_cast<void*>(data)), "dnnl_memory_create");
        return OnednnMemory(memory);
    };
    const OnednnMemory a_mem = wrap(a_md, a), b_mem = wrap(b_md, b), c_mem = wrap(c_md, c);
    const dnnl_exec_arg_t args[] = {
        {DNNL_ARG_SRC, a_mem.get()}, {DNNL_ARG_WEIGHTS, b_mem.get()}, {DNNL_ARG_DST, c_mem.get()}};
    onednn_check(dnnl_primitive_execute(it->second.get(), stream.get(), 3, args), "dnnl_primitive_execute (matmul)");
    onednn_check(dnnl_stream_wait(stream.get()), "dnnl_stream_wait");
}
#endif

}  // namespace detail

// A float matrix whose values are bf16 values already (rounded once where they were made, e.g. by
// with_bf16_values below): the bf16 products read it as it is, where they round a plain float
// operand on the way in. Only the type differs from ConstMatrixView<float>.
class Bf16Values : public ConstMatrixView<float> {
public:
    explicit Bf16Values(const ConstMatrixView<float>& values) : ConstMatrixView<float>(values) {}
};

namespace detail {

// Throws unless op(a) [m, k] times op(b) [k, n] gives c's [m, n].
template <class A, class B, class C>
void check_gemm_shapes(const A& a, Op op_a, const B& b, Op op_b, const C& c) {
    const Index m = op_a == Op::none ? a.rows() : a.cols();
    const Index k = op_a == Op::none ? a.cols() : a.rows();
    const Index k_b = op_b == Op::none ? b.rows() : b.cols();
    const Index n = op_b == Op::none ? b.cols() : b.rows();
    if (k != k_b || c.rows() != m || c.cols() != n) {
        throw std::logic_error("gemm: shape mismatch: op(a) is " + std::to_string(m) + "x" + std::to_string(k) +
                               ", op(b) is " + std::to_string(k_b) + "x" + std::to_string(n) + ", c is " +
                               std::to_string(c.rows()) + "x" + std::to_string(c.cols()));
    }
}

// The widened bf16 product (Bf16Kernel::widened), defined below gemm(), which it calls in fp32.
// Operands in bf16, in float to be rounded to bf16, or Bf16Values (taken as they are).
template <class A, class B, class C>
void gemm_widened(const A& a, Op op_a, const B& b, Op op_b, C&& c, float alpha, float beta, Index budget);

// Elements of widened fp32 scratch one widened product may hold, both operands together (4 MB).
// Larger products are cut into blocks (the tied head's [vocab, width] weight is 128 MB in fp32), at
// no cost in speed measured on the seed, so that bf16 training holds no more memory than fp32's.
inline constexpr Index widen_budget = Index{1} << 20;

}  // namespace detail

// c = alpha * op(a) * op(b) + beta * c. The arguments are row-major Eigen matrices or views
// (anything with data(), rows(), cols() and outerStride()); c must be writable. Scalar types:
// all float, all double, or a and b in bf16 with c in float (the mixed-precision product: bf16
// inputs, fp32 accumulation and output).
template <class A, class B, class C>
void gemm(const A& a, Op op_a, const B& b, Op op_b, C&& c, typename std::remove_cvref_t<C>::Scalar alpha = 1,
          typename std::remove_cvref_t<C>::Scalar beta = 0) {
    using T = typename std::remove_cvref_t<C>::Scalar;
    using In = typename std::remove_cvref_t<A>::Scalar;
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "gemm: float or double output");
    static_assert(std::is_same_v<typename std::remove_cvref_t<B>::Scalar, In> &&
                      (std::is_same_v<In, T> || (std::is_same_v<In, bf16> && std::is_same_v<T, float>)),
                  "gemm: operands must all be float, all double, or bf16 inputs with a float output");
    static_assert(std::remove_cvref_t<A>::IsRowMajor && std::remove_cvref_t<B>::IsRowMajor &&
                      std::remove_cvref_t<C>::IsRowMajor,
                  "gemm: row-major operands expected");
    detail::check_gemm_shapes(a, op_a, b, op_b, c);
    const Index m = c.rows(), n = c.cols(), k = op_a == Op::none ? a.cols() : a.rows();
    if (m == 0 || n == 0) return;
    if (k == 0) {  // BLAS would leave c untouched; the product of empty matrices is zero
        if (beta == T(0)) {
            c.setZero();
        } else {
            c *= beta;
        }
        return;
    }
    if constexpr (std::is_same_v<In, bf16>) {
#ifdef GEMMA3_HAVE_ONEDNN
        if (bf16_kernel() == Bf16Kernel::native) {
            detail::onednn_matmul(dnnl_bf16, a.data(), op_a == Op::transpose, a.outerStride(), b.data(),
                                  op_b == Op::transpose, b.outerStride(), c.data(), c.outerStride(), m, n, k, alpha, beta);
            return;
        }
#endif
        detail::gemm_widened(a, op_a, b, op_b, c, alpha, beta, detail::widen_budget);
        return;
    } else {
        if (m == 1) {
#if GEMMA3_X86_KERNELS
            if constexpr (std::is_same_v<T, float>) {
                if (op_a == Op::none && op_b == Op::transpose && detail::cpu_has_avx512()) {
                    // y = W x, W = b [n, k] row-major: rows split across threads in groups of 64;
                    // small products stay on one thread, where a parallel region costs more.
                    constexpr Index group = 64;
                    const Index groups = (n + group - 1) / group;
                    [[maybe_unused]] const bool parallel = n * k >= (Index{1} << 18);
#pragma omp parallel for schedule(static) if (parallel)
                    for (Index g = 0; g < groups; ++g) {
                        detail::matvec_f32_avx512(b.data(), b.outerStride(), k, g * group, std::min(n, (g + 1) * group), a.data(),
                                                  alpha, beta, c.data());
                    }
                    return;
                }
            }
#endif
            // A single row (decoding one token): a matrix-vector product, which BLAS does near memory
            // bandwidth, while a 1-row sgemm pays for packing the whole of b.
            const auto rows_b = static_cast<blasint>(b.rows()), cols_b = static_cast<blasint>(b.cols());
            const auto tb_gemv = op_b == Op::none ? CblasTrans : CblasNoTrans;  // y = op(b)^T x
            const auto ldb = static_cast<blasint>(b.outerStride());
            const auto inc_x = static_cast<blasint>(op_a == Op::none ? 1 : a.outerStride());
            if constexpr (std::is_same_v<T, float>) {
                cblas_sgemv(CblasRowMajor, tb_gemv, rows_b, cols_b, alpha, b.data(), ldb, a.data(), inc_x, beta, c.data(), 1);
            } else {
                cblas_dgemv(CblasRowMajor, tb_gemv, rows_b, cols_b, alpha, b.data(), ldb, a.data(), inc_x, beta, c.data(), 1);
            }
            return;
        }
        const auto ta = op_a == Op::none ? CblasNoTrans : CblasTrans;
        const auto tb = op_b == Op::none ? CblasNoTrans : CblasTrans;
        const auto lda = static_cast<blasint>(a.outerStride());
        const auto ldb = static_cast<blasint>(b.outerStride());
        const auto ldc = static_cast<blasint>(c.outerStride());
        if constexpr (std::is_same_v<T, float>) {
#ifdef GEMMA3_HAVE_ONEDNN
            detail::onednn_matmul(dnnl_f32, a.data(), op_a == Op::transpose, a.outerStride(),
                                  b.data(), op_b == Op::transpose, b.outerStride(), c.data(), c.outerStride(), m, n, k,
                                  alpha, beta);
#else
            cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(m), static_cast<blasint>(n),
                        static_cast<blasint>(k), alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
#endif
        } else {
            cblas_dgemm(CblasRowMajor, ta, tb, static_cast<blasint>(m), static_cast<blasint>(n),
                        static_cast<blasint>(k), alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
        }
    }
}

namespace detail {

// A [rows, cols] block at (r0, c0) of a row-major matrix with leading dimension ld.
template <class S>
ConstMatrixView<S> block_of(const S* data, Index ld, Index r0, Index c0, Index rows, Index cols) {
    return {data + r0 * ld + c0, rows, cols, Eigen::OuterStride<>(ld)};
}
template <class S>
MatrixView<S> block_of(S* data, Index ld, Index r0, Index c0, Index rows, Index cols) {
    return {data + r0 * ld + c0, rows, cols, Eigen::OuterStride<>(ld)};
}
// The same block of a view, keeping its type (a block of Bf16Values holds bf16 values too).
template <class V>
auto block_of(const V& m, Index r0, Index c0, Index rows, Index cols) {
    const auto block = block_of(m.data(), m.outerStride(), r0, c0, rows, cols);
    if constexpr (std::is_same_v<V, Bf16Values>) {
        return Bf16Values(block);
    } else {
        return block;
    }
}

// out [rows, cols] (contiguous) = convert(m's element), row by row, the rows split between the
// threads when there are enough of them; a memory-bound pass, which each bf16 conversion below is.
template <class V, class Out, class F>
void convert_rows(const V& m, Out* out, F convert) {
    const Index rows = m.rows(), cols = m.cols();
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16))
    for (Index r = 0; r < rows; ++r) {
        const auto* in = m.data() + r * m.outerStride();
        Out* out_row = out + r * cols;
        for (Index c = 0; c < cols; ++c) out_row[c] = convert(in[c]);
    }
}

// `m` (float) rounded to bf16 values (nearest even), kept in fp32 in `scratch` (resized).
template <class V>
Bf16Values round_to_bf16_values(const V& m, Buffer<float>& scratch) {
    static_assert(std::is_same_v<typename V::Scalar, float>);
    scratch.resize(static_cast<std::size_t>(m.size()));
    convert_rows(m, scratch.data(), [](float x) { return round_to_bf16_value(x); });
    return Bf16Values(const_view(scratch.data(), m.rows(), m.cols()));
}

// `m`'s bf16 values in fp32 as a contiguous view: a bf16 `m` widened (exact) into `scratch`, a
// float one rounded into it, Bf16Values as they are.
template <class V>
ConstMatrixView<float> widen_to_float(const V& m, Buffer<float>& scratch) {
    using S = typename V::Scalar;
    if constexpr (std::is_same_v<V, Bf16Values>) {
        return m;
    } else if constexpr (std::is_same_v<S, float>) {
        return round_to_bf16_values(m, scratch);
    } else {
        static_assert(std::is_same_v<S, bf16>);
        scratch.resize(static_cast<std::size_t>(m.size()));
        // On the bits: twice the speed of Eigen's bfloat16 -> float conversion, which does not vectorize.
        convert_rows(m, scratch.data(), [](bf16 x) { return bf16_to_float(Eigen::numext::bit_cast<std::uint16_t>(x)); });
        return const_view(scratch.data(), m.rows(), m.cols());
    }
}

// The widened kernel's fp32 scratch, one pair per thread shared by every operand type (a
// thread_local inside the template would be one pair per instantiation, each kept at its largest).
struct WidenScratch {
    Buffer<float> a, b;
};
inline WidenScratch& widen_scratch() {
    thread_local WidenScratch scratch;
    return scratch;
}

// Bf16Kernel::widened, for operands in bf16 or in float (then rounded to bf16 on the way in), or
// Bf16Values (read in place). When the operands to widen would hold more than `budget` elements,
// the longest of their dimensions is halved and each half multiplied in turn (k halves accumulate
// into c), so the scratch stays small and each operand element is widened once per block along the
// other dimensions: the head's [vocab, width] weight is cut along vocab, its gradient's tokens
// along k.
template <class A, class B, class C>
void gemm_widened(const A& a, Op op_a, const B& b, Op op_b, C&& c, float alpha, float beta, Index budget) {
    const Index m = c.rows(), n = c.cols(), k = op_a == Op::none ? a.cols() : a.rows();
    const Index ldc = c.outerStride();
    const bool ta = op_a == Op::transpose, tb = op_b == Op::transpose;
    // op(a)'s rows [r0, r0 + rows) and columns [k0, k0 + depth) in a's storage; likewise op(b).
    const auto a_block = [&](Index r0, Index rows, Index k0, Index depth) {
        return ta ? block_of(a, k0, r0, depth, rows) : block_of(a, r0, k0, rows, depth);
    };
    const auto b_block = [&](Index k0, Index depth, Index c0, Index cols) {
        return tb ? block_of(b, c0, k0, cols, depth) : block_of(b, k0, c0, depth, cols);
    };
    // Only the operands that must be widened take scratch, so only their dimensions are cut.
    constexpr bool widen_a = !std::is_same_v<A, Bf16Values>, widen_b = !std::is_same_v<B, Bf16Values>;
    const Index widened = (widen_a ? m * k : 0) + (widen_b ? k * n : 0);
    auto& scratch = widen_scratch();
    if constexpr (widen_a && widen_b) {
        // Cut along the other operand's rows or columns, an operand would be widened again for each
        // block (a layer's activations once per slice of the weight: about 40 M values, 1% of the
        // seed's bf16 forward pass). The smaller one, when it fits in half the budget, is widened
        // once and the rest cut.
        if (widened > budget && std::min(m, n) * k <= budget / 2) {
            if (m <= n) {
                const Bf16Values a_values(widen_to_float(a, scratch.a));
                gemm_widened(a_values, op_a, b, op_b, c, alpha, beta, budget - m * k);
            } else {
                const Bf16Values b_values(widen_to_float(b, scratch.b));
                gemm_widened(a, op_a, b_values, op_b, c, alpha, beta, budget - k * n);
            }
            return;
        }
    }
    const Index cut_m = widen_a ? m : 1, cut_n = widen_b ? n : 1;
    if (widened > budget && std::max({cut_m, cut_n, k}) > 1) {
        if (k >= cut_m && k >= cut_n) {
            const Index h = k / 2;
            gemm_widened(a_block(0, m, 0, h), op_a, b_block(0, h, 0, n), op_b, c, alpha, beta, budget);
            gemm_widened(a_block(0, m, h, k - h), op_a, b_block(h, k - h, 0, n), op_b, c, alpha, 1.0f, budget);
        } else if (cut_n >= cut_m) {
            const Index h = n / 2;
            gemm_widened(a, op_a, b_block(0, k, 0, h), op_b, block_of(c.data(), ldc, 0, 0, m, h), alpha, beta, budget);
            gemm_widened(a, op_a, b_block(0, k, h, n - h), op_b, block_of(c.data(), ldc, 0, h, m, n - h), alpha, beta, budget);
        } else {
            const Index h = m / 2;
            gemm_widened(a_block(0, h, 0, k), op_a, b, op_b, block_of(c.data(), ldc, 0, 0, h, n), alpha, beta, budget);
            gemm_widened(a_block(h, m - h, 0, k), op_a, b, op_b, block_of(c.data(), ldc, h, 0, m - h, n), alpha, beta, budget);
        }
        return;
    }
    gemm(widen_to_float(a, scratch.a), op_a, widen_to_float(b, scratch.b), op_b, c, alpha, beta);
}

// `m` as bf16: itself when it is bf16, else rounded (float_to_bf16, as round_to_bf16_value) into
// `scratch` (resized).
template <class V>
ConstMatrixView<bf16> as_bf16(const V& m, Buffer<bf16>& scratch) {
    if constexpr (std::is_same_v<typename V::Scalar, bf16>) {
        return ConstMatrixView<bf16>(m.data(), m.rows(), m.cols(), Eigen::OuterStride<>(m.outerStride()));
    } else {
        static_assert(std::is_same_v<typename V::Scalar, float>);
        scratch.resize(static_cast<std::size_t>(m.size()));
        convert_rows(m, scratch.data(), [](float x) { return Eigen::numext::bit_cast<bf16>(float_to_bf16(x)); });
        return const_view(scratch.data(), m.rows(), m.cols());
    }
}

inline std::atomic<Bf16Kernel>& bf16_kernel_setting() {
    static std::atomic<Bf16Kernel> setting{Bf16Kernel::automatic};
    return setting;
}

// The best times in seconds of two runs over five interleaved rounds, after one untimed run of each
// (which creates and caches the primitives). Interleaved, a burst of other load on the machine
// slows both sides rather than deciding the comparison (timed one after the other, a busy machine
// once picked the kernel that runs at half the speed).
template <class F, class G>
std::pair<double, double> best_times(F&& first, G&& second) {
    first();
    second();
    const auto seconds = [](auto& run) {
        const auto start = std::chrono::steady_clock::now();
        run();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    double best_first = 1e30, best_second = 1e30;
    for (int round = 0; round < 5; ++round) {
        best_first = std::min(best_first, seconds(first));
        best_second = std::min(best_second, seconds(second));
    }
    return {best_first, best_second};
}

// Bf16Kernel::automatic, resolved (see the enum).
inline Bf16Kernel automatic_bf16_kernel() {
    if (const char* value = std::getenv("GEMMA3_BF16_KERNEL"); value && *value) {
        const std::string_view v(value);
        if (v == "native") return Bf16Kernel::native;
        if (v == "widened") return Bf16Kernel::widened;
        if (v != "auto") {
            throw std::invalid_argument("GEMMA3_BF16_KERNEL=" + std::string(v) + ": expected native, widened or auto");
        }
    }
#ifdef GEMMA3_HAVE_ONEDNN
    const auto isa = dnnl_get_effective_cpu_isa();
    if (isa != dnnl_cpu_isa_avx512_core_bf16 && isa != dnnl_cpu_isa_avx512_core_amx) return Bf16Kernel::widened;
    // A product of the model's shapes (tokens x width x GeGLU width): about 140 ms in all, once per
    // process, with oneDNN generating its kernels.
    const Index m = 256, k = 640, n = 2048;
    const RowMatrix<bf16> a = RowMatrix<float>::Random(m, k).cast<bf16>(), b = RowMatrix<float>::Random(n, k).cast<bf16>();
    RowMatrix<float> c(m, n);
    const auto [native, widened] = best_times(
        [&] { onednn_matmul(dnnl_bf16, a.data(), false, k, b.data(), true, k, c.data(), n, m, n, k, 1.0f, 0.0f); },
        [&] { gemm_widened(a, Op::none, b, Op::transpose, c, 1.0f, 0.0f, widen_budget); });
    return native <= widened ? Bf16Kernel::native : Bf16Kernel::widened;
#else
    return Bf16Kernel::widened;
#endif
}

}  // namespace detail

inline void set_bf16_kernel(Bf16Kernel kernel) { detail::bf16_kernel_setting().store(kernel); }

inline Bf16Kernel bf16_kernel() {
    const Bf16Kernel setting = detail::bf16_kernel_setting().load();
#ifdef GEMMA3_HAVE_ONEDNN
    if (setting != Bf16Kernel::automatic) return setting;
    static const Bf16Kernel automatic = detail::automatic_bf16_kernel();
    return automatic;
#else
    (void)setting;
    return Bf16Kernel::widened;  // no native kernel without oneDNN
#endif
}

// The mixed-precision product over the bf16 values of the operands: c = alpha op(a) op(b) + beta c
// with a and b in bf16 (taken as they are) or in float (rounded to bf16, nearest even, on the way
// in), accumulated and written in fp32, by the kernel bf16_kernel() picks. ops/linear.hpp's products
// under a bf16 scope and the packed bf16 weights' prefill come here.
template <class A, class B, class C>
void gemm_bf16_values(const A& a, Op op_a, const B& b, Op op_b, C&& c, float alpha = 1, float beta = 0) {
    detail::check_gemm_shapes(a, op_a, b, op_b, c);
    if (bf16_kernel() == Bf16Kernel::widened) {
        detail::gemm_widened(a, op_a, b, op_b, c, alpha, beta, detail::widen_budget);
        return;
    }
    thread_local Buffer<bf16> a_scratch, b_scratch;
    gemm(detail::as_bf16(a, a_scratch), op_a, detail::as_bf16(b, b_scratch), op_b, c, alpha, beta);
}

// Calls f with `m`'s bf16 values, made once for the several products that read them (a layer's
// backward reads dy twice): bf16 (an exact copy of Bf16Values, else rounded) for the native kernel,
// fp32 holding bf16 values for the widened one (Bf16Values read in place, else rounded), so that no
// product of f rounds or copies them again.
template <class V, class F>
void with_bf16_values(const V& m, F&& f) {
    static_assert(std::is_same_v<typename V::Scalar, float>);
    if (bf16_kernel() == Bf16Kernel::widened) {
        if constexpr (std::is_same_v<V, Bf16Values>) {
            f(m);
        } else {
            thread_local Buffer<float> scratch;
            f(detail::round_to_bf16_values(m, scratch));
        }
    } else {
        thread_local Buffer<bf16> scratch;
        f(detail::as_bf16(m, scratch));
    }
}

inline std::string gemm_engine_name() {
#ifdef GEMMA3_HAVE_ONEDNN
    const char* isa = "unknown";
    switch (dnnl_get_effective_cpu_isa()) {
        case dnnl_cpu_isa_sse41: isa = "sse41"; break;
        case dnnl_cpu_isa_avx: isa = "avx"; break;
        case dnnl_cpu_isa_avx2: isa = "avx2"; break;
        case dnnl_cpu_isa_avx512_core: isa = "avx512_core"; break;
        case dnnl_cpu_isa_avx512_core_vnni: isa = "avx512_core_vnni"; break;
        case dnnl_cpu_isa_avx512_core_bf16: isa = "avx512_core_bf16"; break;
        case dnnl_cpu_isa_avx512_core_amx: isa = "avx512_core_amx"; break;
        case dnnl_cpu_isa_avx2_vnni: isa = "avx2_vnni"; break;
        default: break;
    }
    const auto* v = dnnl_version();
    return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
           " (" + isa + "; bf16 products " + (bf16_kernel() == Bf16Kernel::native ? "native" : "widened to fp32") + ")";
#else
    return "CBLAS (OpenBLAS)";
#endif
}

// True when oneDNN dispatches bfloat16 products to native bf16 instructions on this CPU
// (AVX512_BF16 or AMX); without them it would emulate bf16 at a fraction of the fp32 rate.
inline bool cpu_has_native_bf16() {
#ifdef GEMMA3_HAVE_ONEDNN
    const auto isa = dnnl_get_effective_cpu_isa();
    return isa == dnnl_cpu_isa_avx512_core_bf16 || isa == dnnl_cpu_isa_avx512_core_amx;
#else
    return false;
#endif
}

// The rate of bf16-input products (the kernel bf16_kernel() picks) over fp32 ones on this machine,
// timed on an m x k by k x n product (best of a few runs each, tens of milliseconds in all). Native
// bf16 does not imply faster: some cores issue bf16 dot products at half their FMA rate, and widened
// products run a little below the fp32 rate. 0 without native bf16.
inline double bf16_speedup(Index m = 512, Index k = 256, Index n = 4096) {
    if (!cpu_has_native_bf16()) return 0;
    const RowMatrix<float> a = RowMatrix<float>::Random(m, k), b = RowMatrix<float>::Random(n, k);
    const RowMatrix<bf16> a16 = a.cast<bf16>(), b16 = b.cast<bf16>();
    RowMatrix<float> c(m, n);
    const auto [fp32, bf16_inputs] = detail::best_times([&] { gemm(a, Op::none, b, Op::transpose, c); },
                                                        [&] { gemm(a16, Op::none, b16, Op::transpose, c); });
    return fp32 / bf16_inputs;
}

}  // namespace gemma3
