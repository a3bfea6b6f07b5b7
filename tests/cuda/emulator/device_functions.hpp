// The device-side API of the CUDA emulator: barriers, warp shuffles and votes, atomics, and the
// math and bit intrinsics our kernels use. Semantics follow the CUDA C++ Programming Guide and
// PTX ISA; where the device leaves a result undefined the emulator reports a kernel fault instead:
//  - a warp intrinsic's mask must name the calling lane and only lanes that exist (a partial last
//    warp has fewer than 32 lanes); every lane it names must arrive at the same intrinsic with the
//    same mask and width, and none may have exited;
//  - a shuffle that reads a lane not named in the mask;
//  - an atomic on a null or misaligned address.
// Not provided: __activemask (fibers do not run in lock step, so "currently active" has no
// meaning), __match_*_sync, __reduce_*_sync, cooperative groups, clock counters.
// Atomics are std::atomic_ref operations (sequentially consistent), so they are real atomics when
// blocks run on several OS threads; __threadfence is a sequentially consistent fence.
// Math functions use the C library (correctly rounded or close to it), so the fast intrinsics
// (__expf, __fdividef, ...) are more accurate here than on the device: compare with tolerances.
#pragma once

#include "bfloat16.hpp"
#include "scheduler.hpp"
#include "types.hpp"

#include <atomic>
#include <bit>
#include <climits>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <limits>
#include <source_location>
#include <type_traits>

namespace gemma3::cuda::emulator {
namespace detail {

template <class T>
concept WarpValue = std::is_trivially_copyable_v<T> && sizeof(T) <= 8 && !std::is_pointer_v<T>;

template <WarpValue T>
std::uint64_t pack_warp_value(const T& value) noexcept {
    std::uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    return bits;
}

template <WarpValue T>
T unpack_warp_value(std::uint64_t bits) noexcept {
    T value;
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

template <class T>
std::atomic_ref<T> atomic_at(T* address, const char* intrinsic, const std::source_location& where) {
    if (address == nullptr || reinterpret_cast<std::uintptr_t>(address) % std::atomic_ref<T>::required_alignment != 0) {
        const std::string problem = address == nullptr ? "null address" : "misaligned address";
        if (tls_thread != nullptr) kernel_fault(*tls_thread, intrinsic, where, problem);
        throw std::logic_error(std::string(intrinsic) + " at " + format_site(where) + ": " + problem);
    }
    return std::atomic_ref<T>(*address);
}

// old = *address; *address = update(old), atomically; returns old.
template <class T, class Update>
T atomic_update(T* address, const char* intrinsic, const std::source_location& where, Update update) {
    std::atomic_ref<T> target = atomic_at(address, intrinsic, where);
    T old = target.load();
    while (!target.compare_exchange_weak(old, update(old))) {
    }
    return old;
}

template <class T>
T atomic_cas(T* address, T compare, T value, const std::source_location& where) {
    atomic_at(address, "atomicCAS", where).compare_exchange_strong(compare, value);
    return compare;  // holds the old value whether or not the exchange happened
}

}  // namespace detail

namespace api {

inline constexpr int warpSize = 32;

// --- Block barriers ------------------------------------------------------------------------------
inline void __syncthreads(std::source_location where = std::source_location::current()) {
    detail::block_barrier(detail::BarrierKind::plain, 0, where);
}
inline int __syncthreads_count(int predicate, std::source_location where = std::source_location::current()) {
    return detail::block_barrier(detail::BarrierKind::count, predicate, where);
}
inline int __syncthreads_and(int predicate, std::source_location where = std::source_location::current()) {
    return detail::block_barrier(detail::BarrierKind::all, predicate, where);
}
inline int __syncthreads_or(int predicate, std::source_location where = std::source_location::current()) {
    return detail::block_barrier(detail::BarrierKind::any, predicate, where);
}

inline void __threadfence() noexcept { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() noexcept { std::atomic_thread_fence(std::memory_order_seq_cst); }

[[noreturn]] inline void __trap(std::source_location where = std::source_location::current()) {
    detail::kernel_fault(detail::current_thread("__trap", where), "__trap", where, "the kernel trapped");
}

// --- Warp collectives ----------------------------------------------------------------------------
inline void __syncwarp(unsigned int mask = 0xFFFF'FFFFu, std::source_location where = std::source_location::current()) {
    detail::warp_collective(detail::WarpOp::syncwarp, mask, 0, 0, warpSize, where);
}

template <detail::WarpValue T>
T __shfl_sync(unsigned int mask, T var, int srcLane, int width = warpSize,
              std::source_location where = std::source_location::current()) {
    return detail::unpack_warp_value<T>(detail::warp_collective(detail::WarpOp::shfl_idx, mask,
                                                                detail::pack_warp_value(var), srcLane, width, where));
}
template <detail::WarpValue T>
T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize,
                 std::source_location where = std::source_location::current()) {
    return detail::unpack_warp_value<T>(detail::warp_collective(
        detail::WarpOp::shfl_up, mask, detail::pack_warp_value(var), static_cast<int>(delta & 31u), width, where));
}
template <detail::WarpValue T>
T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize,
                   std::source_location where = std::source_location::current()) {
    return detail::unpack_warp_value<T>(detail::warp_collective(
        detail::WarpOp::shfl_down, mask, detail::pack_warp_value(var), static_cast<int>(delta & 31u), width, where));
}
template <detail::WarpValue T>
T __shfl_xor_sync(unsigned int mask, T var, int laneMask, int width = warpSize,
                  std::source_location where = std::source_location::current()) {
    return detail::unpack_warp_value<T>(detail::warp_collective(detail::WarpOp::shfl_xor, mask,
                                                                detail::pack_warp_value(var), laneMask, width, where));
}

inline unsigned int __ballot_sync(unsigned int mask, int predicate,
                                  std::source_location where = std::source_location::current()) {
    return static_cast<unsigned int>(
        detail::warp_collective(detail::WarpOp::ballot, mask, predicate != 0 ? 1 : 0, 0, warpSize, where));
}
inline int __any_sync(unsigned int mask, int predicate, std::source_location where = std::source_location::current()) {
    return static_cast<int>(detail::warp_collective(detail::WarpOp::any, mask, predicate != 0 ? 1 : 0, 0, warpSize, where));
}
inline int __all_sync(unsigned int mask, int predicate, std::source_location where = std::source_location::current()) {
    return static_cast<int>(detail::warp_collective(detail::WarpOp::all, mask, predicate != 0 ? 1 : 0, 0, warpSize, where));
}

// --- Atomics (return the old value) ------------------------------------------------------------
#define GEMMA3_EMULATOR_WHERE std::source_location where = std::source_location::current()

inline int atomicAdd(int* address, int value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicAdd", where).fetch_add(value);
}
inline unsigned int atomicAdd(unsigned int* address, unsigned int value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicAdd", where).fetch_add(value);
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicAdd", where).fetch_add(value);
}
inline float atomicAdd(float* address, float value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicAdd", where).fetch_add(value);
}
inline double atomicAdd(double* address, double value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicAdd", where).fetch_add(value);
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* address, __nv_bfloat16 value, GEMMA3_EMULATOR_WHERE) {
    // The member's address only once the pointer is known to be valid (atomic_update checks it).
    unsigned short* bits_address = address == nullptr ? nullptr : &address->__x;
    const unsigned short old = detail::atomic_update(bits_address, "atomicAdd", where, [value](unsigned short bits) {
        return __bfloat16_as_ushort(__ushort_as_bfloat16(bits) + value);
    });
    return __ushort_as_bfloat16(old);
}

inline int atomicSub(int* address, int value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicSub", where).fetch_sub(value);
}
inline unsigned int atomicSub(unsigned int* address, unsigned int value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicSub", where).fetch_sub(value);
}

inline int atomicExch(int* address, int value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicExch", where).exchange(value);
}
inline unsigned int atomicExch(unsigned int* address, unsigned int value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicExch", where).exchange(value);
}
inline unsigned long long atomicExch(unsigned long long* address, unsigned long long value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicExch", where).exchange(value);
}
inline float atomicExch(float* address, float value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_at(address, "atomicExch", where).exchange(value);
}

inline int atomicCAS(int* address, int compare, int value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_cas(address, compare, value, where);
}
inline unsigned int atomicCAS(unsigned int* address, unsigned int compare, unsigned int value, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_cas(address, compare, value, where);
}
inline unsigned long long atomicCAS(unsigned long long* address, unsigned long long compare, unsigned long long value,
                                    GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_cas(address, compare, value, where);
}
inline unsigned short atomicCAS(unsigned short* address, unsigned short compare, unsigned short value,
                                GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_cas(address, compare, value, where);
}

#define GEMMA3_EMULATOR_MIN_MAX(type)                                                                            \
    inline type atomicMax(type* address, type value, GEMMA3_EMULATOR_WHERE) {                                    \
        return detail::atomic_update(address, "atomicMax", where, [value](type old) { return old < value ? value : old; }); \
    }                                                                                                            \
    inline type atomicMin(type* address, type value, GEMMA3_EMULATOR_WHERE) {                                    \
        return detail::atomic_update(address, "atomicMin", where, [value](type old) { return value < old ? value : old; }); \
    }
GEMMA3_EMULATOR_MIN_MAX(int)
GEMMA3_EMULATOR_MIN_MAX(unsigned int)
GEMMA3_EMULATOR_MIN_MAX(long long)
GEMMA3_EMULATOR_MIN_MAX(unsigned long long)
#undef GEMMA3_EMULATOR_MIN_MAX

#define GEMMA3_EMULATOR_BITWISE(type)                                                               \
    inline type atomicAnd(type* address, type value, GEMMA3_EMULATOR_WHERE) {                       \
        return detail::atomic_at(address, "atomicAnd", where).fetch_and(value);                     \
    }                                                                                               \
    inline type atomicOr(type* address, type value, GEMMA3_EMULATOR_WHERE) {                        \
        return detail::atomic_at(address, "atomicOr", where).fetch_or(value);                       \
    }                                                                                               \
    inline type atomicXor(type* address, type value, GEMMA3_EMULATOR_WHERE) {                       \
        return detail::atomic_at(address, "atomicXor", where).fetch_xor(value);                     \
    }
GEMMA3_EMULATOR_BITWISE(int)
GEMMA3_EMULATOR_BITWISE(unsigned int)
GEMMA3_EMULATOR_BITWISE(unsigned long long)
#undef GEMMA3_EMULATOR_BITWISE

// ((old >= limit) ? 0 : old + 1) and (((old == 0) || (old > limit)) ? limit : old - 1), as documented.
inline unsigned int atomicInc(unsigned int* address, unsigned int limit, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_update(address, "atomicInc", where, [limit](unsigned int old) { return old >= limit ? 0u : old + 1u; });
}
inline unsigned int atomicDec(unsigned int* address, unsigned int limit, GEMMA3_EMULATOR_WHERE) {
    return detail::atomic_update(address, "atomicDec", where,
                                 [limit](unsigned int old) { return old == 0u || old > limit ? limit : old - 1u; });
}

#undef GEMMA3_EMULATOR_WHERE

// --- Loads ----------------------------------------------------------------------------------------
template <class T>
T __ldg(const T* address) {
    return *address;
}

// --- Math -------------------------------------------------------------------------------------------
inline float rsqrtf(float x) noexcept { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) noexcept { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) noexcept { return a / b; }
inline float __frcp_rn(float x) noexcept { return 1.0f / x; }
inline float __fsqrt_rn(float x) noexcept { return std::sqrt(x); }
inline float __frsqrt_rn(float x) noexcept { return 1.0f / std::sqrt(x); }
inline float __fadd_rn(float a, float b) noexcept { return a + b; }
inline float __fsub_rn(float a, float b) noexcept { return a - b; }
inline float __fmul_rn(float a, float b) noexcept { return a * b; }
inline float __fdiv_rn(float a, float b) noexcept { return a / b; }
inline float __fmaf_rn(float a, float b, float c) noexcept { return std::fma(a, b, c); }
inline float __saturatef(float x) noexcept { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0

// Conversions saturate like the device's cvt.rni.s32.f32 (NaN -> 0).
inline int __float2int_rn(float x) noexcept {
    if (std::isnan(x)) return 0;
    const float r = std::nearbyint(x);
    if (r >= 2147483648.0f) return INT_MAX;
    if (r < -2147483648.0f) return INT_MIN;
    return static_cast<int>(r);
}
inline int __float2int_rz(float x) noexcept {
    if (std::isnan(x)) return 0;
    const float r = std::trunc(x);
    if (r >= 2147483648.0f) return INT_MAX;
    if (r < -2147483648.0f) return INT_MIN;
    return static_cast<int>(r);
}
inline float __int2float_rn(int x) noexcept { return static_cast<float>(x); }
inline int __float_as_int(float x) noexcept { return std::bit_cast<int>(x); }
inline unsigned int __float_as_uint(float x) noexcept { return std::bit_cast<unsigned int>(x); }
inline float __int_as_float(int x) noexcept { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned int x) noexcept { return std::bit_cast<float>(x); }

// min/max as CUDA declares them for host and device code.
inline int min(int a, int b) noexcept { return a < b ? a : b; }
inline int max(int a, int b) noexcept { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) noexcept { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) noexcept { return a > b ? a : b; }
inline unsigned int min(int a, unsigned int b) noexcept { return min(static_cast<unsigned int>(a), b); }
inline unsigned int max(int a, unsigned int b) noexcept { return max(static_cast<unsigned int>(a), b); }
inline unsigned int min(unsigned int a, int b) noexcept { return min(a, static_cast<unsigned int>(b)); }
inline unsigned int max(unsigned int a, int b) noexcept { return max(a, static_cast<unsigned int>(b)); }
inline long long min(long long a, long long b) noexcept { return a < b ? a : b; }
inline long long max(long long a, long long b) noexcept { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) noexcept { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) noexcept { return a > b ? a : b; }
inline float min(float a, float b) noexcept { return std::fmin(a, b); }
inline float max(float a, float b) noexcept { return std::fmax(a, b); }
inline double min(double a, double b) noexcept { return std::fmin(a, b); }
inline double max(double a, double b) noexcept { return std::fmax(a, b); }

// --- Bits -------------------------------------------------------------------------------------------
inline int __popc(unsigned int x) noexcept { return std::popcount(x); }
inline int __popcll(unsigned long long x) noexcept { return std::popcount(x); }
inline int __clz(int x) noexcept { return std::countl_zero(static_cast<unsigned int>(x)); }
inline int __clzll(long long x) noexcept { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) noexcept { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned int>(x)) + 1; }
inline int __ffsll(long long x) noexcept {
    return x == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(x)) + 1;
}
inline unsigned int __brev(unsigned int x) noexcept {
    unsigned int reversed = 0;
    for (int bit = 0; bit < 32; ++bit) reversed |= ((x >> bit) & 1u) << (31 - bit);
    return reversed;
}

}  // namespace api

// The fast intrinsics whose names glibc's <math.h> already declares (as internal aliases that are
// not exported): cuda_emulator.hpp maps those names onto these functions with object-like macros.
namespace fast_math {
inline float exp(float x) noexcept { return std::exp(x); }
inline float exp10(float x) noexcept { return std::pow(10.0f, x); }
inline float log(float x) noexcept { return std::log(x); }
inline float log2(float x) noexcept { return std::log2(x); }
inline float log10(float x) noexcept { return std::log10(x); }
inline float sin(float x) noexcept { return std::sin(x); }
inline float cos(float x) noexcept { return std::cos(x); }
inline float tan(float x) noexcept { return std::tan(x); }
inline float pow(float x, float y) noexcept { return std::pow(x, y); }
inline void sincos(float x, float* s, float* c) noexcept {
    *s = std::sin(x);
    *c = std::cos(x);
}
}  // namespace fast_math

}  // namespace gemma3::cuda::emulator
