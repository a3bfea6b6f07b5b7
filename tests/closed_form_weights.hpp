// The closed-form weights of the `seed_dims` fixture (tools/make_reference.py, closed_form()):
// value[i] = amplitude * (2 * (splitmix64(fnv1a64(name) + i) >> 11) * 2^-53 - 1) for the flat index i
// of each tensor. Integer hashing makes every value bit-identical to numpy's.
#pragma once

#include <gemma3/core/parameters.hpp>

#include <cmath>
#include <cstdint>
#include <string_view>

namespace gemma3::testing {

inline std::uint64_t fnv1a64(std::string_view text) {
    std::uint64_t h = 0xCBF29CE484222325ull;
    for (unsigned char c : text) h = (h ^ c) * 0x100000001B3ull;
    return h;
}

inline std::uint64_t splitmix64_finalize(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

inline double closed_form_amplitude(const ParameterTensor& t) {
    if (t.role == TensorRole::norm) return 0.2;
    if (t.role == TensorRole::embedding) return 1.0;
    return std::sqrt(3.0 / static_cast<double>(t.shape[1]));
}

template <ModelConfig C, class T>
void fill_closed_form(Parameters<C, T>& params) {
    for (const auto& t : parameter_tensors<C>()) {
        const std::uint64_t seed = fnv1a64(t.name);
        const double amplitude = closed_form_amplitude(t);
        T* out = params.data() + t.offset;
        const auto n = static_cast<std::int64_t>(t.numel());
#pragma omp parallel for schedule(static)
        for (std::int64_t i = 0; i < n; ++i) {
            const std::uint64_t bits = splitmix64_finalize(seed + static_cast<std::uint64_t>(i)) >> 11;
            out[i] = static_cast<T>(amplitude * (static_cast<double>(bits) * 0x1.0p-53 * 2.0 - 1.0));
        }
    }
}

}  // namespace gemma3::testing
