// The shape of one attention call, shared by the CPU op (ops/attention.hpp) and its CUDA twin
// (cuda/ops/attention.cuh). Plain host data without Eigen, so nvcc's translation units can use it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace gemma3 {

struct AttentionShape {
    std::int64_t batch = 0;
    std::int64_t seq = 0;
    std::int64_t heads = 0;
    std::int64_t kv_heads = 0;
    std::int64_t head_dim = 0;
    std::int64_t window = 0;  // 0 = full causal attention; else the keys visible to a query, itself included
    double scale = 1;         // the CUDA back end computes in fp32 and rounds it to float

    std::int64_t heads_per_kv() const { return heads / kv_heads; }
    std::int64_t tokens() const { return batch * seq; }
    // Keys visible to query i are [first_key(i), i].
    std::int64_t first_key(std::int64_t i) const { return window > 0 ? std::max<std::int64_t>(0, i - window + 1) : 0; }
    // Elements of one [batch, heads, seq, seq] score or probability tensor.
    std::size_t score_elements() const {
        return static_cast<std::size_t>(batch) * static_cast<std::size_t>(heads) * static_cast<std::size_t>(seq) *
               static_cast<std::size_t>(seq);
    }
};

}  // namespace gemma3
