// __nv_bfloat16 and __nv_bfloat162 for the CPU emulator, with the conversions and arithmetic our
// kernels use. Semantics follow cuda_bf16.h on sm_80+:
//  - float -> bf16 rounds to nearest, ties to even; any NaN becomes the canonical NaN 0x7FFF
//    (what cvt.rn.bf16.f32 and the host path of cuda_bf16.hpp produce); +-inf stay +-inf and finite
//    values beyond the largest bf16 round to +-inf.
//  - bf16 -> float is exact (the bits shifted up by 16).
//  - + - * / round the exact result once, as the device's fma.rn.bf16-based operations do. For
//    + - * the float result is exact or already far from a bf16 rounding boundary (a bf16 product
//    has at most 16 significant bits; a sum of two bf16 values whose exponents differ by more than
//    16 is within a tiny fraction of a bf16 ulp of the larger one), so rounding it again to bf16 is
//    a single correct rounding. A quotient of two 8-bit significands that is not exactly a bf16
//    tie is at least about 2^-17 (relative) away from one, far more than float's rounding error,
//    so the same holds for /.
// Not provided: __hfma (float fma followed by a second rounding would not be correctly rounded),
// half-precision (__half) types, and the comparison/min/max intrinsics; add them with a test when
// a kernel needs them.
#pragma once

#include "types.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace gemma3::cuda::emulator::api {

struct __nv_bfloat16_raw {
    unsigned short x;
};
struct __nv_bfloat162_raw {
    unsigned short x;
    unsigned short y;
};

namespace bf16_bits {

constexpr unsigned short canonical_nan = 0x7FFF;

// Round to nearest even: adding 0x7FFF plus the lowest kept bit carries into the kept half exactly
// when the dropped half is above the midpoint, or at it with an odd kept half; a carry out of the
// mantissa bumps the exponent (and turns the largest finite values into infinity).
constexpr unsigned short from_float_rn(float value) noexcept {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    if ((bits & 0x7FFF'FFFFu) > 0x7F80'0000u) return canonical_nan;
    return static_cast<unsigned short>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

constexpr unsigned short from_float_rz(float value) noexcept {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    if ((bits & 0x7FFF'FFFFu) > 0x7F80'0000u) return canonical_nan;
    return static_cast<unsigned short>(bits >> 16);
}

// double -> bf16 with a single rounding: first round to odd at float precision (truncate, and set
// the last bit if anything was lost), then to nearest even at bf16 precision. Rounding to odd with
// at least two extra bits followed by rounding to nearest equals rounding to nearest directly.
inline unsigned short from_double_rn(double value) noexcept {
    if (std::isnan(value)) return canonical_nan;
    if (std::fabs(value) > static_cast<double>(std::numeric_limits<float>::max()))
        return static_cast<unsigned short>(std::signbit(value) ? 0xFF80u : 0x7F80u);
    const float nearest = static_cast<float>(value);
    if (static_cast<double>(nearest) == value) return from_float_rn(nearest);
    std::uint32_t bits = std::bit_cast<std::uint32_t>(nearest);
    if (std::fabs(static_cast<double>(nearest)) > std::fabs(value)) bits -= 1;  // truncated toward zero
    bits |= 1u;                                                                  // sticky bit
    return from_float_rn(std::bit_cast<float>(bits));
}

constexpr float to_float(unsigned short bits) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

}  // namespace bf16_bits

struct alignas(2) __nv_bfloat16 {
    unsigned short __x;

    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(const __nv_bfloat16_raw& raw) noexcept : __x(raw.x) {}
    constexpr __nv_bfloat16(float value) noexcept : __x(bf16_bits::from_float_rn(value)) {}
    __nv_bfloat16(double value) noexcept : __x(bf16_bits::from_double_rn(value)) {}
    __nv_bfloat16(int value) noexcept : __x(bf16_bits::from_double_rn(value)) {}
    __nv_bfloat16(unsigned int value) noexcept : __x(bf16_bits::from_double_rn(value)) {}
    __nv_bfloat16(short value) noexcept : __x(bf16_bits::from_double_rn(value)) {}
    __nv_bfloat16(unsigned short value) noexcept : __x(bf16_bits::from_double_rn(value)) {}

    constexpr operator __nv_bfloat16_raw() const noexcept { return {__x}; }
    constexpr operator float() const noexcept { return bf16_bits::to_float(__x); }
};

struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x;
    __nv_bfloat16 y;

    __nv_bfloat162() = default;
    constexpr __nv_bfloat162(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept : x(a), y(b) {}
    constexpr __nv_bfloat162(const __nv_bfloat162_raw& raw) noexcept
        : x(__nv_bfloat16_raw{raw.x}), y(__nv_bfloat16_raw{raw.y}) {}
    constexpr operator __nv_bfloat162_raw() const noexcept { return {x.__x, y.__x}; }
};

// --- Conversions -------------------------------------------------------------------------------
constexpr __nv_bfloat16 __float2bfloat16(float value) noexcept { return __nv_bfloat16(value); }
constexpr __nv_bfloat16 __float2bfloat16_rn(float value) noexcept { return __nv_bfloat16(value); }
constexpr __nv_bfloat16 __float2bfloat16_rz(float value) noexcept {
    return __nv_bfloat16_raw{bf16_bits::from_float_rz(value)};
}
inline __nv_bfloat16 __double2bfloat16(double value) noexcept { return __nv_bfloat16(value); }
inline __nv_bfloat16 __int2bfloat16_rn(int value) noexcept { return __nv_bfloat16(value); }
constexpr float __bfloat162float(__nv_bfloat16 value) noexcept { return static_cast<float>(value); }
constexpr unsigned short __bfloat16_as_ushort(__nv_bfloat16 value) noexcept { return value.__x; }
constexpr short __bfloat16_as_short(__nv_bfloat16 value) noexcept { return static_cast<short>(value.__x); }
constexpr __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) noexcept { return __nv_bfloat16_raw{bits}; }
constexpr __nv_bfloat16 __short_as_bfloat16(short bits) noexcept {
    return __nv_bfloat16_raw{static_cast<unsigned short>(bits)};
}

constexpr __nv_bfloat162 __floats2bfloat162_rn(float low, float high) noexcept {
    return {__nv_bfloat16(low), __nv_bfloat16(high)};
}
constexpr __nv_bfloat162 __float2bfloat162_rn(float value) noexcept {
    return {__nv_bfloat16(value), __nv_bfloat16(value)};
}
constexpr __nv_bfloat162 __float22bfloat162_rn(float2 value) noexcept {
    return {__nv_bfloat16(value.x), __nv_bfloat16(value.y)};
}
constexpr float2 __bfloat1622float2(__nv_bfloat162 value) noexcept {
    return {static_cast<float>(value.x), static_cast<float>(value.y)};
}
constexpr float __low2float(__nv_bfloat162 value) noexcept { return static_cast<float>(value.x); }
constexpr float __high2float(__nv_bfloat162 value) noexcept { return static_cast<float>(value.y); }
constexpr __nv_bfloat16 __low2bfloat16(__nv_bfloat162 value) noexcept { return value.x; }
constexpr __nv_bfloat16 __high2bfloat16(__nv_bfloat162 value) noexcept { return value.y; }
constexpr __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 low, __nv_bfloat16 high) noexcept { return {low, high}; }
constexpr __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 value) noexcept { return {value, value}; }

// --- Arithmetic (one rounding to bf16; see the header comment) ----------------------------------
constexpr __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) noexcept { return __nv_bfloat16(float(a) + float(b)); }
constexpr __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) noexcept { return __nv_bfloat16(float(a) - float(b)); }
constexpr __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) noexcept { return __nv_bfloat16(float(a) * float(b)); }
constexpr __nv_bfloat16 __hdiv(__nv_bfloat16 a, __nv_bfloat16 b) noexcept { return __nv_bfloat16(float(a) / float(b)); }
constexpr __nv_bfloat16 __hneg(__nv_bfloat16 a) noexcept {
    return __nv_bfloat16_raw{static_cast<unsigned short>(a.__x ^ 0x8000u)};
}
constexpr __nv_bfloat16 __habs(__nv_bfloat16 a) noexcept {
    return __nv_bfloat16_raw{static_cast<unsigned short>(a.__x & 0x7FFFu)};
}
constexpr __nv_bfloat162 __hadd2(__nv_bfloat162 a, __nv_bfloat162 b) noexcept {
    return {__hadd(a.x, b.x), __hadd(a.y, b.y)};
}
constexpr __nv_bfloat162 __hsub2(__nv_bfloat162 a, __nv_bfloat162 b) noexcept {
    return {__hsub(a.x, b.x), __hsub(a.y, b.y)};
}
constexpr __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) noexcept {
    return {__hmul(a.x, b.x), __hmul(a.y, b.y)};
}

constexpr __nv_bfloat16 operator+(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return __hadd(a, b); }
constexpr __nv_bfloat16 operator-(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return __hsub(a, b); }
constexpr __nv_bfloat16 operator*(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return __hmul(a, b); }
constexpr __nv_bfloat16 operator/(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return __hdiv(a, b); }
constexpr __nv_bfloat16 operator-(const __nv_bfloat16& a) noexcept { return __hneg(a); }
constexpr __nv_bfloat16 operator+(const __nv_bfloat16& a) noexcept { return a; }
constexpr __nv_bfloat16& operator+=(__nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return a = a + b; }
constexpr __nv_bfloat16& operator-=(__nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return a = a - b; }
constexpr __nv_bfloat16& operator*=(__nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return a = a * b; }
constexpr __nv_bfloat16& operator/=(__nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return a = a / b; }
constexpr bool operator==(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return float(a) == float(b); }
constexpr bool operator!=(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return float(a) != float(b); }
constexpr bool operator<(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return float(a) < float(b); }
constexpr bool operator<=(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return float(a) <= float(b); }
constexpr bool operator>(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return float(a) > float(b); }
constexpr bool operator>=(const __nv_bfloat16& a, const __nv_bfloat16& b) noexcept { return float(a) >= float(b); }

constexpr __nv_bfloat162 operator+(const __nv_bfloat162& a, const __nv_bfloat162& b) noexcept { return __hadd2(a, b); }
constexpr __nv_bfloat162 operator-(const __nv_bfloat162& a, const __nv_bfloat162& b) noexcept { return __hsub2(a, b); }
constexpr __nv_bfloat162 operator*(const __nv_bfloat162& a, const __nv_bfloat162& b) noexcept { return __hmul2(a, b); }

}  // namespace gemma3::cuda::emulator::api
