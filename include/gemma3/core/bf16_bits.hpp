// bfloat16 <-> float on the bits: exact widening and round-to-nearest-even narrowing. The one
// definition of bf16 rounding in the library: the safetensors reader and writer, the CPU's bf16
// products (core/blas.hpp) and the CUDA back end's host side use it. constexpr and dependency-free
// (the CUDA back end compiles it with nvcc); written on the bits, so loops over it vectorize.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace gemma3 {

// bfloat16 is the top half of an IEEE binary32: 1 sign bit, the same 8 exponent bits, 7 mantissa
// bits. Widening is exact: shift the bits up by 16.
constexpr float bf16_to_float(std::uint16_t bits) {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

// Narrowing rounds to nearest, ties to even (what PyTorch does). Because the exponent range is the
// same as float's, this is one integer addition on the bits: adding 0x7FFF plus the lowest kept
// bit carries into the kept half exactly when the dropped half is above the midpoint, or at the
// midpoint with an odd kept half. A carry out of the mantissa correctly bumps the exponent, and
// from the largest finite values it correctly produces infinity. +-inf map to +-inf. NaN would be
// corrupted by the addition (it could carry into inf), so it is handled first: it keeps its sign
// and the top of its payload, with the quiet bit set so that it stays a NaN even if the payload
// was only in the dropped bits.
constexpr std::uint16_t float_to_bf16(float value) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    if ((bits & 0x7FFF'FFFFu) > 0x7F80'0000u) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
    const std::uint32_t lowest_kept_bit = (bits >> 16) & 1u;
    return static_cast<std::uint16_t>((bits + 0x7FFFu + lowest_kept_bit) >> 16);
}

// x rounded to the nearest bf16 value, kept in fp32 (the widened bf16 products' operands). On the
// bits, so that loops over it vectorize: Eigen's float -> bfloat16 -> float round trip runs at half
// its speed (45 against 22 ms for 32 M values on one core).
constexpr float round_to_bf16_value(float x) { return bf16_to_float(float_to_bf16(x)); }

// True when each of the `count` values is a bf16 value already (its low 16 bits are zero), so that
// round_to_bf16_value would give it back unchanged: weights read from a bf16 checkpoint are. (A signalling
// NaN counts too, though rounding would make it quiet: a NaN weight gives NaN products either way.)
// Checked in blocks that vectorize, stopping at the first block with a value outside bf16: fp32
// weights that AdamW has just moved are found out within the first block.
inline bool all_bf16_values(const float* values, std::size_t count) {
    constexpr std::size_t block = 4096;
    for (std::size_t start = 0; start < count; start += block) {
        const std::size_t end = std::min(count, start + block);
        std::uint32_t low_bits = 0;
        for (std::size_t i = start; i < end; ++i) low_bits |= std::bit_cast<std::uint32_t>(values[i]) & 0xFFFFu;
        if (low_bits != 0) return false;
    }
    return true;
}

}  // namespace gemma3
