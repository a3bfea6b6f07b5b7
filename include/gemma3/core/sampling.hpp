// Sampling a token from logits (temperature, top-k, top-p, seeded) and the generate() loop, shared by
// the CPU generator (generation.hpp) and the CUDA one (cuda/generation.cuh), so both sample the same
// token from the same logits. No Eigen here: nvcc's translation units include it too.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace gemma3 {

// The checks every generator (CPU and CUDA) makes before appending n tokens to a cache holding
// `length` of at most `max_positions`: at least one token, and room for all of them.
inline void check_generator_append(std::int64_t n, std::int64_t length, std::int64_t max_positions,
                                   std::int64_t context_length) {
    if (n == 0) throw std::invalid_argument("Generator::append: no tokens");
    if (length + n > max_positions) {
        throw std::length_error("Generator::append: " + std::to_string(length + n) +
                                " positions exceed the cache's limit of " + std::to_string(max_positions) +
                                " (context_length " + std::to_string(context_length) + ")");
    }
}

struct SamplingSettings {
    double temperature = 1.0;  // 0: greedy (argmax)
    int top_k = 0;             // keep the k most likely tokens; 0: all
    double top_p = 1.0;        // keep the smallest set whose probability reaches p; 1: all
    std::uint64_t seed = 0;
};

class TokenSampler {
public:
    explicit TokenSampler(SamplingSettings settings) : settings_(settings), rng_(settings.seed) {
        if (!(settings.temperature >= 0)) throw std::invalid_argument("temperature must be >= 0");
        if (settings.top_k < 0) throw std::invalid_argument("top_k must be >= 0");
        if (!(settings.top_p > 0 && settings.top_p <= 1)) throw std::invalid_argument("top_p must be in (0, 1]");
    }

    template <class T>
    std::int32_t sample(std::span<const T> logits) {
        const auto vocab = static_cast<std::int32_t>(logits.size());
        if (settings_.temperature == 0) {
            return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        }
        candidates_.resize(logits.size());
        for (std::int32_t i = 0; i < vocab; ++i) candidates_[static_cast<std::size_t>(i)] = {static_cast<double>(logits[static_cast<std::size_t>(i)]) / settings_.temperature, i};
        const auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
        std::size_t keep = candidates_.size();
        if (settings_.top_k > 0 && static_cast<std::size_t>(settings_.top_k) < keep) {
            keep = static_cast<std::size_t>(settings_.top_k);
            std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(keep), candidates_.end(), by_logit);
        } else {
            std::sort(candidates_.begin(), candidates_.end(), by_logit);
        }
        const double max = candidates_[0].first;
        double total = 0;
        for (std::size_t i = 0; i < keep; ++i) total += (candidates_[i].first = std::exp(candidates_[i].first - max));
        if (settings_.top_p < 1) {  // candidates are sorted by probability
            double cumulative = 0;
            std::size_t i = 0;
            while (i < keep && cumulative < settings_.top_p * total) cumulative += candidates_[i++].first;
            keep = std::max<std::size_t>(i, 1);
            total = cumulative;
        }
        // Uniform in [0, total) from 53 random bits.
        const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
        double cumulative = 0;
        for (std::size_t i = 0; i < keep; ++i) {
            cumulative += candidates_[i].first;
            if (u < cumulative) return candidates_[i].second;
        }
        return candidates_[keep - 1].second;
    }

private:
    SamplingSettings settings_;
    std::mt19937_64 rng_;
    std::vector<std::pair<double, std::int32_t>> candidates_;
};

// Prefills `prompt`, then samples up to max_new_tokens, calling on_token for each new token as it
// is produced. Stops early at stop_token (not emitted) when it is >= 0. Returns the new tokens.
// `generator` is a Generator of the CPU (generation.hpp) or of the GPU (cuda/generation.cuh): any
// type with append(tokens) returning the last token's logits as a row (data(), cols()), length()
// and cache().max_positions().
template <class G>
std::vector<std::int32_t> generate(G& generator, std::span<const std::int32_t> prompt, std::int64_t max_new_tokens,
                                   TokenSampler& sampler, std::int32_t stop_token,
                                   const std::function<void(std::int32_t)>& on_token = {}) {
    std::vector<std::int32_t> out;
    if (max_new_tokens <= 0) return out;
    const auto sample = [&](const auto& logits) {
        using T = std::remove_cvref_t<decltype(*logits.data())>;
        return sampler.sample(std::span<const T>(logits.data(), static_cast<std::size_t>(logits.cols())));
    };
    std::int32_t next = sample(generator.append(prompt));
    for (std::int64_t i = 0; i < max_new_tokens && next != stop_token; ++i) {
        out.push_back(next);
        if (on_token) on_token(next);
        if (i + 1 == max_new_tokens || generator.length() >= generator.cache().max_positions()) break;
        next = sample(generator.append(std::span<const std::int32_t>(&out.back(), 1)));
    }
    return out;
}

}  // namespace gemma3
