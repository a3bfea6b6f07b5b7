// The large matrix products: gemm() over row-major views, in float, double or bfloat16 inputs.
//
// Engine (chosen at build time, cmake/gemma3Blas.cmake):
//  - oneDNN (default, GEMMA3_HAVE_ONEDNN): float and bfloat16 products. oneDNN picks its kernels from
//    the CPU's features at run time (AVX-512, AVX512_BF16, AMX...), so the speed does not depend on how
//    OpenBLAS was told to dispatch (OPENBLAS_CORETYPE). Its fp32 matmul runs ~2x OpenBLAS's Haswell
//    kernels on the machines of docs/design.md; its bf16 speed depends on the CPU (twice fp32 on the
//    AMD Zen 5 machines, half of it on an Intel Xeon with AVX512_BF16 and no AMX, where oneDNN 2.6 has
//    no fast bf16 kernel). Debian's oneDNN uses OpenMP, so it shares our thread pool.
//  - CBLAS (OpenBLAS): double always (oneDNN has no f64 matmul on CPUs), float too when oneDNN is off,
//    and matrix-vector products (one token at a time), which run at memory bandwidth either way.
// A oneDNN matmul primitive is created once per (shape, transposes, strides, types, alpha, beta) and
// cached per thread; creating one costs far more than a small product.
#pragma once

#include <gemma3/core/tensor.hpp>

#include <cblas.h>
#ifdef GEMMA3_HAVE_ONEDNN
#include <dnnl.hpp>
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>

namespace gemma3 {

enum class Op { none, transpose };

// bfloat16 storage: Eigen's type (round to nearest even on conversion from float).
using bf16 = Eigen::bfloat16;

// Which engine computes float and bfloat16 products in this build, and the instruction set oneDNN
// dispatches to on this CPU (e.g. "avx512_core_bf16"); for benchmarks and logs.
inline std::string gemm_engine_name();

namespace detail {

#ifdef GEMMA3_HAVE_ONEDNN
inline const dnnl::engine& onednn_engine() {
    static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
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

// c [m, n] (fp32, row-major, stride ldc) = alpha op(a) op(b) + beta c, with
// op(a) [m, k] and op(b) [k, n] of element type `in` (f32 or bf16).
inline void onednn_matmul(dnnl::memory::data_type in, const void* a, bool trans_a, Index lda, const void* b,
                          bool trans_b, Index ldb, float* c, Index ldc, Index m, Index n, Index k, float alpha,
                          float beta) {
    using dt = dnnl::memory::data_type;
    std::uint32_t alpha_bits, beta_bits;
    static_assert(sizeof(float) == sizeof(std::uint32_t));
    std::memcpy(&alpha_bits, &alpha, sizeof alpha);
    std::memcpy(&beta_bits, &beta, sizeof beta);
    const MatmulKey key{{m, n, k, lda, ldb, ldc,
                         (trans_a ? 1 : 0) | (trans_b ? 2 : 0) | (static_cast<std::int64_t>(in) << 2),
                         (static_cast<std::int64_t>(alpha_bits) << 32) | beta_bits}};
    thread_local std::unordered_map<MatmulKey, dnnl::matmul, MatmulKeyHash> cache;
    auto it = cache.find(key);
    const dnnl::memory::desc a_md({m, k}, in, trans_a ? dnnl::memory::dims{1, lda} : dnnl::memory::dims{lda, 1});
    const dnnl::memory::desc b_md({k, n}, in, trans_b ? dnnl::memory::dims{1, ldb} : dnnl::memory::dims{ldb, 1});
    const dnnl::memory::desc c_md({m, n}, dt::f32, dnnl::memory::dims{ldc, 1});
    const auto& engine = onednn_engine();
    if (it == cache.end()) {
        dnnl::primitive_attr attr;
        if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
        if (beta != 0.0f) {
            dnnl::post_ops ops;
            ops.append_sum(beta);
            attr.set_post_ops(ops);
        }
        const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, engine);
        it = cache.emplace(key, dnnl::matmul(pd)).first;
    }
    thread_local dnnl::stream stream(engine);
    it->second.execute(stream, {{DNNL_ARG_SRC, dnnl::memory(a_md, engine, const_cast<void*>(a))},
                                {DNNL_ARG_WEIGHTS, dnnl::memory(b_md, engine, const_cast<void*>(b))},
                                {DNNL_ARG_DST, dnnl::memory(c_md, engine, c)}});
    stream.wait();
}
#endif

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
    const Index m = op_a == Op::none ? a.rows() : a.cols();
    const Index k = op_a == Op::none ? a.cols() : a.rows();
    const Index k_b = op_b == Op::none ? b.rows() : b.cols();
    const Index n = op_b == Op::none ? b.cols() : b.rows();
    if (k != k_b || c.rows() != m || c.cols() != n) {
        throw std::logic_error("gemm: shape mismatch: op(a) is " + std::to_string(m) + "x" + std::to_string(k) +
                               ", op(b) is " + std::to_string(k_b) + "x" + std::to_string(n) + ", c is " +
                               std::to_string(c.rows()) + "x" + std::to_string(c.cols()));
    }
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
        detail::onednn_matmul(dnnl::memory::data_type::bf16, a.data(), op_a == Op::transpose, a.outerStride(), b.data(),
                              op_b == Op::transpose, b.outerStride(), c.data(), c.outerStride(), m, n, k, alpha, beta);
#else
        // Without oneDNN: widen to float (exact) and multiply in float, the same arithmetic.
        const RowMatrix<float> a32 = a.template cast<float>(), b32 = b.template cast<float>();
        gemm(a32, op_a, b32, op_b, c, alpha, beta);
#endif
        return;
    } else {
        if (m == 1) {
            // A single row (decoding one token): a matrix-vector product, which BLAS does at memory
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
            detail::onednn_matmul(dnnl::memory::data_type::f32, a.data(), op_a == Op::transpose, a.outerStride(),
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

inline std::string gemm_engine_name() {
#ifdef GEMMA3_HAVE_ONEDNN
    const char* isa = "unknown";
    switch (dnnl::get_effective_cpu_isa()) {
        case dnnl::cpu_isa::sse41: isa = "sse41"; break;
        case dnnl::cpu_isa::avx: isa = "avx"; break;
        case dnnl::cpu_isa::avx2: isa = "avx2"; break;
        case dnnl::cpu_isa::avx512_core: isa = "avx512_core"; break;
        case dnnl::cpu_isa::avx512_core_vnni: isa = "avx512_core_vnni"; break;
        case dnnl::cpu_isa::avx512_core_bf16: isa = "avx512_core_bf16"; break;
        case dnnl::cpu_isa::avx512_core_amx: isa = "avx512_core_amx"; break;
        case dnnl::cpu_isa::avx2_vnni: isa = "avx2_vnni"; break;
        default: break;
    }
    const auto* v = dnnl::version();
    return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
           " (" + isa + ")";
#else
    return "CBLAS (OpenBLAS)";
#endif
}

// True when oneDNN dispatches bfloat16 products to native bf16 instructions on this CPU
// (AVX512_BF16 or AMX); without them it would emulate bf16 at a fraction of the fp32 rate.
inline bool cpu_has_native_bf16() {
#ifdef GEMMA3_HAVE_ONEDNN
    const auto isa = dnnl::get_effective_cpu_isa();
    return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
#else
    return false;
#endif
}

// The rate of bf16-input products over fp32 ones on this machine, timed on an m x k by k x n product
// (best of a few runs each, tens of milliseconds in all). Native bf16 does not imply faster: some
// cores issue bf16 dot products at half their FMA rate. 0 without native bf16.
inline double bf16_speedup(Index m = 512, Index k = 256, Index n = 4096) {
    if (!cpu_has_native_bf16()) return 0;
    const RowMatrix<float> a = RowMatrix<float>::Random(m, k), b = RowMatrix<float>::Random(n, k);
    const RowMatrix<bf16> a16 = a.cast<bf16>(), b16 = b.cast<bf16>();
    RowMatrix<float> c(m, n);
    const auto best_of = [](auto&& run) {
        run();  // creates and caches the primitive
        double best = 1e30;
        for (int i = 0; i < 5; ++i) {
            const auto start = std::chrono::steady_clock::now();
            run();
            best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        }
        return best;
    };
    const double fp32 = best_of([&] { gemm(a, Op::none, b, Op::transpose, c); });
    const double bf16_inputs = best_of([&] { gemm(a16, Op::none, b16, Op::transpose, c); });
    return fp32 / bf16_inputs;
}

}  // namespace gemma3
