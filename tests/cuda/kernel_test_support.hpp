// Shared helpers of the CUDA op tests (tests/cuda/test_cuda_*.cu): bf16 inputs rounded on the host,
// guarded device outputs, and element-wise comparisons against CPU references with stated bounds.
//
// Every op test follows the same recipe:
//  - inputs are drawn on the host and rounded to bf16 first (where the kernel reads bf16), so the
//    CPU reference (the ops in include/gemma3/ops/, in double) sees exactly the kernel's inputs and
//    the only differences left are the kernel's own roundings;
//  - outputs live in GuardedBuffers prefilled with NaN: an element the kernel forgets stays NaN and
//    fails the finiteness check, a write outside the array changes a canary;
//  - each element is compared with a bound derived from the kernel's arithmetic (bf16 output
//    rounding 2^-8 relative, fp32 accumulation n * 2^-24 of the sum of magnitudes, ...), stated in
//    the test; check_within() reports the largest error/bound ratio, so a run shows how close each
//    op comes to its bound.
#pragma once

#include "cuda_test.hpp"
#include "guarded_buffer.hpp"

#include <gemma3/core/bf16_bits.hpp>  // round_to_bf16_value: the host-side reference rounding

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

GEMMA3_CUDA_NAMESPACE_BEGIN
namespace test {

inline constexpr double bf16_unit = 0x1p-8;   // unit roundoff of bf16 (8 significant bits)
inline constexpr double fp32_unit = 0x1p-24;  // unit roundoff of fp32
// Per-operation error of an fp32 accumulation inside cuBLASLt: tensor cores may truncate instead of
// rounding to nearest, doubling the unit roundoff (the bound test_cuda_gemm.cu uses too).
inline constexpr double gemm_unit = 0x1p-23;

// n uniform values in [low, high), rounded to bf16 (representable exactly in bf16 and in float).
inline std::vector<float> bf16_values(std::size_t n, float low, float high, std::uint32_t seed) {
    std::vector<float> values = random_floats(n, low, high, seed);
    for (float& v : values) v = gemma3::round_to_bf16_value(v);
    return values;
}

inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& values) {
    std::vector<__nv_bfloat16> out(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) out[i] = bf16_from_bits(gemma3::float_to_bf16(values[i]));
    return out;
}

inline double value_of(float v) { return v; }
inline double value_of(double v) { return v; }
inline double value_of(__nv_bfloat16 v) { return gemma3::bf16_to_float(bf16_bits(v)); }

template <class T>
std::vector<double> to_double(const std::vector<T>& values) {
    std::vector<double> out(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) out[i] = value_of(values[i]);
    return out;
}

// A guarded device array holding `host` (float or bf16 elements given as floats).
template <class T>
GuardedBuffer<T> guarded_from(const std::vector<float>& host) {
    GuardedBuffer<T> buffer(host.size());
    if constexpr (std::is_same_v<T, float>) {
        buffer.upload(host);
    } else {
        buffer.upload(to_bf16(host));
    }
    return buffer;
}

// A guarded device output of n elements, every one NaN until the kernel writes it.
template <class T>
GuardedBuffer<T> guarded_nan(std::size_t n) {
    return guarded_from<T>(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()));
}

// The values of a guarded output as doubles, after checking its canary zones.
template <class T>
std::vector<double> download_checked(const GuardedBuffer<T>& buffer, const std::string& what) {
    const std::string report = buffer.corruption_report();
    INFO(what << ": " << report);
    CHECK(report.empty());
    return to_double(buffer.download());
}

// got[i] must be finite and within bound[i] of expected[i] (only indices where `selected` is true,
// when given). Reports the largest |error| and error/bound ratio as a doctest MESSAGE.
inline void check_within(const std::string& what, const std::vector<double>& got, const std::vector<double>& expected,
                         const std::vector<double>& bound, const std::vector<bool>& selected = {}) {
    REQUIRE(got.size() == expected.size());
    REQUIRE(bound.size() == expected.size());
    std::size_t non_finite = 0, bad = 0, compared = 0;
    double worst_ratio = 0, worst_error = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        if (!selected.empty() && !selected[i]) continue;
        ++compared;
        if (!std::isfinite(got[i])) {
            if (++non_finite <= 3) FAIL_CHECK(what << "[" << i << "] = " << got[i] << " (expected " << expected[i] << ")");
            continue;
        }
        const double error = std::fabs(got[i] - expected[i]);
        worst_error = std::max(worst_error, error);
        worst_ratio = std::max(worst_ratio, bound[i] > 0 ? error / bound[i] : (error > 0 ? INFINITY : 0.0));
        if (!(error <= bound[i]) && ++bad <= 5)
            FAIL_CHECK(what << "[" << i << "] = " << got[i] << ", expected " << expected[i] << " +- " << bound[i]);
    }
    MESSAGE(what << ": " << compared << " values, max |error| " << worst_error << ", max error/bound " << worst_ratio);
    CHECK(non_finite == 0);
    CHECK(bad == 0);
}

// Normwise relative error ||got - expected|| / ||expected|| (NaN if got holds a non-finite value).
inline double relative_error(const std::vector<double>& got, const std::vector<double>& expected) {
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) return std::numeric_limits<double>::quiet_NaN();
        diff += (got[i] - expected[i]) * (got[i] - expected[i]);
        norm += expected[i] * expected[i];
    }
    return std::sqrt(diff / norm);
}

}  // namespace test
GEMMA3_CUDA_NAMESPACE_END
