// Linear layers with packed inference weights: bfloat16, or blockwise int8 with one fp32 scale per
// 32 weights of a row (quantised once, when the weights are packed).
//
// Decoding one token is a matrix-vector product per weight matrix, so its speed is the bytes read per
// token: fp32 weights 4 bytes each, bf16 2, int8 1 + 4/32 for the scales. Activations stay fp32
// throughout; only the weights are narrow.
//
//  - One row (decoding): hand-written AVX-512 kernels below. They widen the weights to fp32 in
//    registers (bf16: a shift or mask of each 32-bit lane; int8: sign-extend and convert, then one
//    multiply by the block's scale) and multiply-add them into fp32 accumulators: the fp32 product of
//    the stored weights with the unrounded activations. Why not oneDNN's matmul with M = 1: on the
//    reference machine (gemma3-ops-bench --benchmark_filter=packed_matvec, one pinned thread, machine
//    busy with other builds, GB/s of weights per CPU second) oneDNN 2.6's bf16 matmul at M = 1 read
//    14 GB/s on the cache-resident gate|up and down matrices where the bf16 kernel here read 25-33,
//    and 7.2 against 8.2 GB/s on the 64 MB head; it also rounds the activations to bf16, and it has no
//    int8-weight product with fp32 activations (weight decompression came with oneDNN 3.x).
//    Not `vdpbf16ps` (avx512_bf16): it needs the activations in bf16 too, and the loop is bound by
//    memory, not by the two extra integer instructions per 32 weights.
//    The AVX-512 code is compiled with a target attribute (so any -march builds it) and chosen at run
//    time when the CPU has AVX-512 F and BW; otherwise a portable scalar loop computes the same sums.
//  - Several rows (prefill): bf16 weights go to blas.hpp's bf16 GEMM (activations rounded to bf16 on
//    the way in, fp32 accumulation); int8 weights are widened to fp32 and multiplied in fp32.
#pragma once

#include <gemma3/core/blas.hpp>
#include <gemma3/core/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

// The x86 kernels' switch (GEMMA3_X86_KERNELS), CPU check and prefetch distance are blas.hpp's.

namespace gemma3 {

// How an inference model stores its weight matrices.
enum class WeightFormat { f32, bf16, int8 };

inline const char* weight_format_name(WeightFormat f) {
    switch (f) {
        case WeightFormat::f32: return "f32";
        case WeightFormat::bf16: return "bf16";
        case WeightFormat::int8: return "int8";
    }
    return "?";
}

inline WeightFormat parse_weight_format(std::string_view text) {
    if (text == "f32") return WeightFormat::f32;
    if (text == "bf16") return WeightFormat::bf16;
    if (text == "int8") return WeightFormat::int8;
    throw std::invalid_argument("weight format \"" + std::string(text) + "\": expected f32, bf16 or int8");
}

namespace detail {
// Storage for packed weights: large buffers on transparent huge pages where Linux offers them.
// Decoding streams every weight once per token (265 MB for the seed model in bf16), and with 4 KB
// pages that walk misses the TLB every 4 KB. Measured on the reference machine (2 threads, the
// seed's 73 matrices, bf16 matvec of every one per pass): 20.8 GB/s on 4 KB pages, 27 GB/s on huge
// pages with the kernels' prefetch. The system allocator gives no huge pages unless asked
// (transparent_hugepage=madvise is Debian's default), so buffers of 2 MB and more are mapped here,
// their start aligned to 2 MB, and the whole 2 MB stretches inside them advised MADV_HUGEPAGE; the
// tail stays on small pages, so no memory is wasted. Smaller buffers, and other systems, use
// Eigen's aligned allocator. Hand-written: no library we use offers a huge-page allocator.
template <class T>
struct HugePageAllocator {
    using value_type = T;
    static constexpr std::size_t huge = std::size_t{1} << 21;  // 2 MB, x86-64's huge page

    HugePageAllocator() = default;
    template <class U>
    HugePageAllocator(const HugePageAllocator<U>&) noexcept {}

    T* allocate(std::size_t n) {
#ifdef __linux__
        const std::size_t bytes = n * sizeof(T);
        if (bytes >= huge) {
            // Map size + 2 MB, then unmap the head before the first 2 MB boundary and the slack after.
            const std::size_t mapped = round_up(bytes, page()) + huge;
            void* raw = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (raw == MAP_FAILED) throw std::bad_alloc();
            auto* base = static_cast<std::byte*>(raw);
            auto* start = reinterpret_cast<std::byte*>(round_up(reinterpret_cast<std::uintptr_t>(base), huge));
            const std::size_t head = static_cast<std::size_t>(start - base), kept = round_up(bytes, page());
            if (head > 0) ::munmap(base, head);
            if (mapped - head > kept) ::munmap(start + kept, mapped - head - kept);
            ::madvise(start, bytes / huge * huge, MADV_HUGEPAGE);  // advice only: failure leaves small pages
            return reinterpret_cast<T*>(start);
        }
#endif
        return Eigen::aligned_allocator<T>().allocate(n);
    }
    void deallocate(T* p, std::size_t n) noexcept {
#ifdef __linux__
        if (n * sizeof(T) >= huge) {
            ::munmap(p, round_up(n * sizeof(T), page()));
            return;
        }
#endif
        Eigen::aligned_allocator<T>().deallocate(p, n);
    }
    template <class U>
    bool operator==(const HugePageAllocator<U>&) const noexcept { return true; }

private:
    static std::size_t round_up(std::size_t x, std::size_t to) { return (x + to - 1) / to * to; }
#ifdef __linux__
    static std::size_t page() { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }
#endif
};
}  // namespace detail

// A weight matrix [rows, cols] (PyTorch's [out, in]) in bf16 or blockwise int8.
// int8: row r's columns [32 b, 32 b + 32) are q * scale[r, b], scale = max |w| / 127 over the block
// and q = round(w / scale) in [-127, 127], so each weight is off by at most scale / 2.
struct PackedMatrix {
    static constexpr Index block = 32;  // int8 weights per scale

    WeightFormat format = WeightFormat::bf16;
    Index rows = 0, cols = 0;
    std::vector<gemma3::bf16, detail::HugePageAllocator<gemma3::bf16>> bf16;  // [rows, cols] (bf16 format)
    std::vector<std::int8_t, detail::HugePageAllocator<std::int8_t>> q;       // [rows, cols] (int8 format)
    Buffer<float> scales;        // [rows, blocks()] (int8 format)

    Index blocks() const { return (cols + block - 1) / block; }

    static PackedMatrix pack(ConstMatrixView<float> w, WeightFormat format) {
        if (format == WeightFormat::f32) throw std::invalid_argument("PackedMatrix: f32 weights are not packed");
        PackedMatrix m;
        m.format = format;
        m.rows = w.rows();
        m.cols = w.cols();
        const auto n = static_cast<std::size_t>(m.rows * m.cols);
        if (format == WeightFormat::bf16) {
            m.bf16.resize(n);
#pragma omp parallel for schedule(static)
            for (Index r = 0; r < m.rows; ++r)
                for (Index c = 0; c < m.cols; ++c) m.bf16[static_cast<std::size_t>(r * m.cols + c)] = gemma3::bf16(w(r, c));
        } else {
            m.q.resize(n);
            m.scales.resize(static_cast<std::size_t>(m.rows * m.blocks()));
#pragma omp parallel for schedule(static)
            for (Index r = 0; r < m.rows; ++r) {
                for (Index b = 0; b < m.blocks(); ++b) {
                    const Index c0 = b * block, c1 = std::min(c0 + block, m.cols);
                    float max = 0;
                    for (Index c = c0; c < c1; ++c) max = std::max(max, std::abs(w(r, c)));
                    const float scale = max / 127.0f;
                    m.scales[static_cast<std::size_t>(r * m.blocks() + b)] = scale;
                    for (Index c = c0; c < c1; ++c) {
                        const float level = scale > 0 ? std::nearbyint(w(r, c) / scale) : 0.0f;
                        m.q[static_cast<std::size_t>(r * m.cols + c)] =
                            static_cast<std::int8_t>(std::clamp(level, -127.0f, 127.0f));
                    }
                }
            }
        }
        return m;
    }

    // The weight the products use, in double: exact for both formats (q * scale needs 8 + 24 bits).
    double value(Index r, Index c) const {
        if (format == WeightFormat::bf16) return static_cast<float>(bf16[static_cast<std::size_t>(r * cols + c)]);
        return static_cast<double>(q[static_cast<std::size_t>(r * cols + c)]) *
               static_cast<double>(scales[static_cast<std::size_t>(r * blocks() + c / block)]);
    }

    // Row r widened to fp32 (int8: q * scale rounded once to fp32).
    void widen_row(Index r, float* out) const {
        if (format == WeightFormat::bf16) {
            const gemma3::bf16* row = bf16.data() + r * cols;
            for (Index c = 0; c < cols; ++c) out[c] = static_cast<float>(row[c]);
        } else {
            const std::int8_t* row = q.data() + r * cols;
            const float* s = scales.data() + r * blocks();
            for (Index c = 0; c < cols; ++c) out[c] = static_cast<float>(row[c]) * s[c / block];
        }
    }

    std::size_t bytes() const {
        return bf16.size() * sizeof(gemma3::bf16) + q.size() + scales.size() * sizeof(float);
    }
};

namespace detail {

// ---- portable kernels: y[r] = sum_c W[r, c] x[c] in fp32 -------------------------------------------

inline void packed_matvec_scalar(const PackedMatrix& w, Index r0, Index r1, const float* x, float* y) {
    for (Index r = r0; r < r1; ++r) {
        float sum = 0;
        if (w.format == WeightFormat::bf16) {
            const gemma3::bf16* row = w.bf16.data() + r * w.cols;
            for (Index c = 0; c < w.cols; ++c) sum += static_cast<float>(row[c]) * x[c];
        } else {
            const std::int8_t* row = w.q.data() + r * w.cols;
            const float* s = w.scales.data() + r * w.blocks();
            for (Index b = 0; b < w.blocks(); ++b) {
                const Index c0 = b * PackedMatrix::block, c1 = std::min(c0 + PackedMatrix::block, w.cols);
                float part = 0;
                for (Index c = c0; c < c1; ++c) part += static_cast<float>(row[c]) * x[c];
                sum += s[b] * part;
            }
        }
        y[r] = sum;
    }
}

#if GEMMA3_X86_KERNELS
// GCC 12's warnings inside its AVX-512 intrinsics are silenced here as in blas.hpp (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
// bf16 rows [r0, r1). A 64-byte load holds 32 weights; as 16 lanes of 32 bits, the low halves are
// the even columns and the high halves the odd ones. Shifting left by 16 (even) or masking the low
// half away (odd) turns each into an exact fp32 vector, multiplied with x split into its even and odd
// columns beforehand (x_split: per 32 columns, 16 even then 16 odd). Four rows share each x load.
__attribute__((target("avx512f,avx512bw"))) inline void packed_matvec_bf16_avx512(const PackedMatrix& w, Index r0,
                                                                                   Index r1, const float* x,
                                                                                   const float* x_split, float* y) {
    const Index cols = w.cols, full = cols / 32 * 32;
    const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    Index r = r0;
    for (; r + 4 <= r1; r += 4) {
        const gemma3::bf16* row[4];
        __m512 even[4], odd[4];
        for (int i = 0; i < 4; ++i) {
            row[i] = w.bf16.data() + (r + i) * cols;
            even[i] = _mm512_setzero_ps();
            odd[i] = _mm512_setzero_ps();
        }
        for (Index c = 0; c < full; c += 32) {
            const __m512 xe = _mm512_loadu_ps(x_split + c), xo = _mm512_loadu_ps(x_split + c + 16);
            for (int i = 0; i < 4; ++i) {
                _mm_prefetch(reinterpret_cast<const char*>(row[i] + c) + prefetch_bytes, _MM_HINT_T0);
                const __m512i v = _mm512_loadu_si512(row[i] + c);
                even[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xe, even[i]);
                odd[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, high)), xo, odd[i]);
            }
        }
        for (int i = 0; i < 4; ++i) {
            float sum = _mm512_reduce_add_ps(_mm512_add_ps(even[i], odd[i]));
            for (Index c = full; c < cols; ++c) sum += static_cast<float>(row[i][c]) * x[c];
            y[r + i] = sum;
        }
    }
    for (; r < r1; ++r) {
        const gemma3::bf16* one = w.bf16.data() + r * cols;
        __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
        for (Index c = 0; c < full; c += 32) {
            const __m512i v = _mm512_loadu_si512(one + c);
            even = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), _mm512_loadu_ps(x_split + c), even);
            odd = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, high)), _mm512_loadu_ps(x_split + c + 16), odd);
        }
        float sum = _mm512_reduce_add_ps(_mm512_add_ps(even, odd));
        for (Index c = full; c < cols; ++c) sum += static_cast<float>(one[c]) * x[c];
        y[r] = sum;
    }
}

// One int8 block's 32 weights times x's 32 values, as 16 fp32 partial sums. (A function, not a lambda:
// a lambda would not inherit the target attribute.)
__attribute__((target("avx512f,avx512bw"))) inline __m512 int8_block_partial(const std::int8_t* q, __m512 x0, __m512 x1) {
    const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
    const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16))));
    return _mm512_fmadd_ps(w1, x1, _mm512_mul_ps(w0, x0));
}

// int8 rows [r0, r1): per block of 32 weights, sign-extend two 16-byte halves to 32-bit lanes,
// convert to fp32, multiply-add with x, then add the block's partial times its scale.
__attribute__((target("avx512f,avx512bw"))) inline void packed_matvec_int8_avx512(const PackedMatrix& w, Index r0,
                                                                                   Index r1, const float* x, float* y) {
    const Index cols = w.cols, nb = w.blocks(), full_blocks = cols / 32;
    const auto tail = [&](Index r) {  // the last, partial block
        float part = 0;
        const std::int8_t* row = w.q.data() + r * cols;
        for (Index c = full_blocks * 32; c < cols; ++c) part += static_cast<float>(row[c]) * x[c];
        return full_blocks < nb ? w.scales[static_cast<std::size_t>(r * nb + full_blocks)] * part : 0.0f;
    };
    Index r = r0;
    for (; r + 4 <= r1; r += 4) {
        __m512 acc[4];
        for (int i = 0; i < 4; ++i) acc[i] = _mm512_setzero_ps();
        for (Index b = 0; b < full_blocks; ++b) {
            const __m512 x0 = _mm512_loadu_ps(x + b * 32), x1 = _mm512_loadu_ps(x + b * 32 + 16);
            for (int i = 0; i < 4; ++i) {
                const std::int8_t* block_q = w.q.data() + (r + i) * cols + b * 32;
                _mm_prefetch(reinterpret_cast<const char*>(block_q) + prefetch_bytes, _MM_HINT_T0);
                const __m512 part = int8_block_partial(block_q, x0, x1);
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(w.scales[static_cast<std::size_t>((r + i) * nb + b)]), part, acc[i]);
            }
        }
        for (int i = 0; i < 4; ++i) y[r + i] = _mm512_reduce_add_ps(acc[i]) + tail(r + i);
    }
    for (; r < r1; ++r) {
        __m512 acc = _mm512_setzero_ps();
        for (Index b = 0; b < full_blocks; ++b) {
            const __m512 part = int8_block_partial(w.q.data() + r * cols + b * 32, _mm512_loadu_ps(x + b * 32),
                                              _mm512_loadu_ps(x + b * 32 + 16));
            acc = _mm512_fmadd_ps(_mm512_set1_ps(w.scales[static_cast<std::size_t>(r * nb + b)]), part, acc);
        }
        y[r] = _mm512_reduce_add_ps(acc) + tail(r);
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// Set by tests to check the portable kernels on a CPU that has AVX-512.
inline bool& packed_kernels_force_scalar() {
    static bool force = false;
    return force;
}

}  // namespace detail

// Whether the AVX-512 kernels run on this CPU in this build.
inline bool packed_kernels_use_avx512() {
#if GEMMA3_X86_KERNELS
    return !detail::packed_kernels_force_scalar() && detail::cpu_has_avx512();
#else
    return false;
#endif
}

// y [1, rows] = x [1, cols] W^T, x contiguous.
inline void packed_matvec(const PackedMatrix& w, const float* x, float* y) {
    const Index rows = w.rows;
    // Rows split across threads in groups of 64 (a multiple of the kernels' 4); small matrices stay
    // on one thread, where a parallel region would cost more than it saves.
    // [[maybe_unused]]: read only by the OpenMP pragmas, which nvcc's front end does not count.
    [[maybe_unused]] const bool parallel = rows * w.cols >= (Index{1} << 18);
    constexpr Index group = 64;
    const Index groups = (rows + group - 1) / group;
#if GEMMA3_X86_KERNELS
    if (packed_kernels_use_avx512()) {
        if (w.format == WeightFormat::bf16) {
            thread_local Buffer<float> split;
            const Index full = w.cols / 32 * 32;
            split.resize(static_cast<std::size_t>(full));
            for (Index c = 0; c < full; c += 32) {
                for (Index j = 0; j < 16; ++j) {
                    split[static_cast<std::size_t>(c + j)] = x[c + 2 * j];
                    split[static_cast<std::size_t>(c + 16 + j)] = x[c + 2 * j + 1];
                }
            }
            const float* xs = split.data();  // this thread's buffer, shared with the team below
#pragma omp parallel for schedule(static) if (parallel)
            for (Index g = 0; g < groups; ++g)
                detail::packed_matvec_bf16_avx512(w, g * group, std::min(rows, (g + 1) * group), x, xs, y);
        } else {
#pragma omp parallel for schedule(static) if (parallel)
            for (Index g = 0; g < groups; ++g)
                detail::packed_matvec_int8_avx512(w, g * group, std::min(rows, (g + 1) * group), x, y);
        }
        return;
    }
#endif
#pragma omp parallel for schedule(static) if (parallel)
    for (Index g = 0; g < groups; ++g) detail::packed_matvec_scalar(w, g * group, std::min(rows, (g + 1) * group), x, y);
}

// y [tokens, rows] = x [tokens, cols] W^T: the linear layer with packed weights (activations fp32).
template <class T>
void linear_forward(ConstMatrixView<T> x, const PackedMatrix& weight, MatrixView<T> y) {
    static_assert(std::is_same_v<T, float>, "packed weights multiply fp32 activations");
    if (x.cols() != weight.cols || y.cols() != weight.rows || y.rows() != x.rows()) {
        throw std::logic_error("linear_forward: packed weight is " + std::to_string(weight.rows) + "x" +
                               std::to_string(weight.cols) + ", x is " + std::to_string(x.rows()) + "x" +
                               std::to_string(x.cols()) + ", y is " + std::to_string(y.rows()) + "x" +
                               std::to_string(y.cols()));
    }
    if (x.rows() == 1 && y.outerStride() >= y.cols()) {
        thread_local Buffer<float> x_row;  // x may be a strided view
        x_row.assign(x.data(), x.data() + x.cols());
        packed_matvec(weight, x_row.data(), y.data());
        return;
    }
    if (weight.format == WeightFormat::bf16) {
        // Several rows (prefill): the bf16 GEMM (blas.hpp), activations rounded to bf16 on the way
        // in, fp32 accumulation and output.
        gemm_bf16_values(x, Op::none, const_view(weight.bf16.data(), weight.rows, weight.cols), Op::transpose, y);
        return;
    }
    // int8, several rows: widen the weights to fp32 (exact up to one rounding of q * scale) a panel
    // of rows at a time, so the scratch stays a few MB, and multiply in fp32; a bf16 GEMM would round
    // the weights a second time.
    constexpr Index panel = 1024;
    thread_local Buffer<float> wide;
    wide.resize(static_cast<std::size_t>(std::min(panel, weight.rows) * weight.cols));
    float* const widened = wide.data();  // this thread's buffer, shared with the team below
    for (Index r0 = 0; r0 < weight.rows; r0 += panel) {
        const Index rows = std::min(panel, weight.rows - r0);
#pragma omp parallel for schedule(static)
        for (Index r = 0; r < rows; ++r) weight.widen_row(r0 + r, widened + r * weight.cols);
        gemm(x, Op::none, const_view(widened, rows, weight.cols), Op::transpose, column_block(y, r0, rows));
    }
}

// out [tokens, cols] = table[token] * scale, from a packed table (the widened row, in fp32).
template <class T>
void embedding_forward(const PackedMatrix& table, std::span<const std::int32_t> tokens, T scale, MatrixView<T> out) {
    static_assert(std::is_same_v<T, float>, "packed weights give fp32 activations");
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        float* row = out.data() + static_cast<Index>(i) * out.outerStride();
        table.widen_row(tokens[i], row);
        for (Index c = 0; c < table.cols; ++c) row[c] *= scale;
    }
}

// A packed matrix passes to linear_forward as it is (forward.hpp's weight_operand for plain rows).
inline const PackedMatrix& weight_operand(const PackedMatrix& w, Index rows, Index cols) {
    if (w.rows != rows || w.cols != cols) {
        throw std::logic_error("packed weight is " + std::to_string(w.rows) + "x" + std::to_string(w.cols) + ", expected " +
                               std::to_string(rows) + "x" + std::to_string(cols));
    }
    return w;
}

}  // namespace gemma3
