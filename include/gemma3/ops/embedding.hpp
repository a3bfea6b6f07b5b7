// Token embedding: out[n, :] = table[token[n], :] * scale, with scale = sqrt(emb_dim) in Gemma.
//
// docs/model.md §3.1. The scale is applied in the compute type: 25.298221... in fp32/fp64 (HF rounds it to
// 25.25 only when the weights themselves are bf16).
#pragma once

#include <gemma3/core/tensor.hpp>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

namespace gemma3 {

// Throws std::out_of_range naming the first position whose id is not in [0, vocab_size). The one
// id check of the library: embedding inputs ("token id") and loss targets ("target id") alike.
inline void check_token_ids(std::span<const std::int32_t> tokens, Index vocab_size, const char* what = "token id") {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= vocab_size) {
            throw std::out_of_range(std::string(what) + " " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                                    " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
        }
    }
}

template <class T>
void embedding_forward(ConstMatrixView<T> table, std::span<const std::int32_t> tokens, T scale, MatrixView<T> out) {
    const Index n = static_cast<Index>(tokens.size());
#pragma omp parallel for schedule(static) if (n > 1)  // one row: as rmsnorm_forward
    for (Index i = 0; i < n; ++i) {
        out.row(i) = table.row(tokens[static_cast<std::size_t>(i)]) * scale;
    }
}

// Scatter-add: d_table[token[n], :] += scale * d_out[n, :]. Rows that appear several times
// accumulate; the loop is serial over positions so the sum order (and the result) is deterministic.
template <class T>
void embedding_backward(std::span<const std::int32_t> tokens, T scale, ConstMatrixView<T> d_out,
                        MatrixView<T> d_table) {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        d_table.row(tokens[i]) += scale * d_out.row(static_cast<Index>(i));
    }
}

}  // namespace gemma3
