// Helpers for CUDA kernel tests that build for both backends (see include/gemma3/cuda/runtime.hpp,
// "One test binary"). A test source includes this header and declares its cases with
// GEMMA3_CUDA_TEST_CASE, which names each case after its backend ("[emulated] ..." or
// "[device] ...") and puts it in the doctest suite of that name, so that the two copies of a case
// coexist in one executable and main() can select them.
#pragma once

#include <gemma3/cuda/runtime.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#define GEMMA3_CUDA_TEST_CASE(name) \
    TEST_CASE("[" GEMMA3_CUDA_BACKEND_NAME "] " name* doctest::test_suite(GEMMA3_CUDA_BACKEND_NAME))

GEMMA3_CUDA_NAMESPACE_BEGIN
namespace test {

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Uniform floats in [low, high), reproducible from the seed.
inline std::vector<float> random_floats(std::size_t count, float low, float high, std::uint32_t seed) {
    std::mt19937 generator(seed);
    std::uniform_real_distribution<float> distribution(low, high);
    std::vector<float> values(count);
    for (float& value : values) value = distribution(generator);
    return values;
}

// The bit pattern of a bf16 value and back (host-callable in cuda_bf16.h and in the emulator).
inline std::uint16_t bf16_bits(__nv_bfloat16 value) { return __bfloat16_as_ushort(value); }
inline __nv_bfloat16 bf16_from_bits(std::uint16_t bits) { return __ushort_as_bfloat16(bits); }

// The message of the exception `action` throws ("" if it throws none), checking its type.
template <class Exception, class Action>
std::string thrown_message(Action&& action) {
    try {
        action();
    } catch (const Exception& error) {
        return error.what();
    }
    return "";
}

}  // namespace test
GEMMA3_CUDA_NAMESPACE_END
