// Training data in the seed's format, and its batch sampler (docs/model.md §8.1-8.2).
//
// A token file is a flat, headerless array of little-endian token ids: uint16 when the vocabulary
// fits (<= 65,536 ids, GPT-2's 50,257 does), uint32 otherwise. The seed's files are `train.bin` and
// `validation.bin`. Files are memory-mapped and fully checked when opened.
//
// Batches are nanoGPT-style: batch_size windows of block_size + 1 tokens at uniformly random
// offsets, x = window[0:block], y = window[1:block+1], drawn with replacement from a seeded
// generator whose state can be saved and restored (it is part of a checkpoint).
#pragma once

#include "file_io.hpp"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>

namespace gemma3 {

class DataError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Bytes per token id in a token file for this vocabulary.
inline int token_bytes(std::int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

class TokenFile {
public:
    // Opens and validates `path`: it must exist, be non-empty, hold a whole number of ids, at least
    // `min_tokens` of them, and every id must be < vocab_size.
    TokenFile(const std::filesystem::path& path, std::int64_t vocab_size, std::int64_t min_tokens)
        : file_(open(path)), element_bytes_(token_bytes(vocab_size)) {
        const std::string name = path.string();
        const auto bytes = file_.bytes();
        if (bytes.empty()) throw DataError(name + ": the token file is empty");
        if (bytes.size() % static_cast<std::size_t>(element_bytes_) != 0) {
            throw DataError(name + ": " + std::to_string(bytes.size()) + " bytes is not a multiple of " +
                            std::to_string(element_bytes_) + " (uint" + std::to_string(8 * element_bytes_) +
                            " token ids for a vocabulary of " + std::to_string(vocab_size) + ")");
        }
        size_ = static_cast<std::int64_t>(bytes.size()) / element_bytes_;
        if (size_ < min_tokens) {
            throw DataError(name + ": holds " + std::to_string(size_) + " tokens, fewer than the " +
                            std::to_string(min_tokens) + " one window of block_size + 1 needs");
        }
        for (std::int64_t i = 0; i < size_; ++i) {
            const std::int64_t id = (*this)[i];
            if (id >= vocab_size) {
                throw DataError(name + ": token " + std::to_string(i) + " is " + std::to_string(id) +
                                ", outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
            }
        }
    }

    std::int64_t size() const { return size_; }
    const std::filesystem::path& path() const { return file_.path(); }

    std::int32_t operator[](std::int64_t i) const {
        const std::byte* p = file_.bytes().data() + i * element_bytes_;
        if (element_bytes_ == 2) {
            return static_cast<std::int32_t>(std::to_integer<std::uint32_t>(p[0]) |
                                             (std::to_integer<std::uint32_t>(p[1]) << 8));
        }
        std::uint32_t v = 0;
        for (int b = 3; b >= 0; --b) v = (v << 8) | std::to_integer<std::uint32_t>(p[b]);
        return static_cast<std::int32_t>(v);
    }

private:
    static MappedFile open(const std::filesystem::path& path) {
        if (!std::filesystem::exists(path)) {
            throw DataError(path.string() + ": no such token file (prepare one with gemma3-prepare)");
        }
        return MappedFile(path);
    }

    MappedFile file_;
    int element_bytes_;
    std::int64_t size_ = 0;
};

// Uniform integers in [0, bound) from a 64-bit engine, by rejection (std::uniform_int_distribution
// is implementation-defined, and checkpoints must replay identically everywhere).
inline std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t bound) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    std::uint64_t x;
    do {
        x = rng();
    } while (x >= limit);
    return x % bound;
}

class BatchSampler {
public:
    BatchSampler(const TokenFile& file, std::int64_t batch_size, std::int64_t block_size, std::uint64_t seed)
        : file_(&file), batch_(batch_size), block_(block_size), rng_(seed) {}

    std::int64_t tokens_per_batch() const { return batch_ * block_; }

    // Fills x and y (batch_size * block_size each, row-major).
    void next(std::span<std::int32_t> x, std::span<std::int32_t> y) {
        const auto starts = static_cast<std::uint64_t>(file_->size() - block_);  // offsets [0, size - block)
        for (std::int64_t b = 0; b < batch_; ++b) {
            const auto start = static_cast<std::int64_t>(uniform_below(rng_, starts));
            for (std::int64_t t = 0; t < block_; ++t) {
                x[static_cast<std::size_t>(b * block_ + t)] = (*file_)[start + t];
                y[static_cast<std::size_t>(b * block_ + t)] = (*file_)[start + t + 1];
            }
        }
    }

    // The generator's state as text (the standard's portable representation of mt19937_64).
    std::string state() const {
        std::ostringstream out;
        out << rng_;
        return out.str();
    }
    void restore(const std::string& state) {
        std::istringstream in(state);
        in >> rng_;
        if (!in) throw DataError("cannot restore the batch sampler: malformed generator state");
    }

private:
    const TokenFile* file_;
    std::int64_t batch_, block_;
    std::mt19937_64 rng_;
};

}  // namespace gemma3
