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

#include <gemma3/io/file_io.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
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
    // `min_tokens` of them, and every id must be < vocab_size (ids are read as unsigned, so a
    // uint32 id of 2^31 or more is out of range, not a negative number).
    TokenFile(const std::filesystem::path& path, std::int64_t vocab_size, std::int64_t min_tokens)
        : file_(open(path, vocab_size)), element_bytes_(token_bytes(vocab_size)) {
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
            const std::uint32_t id = stored_id(i);
            if (id >= static_cast<std::uint64_t>(vocab_size)) {
                throw DataError(name + ": token " + std::to_string(i) + " is " + std::to_string(id) + " (at byte offset " +
                                std::to_string(i * element_bytes_) + "), outside the vocabulary [0, " +
                                std::to_string(vocab_size) + ")");
            }
        }
    }

    std::int64_t size() const { return size_; }
    const std::filesystem::path& path() const { return file_.path(); }

    // Every id was checked to be below the vocabulary size, which fits in int32.
    std::int32_t operator[](std::int64_t i) const { return static_cast<std::int32_t>(stored_id(i)); }

private:
    std::uint32_t stored_id(std::int64_t i) const {
        const std::byte* p = file_.bytes().data() + i * element_bytes_;
        if (element_bytes_ == 2) {
            return std::to_integer<std::uint32_t>(p[0]) | (std::to_integer<std::uint32_t>(p[1]) << 8);
        }
        std::uint32_t v = 0;
        for (int b = 3; b >= 0; --b) v = (v << 8) | std::to_integer<std::uint32_t>(p[b]);
        return v;
    }

    static MappedFile open(const std::filesystem::path& path, std::int64_t vocab_size) {
        // Ids are int32 in the model; a larger vocabulary could not be represented.
        if (vocab_size < 1 || vocab_size > std::int64_t{1} << 31) {
            throw DataError(path.string() + ": vocabulary size " + std::to_string(vocab_size) +
                            " is outside [1, 2^31] (token ids are int32)");
        }
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
    // The file must hold at least one window of block_size + 1 tokens (x and the shifted y).
    BatchSampler(const TokenFile& file, std::int64_t batch_size, std::int64_t block_size, std::uint64_t seed)
        : file_(&file), batch_(batch_size), block_(block_size), rng_(seed) {
        if (batch_size < 1 || block_size < 1) {
            throw DataError("batch sampler: batch_size " + std::to_string(batch_size) + " and block_size " +
                            std::to_string(block_size) + " must both be at least 1");
        }
        if (file.size() <= block_size) {
            throw DataError(file.path().string() + ": holds " + std::to_string(file.size()) +
                            " tokens, fewer than the block_size + 1 = " +
                            (block_size == INT64_MAX ? std::string("2^63") : std::to_string(block_size + 1)) +
                            " one training window needs");
        }
        if (batch_size > INT64_MAX / block_size) {
            throw DataError("batch sampler: batch_size " + std::to_string(batch_size) + " x block_size " +
                            std::to_string(block_size) + " tokens overflows");
        }
    }

    std::int64_t tokens_per_batch() const { return batch_ * block_; }

    // Fills x and y (batch_size * block_size each, row-major).
    void next(std::span<std::int32_t> x, std::span<std::int32_t> y) {
        const auto needed = static_cast<std::uint64_t>(tokens_per_batch());
        if (x.size() != needed || y.size() != needed) {
            throw DataError("batch sampler: x and y hold " + std::to_string(x.size()) + " and " +
                            std::to_string(y.size()) + " ids, a batch is " + std::to_string(needed));
        }
        const auto starts = static_cast<std::uint64_t>(file_->size() - block_);  // offsets [0, size - block), >= 1
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
    // All or nothing: a malformed state leaves the generator as it was (the standard library reads
    // the numbers straight into the engine, so they go into a copy first).
    void restore(const std::string& state) {
        auto restored = parse_state(state);
        if (!restored) {
            throw DataError("cannot restore the batch sampler: malformed generator state (" +
                            std::to_string(state.size()) + " bytes)");
        }
        rng_ = *restored;
    }

    // Whether `state` is a generator state that restore() accepts.
    static bool is_valid_state(const std::string& state) { return parse_state(state).has_value(); }

private:
    static std::optional<std::mt19937_64> parse_state(const std::string& state) {
        std::istringstream in(state);
        std::mt19937_64 restored;
        in >> restored;
        if (!in || !(in >> std::ws).eof()) return std::nullopt;
        return restored;
    }

    const TokenFile* file_;
    std::int64_t batch_, block_;
    std::mt19937_64 rng_;
};

}  // namespace gemma3
