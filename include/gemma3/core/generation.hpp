// Text generation on the CPU: a KV cache, chunked prefill, single-token decode and sampling.
//
// The cache keeps one K and one V per key/value head (not per query head). A sliding layer keeps a
// ring buffer of exactly sliding_window positions (slot = position % window): its queries never
// look further back. A full layer keeps every position and grows as the sequence does, up to
// context_length. At 32,768 tokens that makes 15 of the seed's 18 layers cost 512 positions each.
//
// New tokens are processed in chunks. For each layer, a chunk's queries attend to two sets of keys:
// the cache as it was before the chunk (positions < p0) and the chunk's own keys; then the chunk's
// keys and values are written into the cache. So the ring never has to hold more than the window.
//
// The blocks are forward.hpp's block_forward, with attention against the cache. The weights are the
// model's own (float or double), or a PackedWeights copy in bf16 or blockwise int8 that decoding
// reads at half or about a quarter of fp32's bytes per token (ops/packed_linear.hpp). Sampling and the
// generate() loop are in sampling.hpp (shared with the CUDA generator, cuda/generation.cuh).
#pragma once

#include <gemma3/core/forward.hpp>
#include <gemma3/model.hpp>
#include <gemma3/ops/packed_linear.hpp>
#include <gemma3/core/sampling.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace gemma3 {

template <class T>
struct LayerKvCache {
    bool ring = false;  // sliding layer: slot = position % limit
    Index limit = 0;    // most slots this layer ever needs: window (sliding) or context (full)
    Index width = 0;    // kv_heads * head_dim
    Index used = 0;     // slots holding a position
    Buffer<T> k, v;     // [capacity, width]
    std::vector<std::int32_t> position;  // the position held by each slot

    Index capacity() const { return static_cast<Index>(position.size()); }

    // Makes room for positions [0, end).
    void reserve(Index end) {
        const Index need = std::min(end, limit);
        if (need <= capacity()) return;
        const Index grown = ring ? limit : std::min(limit, std::max(need, 2 * capacity()));
        k.resize(static_cast<std::size_t>(grown * width));
        v.resize(static_cast<std::size_t>(grown * width));
        position.resize(static_cast<std::size_t>(grown), -1);
    }
    Index slot(Index pos) const { return ring ? pos % limit : pos; }
};

template <ModelConfig C, class T>
class KvCache {
public:
    using D = Dims<C>;

    explicit KvCache(Index max_positions = D::context) : max_positions_(std::min<Index>(max_positions, D::context)) {
        for (int l = 0; l < D::layers; ++l) {
            auto& layer = layers_[static_cast<std::size_t>(l)];
            layer.ring = D::kind(l) == AttentionKind::sliding;
            layer.limit = layer.ring ? std::min<Index>(D::window, max_positions_) : max_positions_;
            layer.width = D::kv;
        }
    }

    LayerKvCache<T>& layer(int l) { return layers_[static_cast<std::size_t>(l)]; }
    const LayerKvCache<T>& layer(int l) const { return layers_[static_cast<std::size_t>(l)]; }
    Index length() const { return length_; }
    Index max_positions() const { return max_positions_; }
    void set_length(Index n) { length_ = n; }
    void reset() {
        length_ = 0;
        for (auto& l : layers_) {
            l.used = 0;
            std::fill(l.position.begin(), l.position.end(), -1);
        }
    }

    // Bytes of K and V holding positions now.
    std::size_t used_bytes() const {
        std::size_t slots = 0;
        for (const auto& l : layers_) slots += static_cast<std::size_t>(l.used);
        return 2 * slots * static_cast<std::size_t>(D::kv) * sizeof(T);
    }
    // Bytes allocated.
    std::size_t allocated_bytes() const {
        std::size_t slots = 0;
        for (const auto& l : layers_) slots += static_cast<std::size_t>(l.capacity());
        return 2 * slots * static_cast<std::size_t>(D::kv) * sizeof(T);
    }
    // The formula: K and V for kv_heads * head_dim values per position, min(window, n) positions on
    // a sliding layer and n on a full one.
    static std::size_t bytes_for(Index n) {
        std::size_t slots = 0;
        for (int l = 0; l < D::layers; ++l) {
            slots += static_cast<std::size_t>(D::kind(l) == AttentionKind::sliding ? std::min<Index>(n, D::window) : n);
        }
        return 2 * slots * static_cast<std::size_t>(D::kv) * sizeof(T);
    }

private:
    Index max_positions_;
    Index length_ = 0;
    std::array<LayerKvCache<T>, D::layers> layers_;
};

// Cache slots one task of attention_with_cache takes: small enough that a long cache splits into
// several tasks per thread (decoding one token has one query row per head and only kv_heads groups
// to share out), large enough that each task's products run at the GEMM's speed.
inline constexpr Index cache_key_span = 256;

namespace detail {
// One group's query rows against one set of keys: the scaled scores, masked, turned into exp(s - m)
// with m each row's largest visible score; writes m and the row sums of the exponentials, and the
// unnormalised output exp(S - m) V. Masked keys contribute exactly 0. A row that sees none of these
// keys gets m = lowest, sum 0 and output 0, so the combination below gives it weight 0.
template <class T, class Visible>
void attend_to_keys(ConstMatrixView<T> q, ConstMatrixView<T> keys, ConstMatrixView<T> values, T scale,
                    const Visible& visible, RowMatrix<T>& scores, T* row_max, T* row_sum, MatrixView<T> out) {
    const Index rows = q.rows(), count = keys.rows();
    const T lowest = std::numeric_limits<T>::lowest();
    scores.resize(rows, count);
    gemm(q, Op::none, keys, Op::transpose, matrix_view(scores.data(), rows, count), scale);
    for (Index row = 0; row < rows; ++row) {
        auto s = scores.row(row);
        T max = lowest;
        bool all_visible = true;
        for (Index c = 0; c < count; ++c) {
            if (visible(row, c)) {
                max = std::max(max, s(c));
            } else {
                all_visible = false;
            }
        }
        row_max[row] = max;
        if (max == lowest) {
            s.setZero();
            row_sum[row] = 0;
            continue;
        }
        s = (s.array() - max).exp().matrix();  // vectorised; masked entries are zeroed next
        if (!all_visible) {
            for (Index c = 0; c < count; ++c)
                if (!visible(row, c)) s(c) = 0;
        }
        row_sum[row] = s.sum();
    }
    gemm(matrix_view(scores.data(), rows, count), Op::none, values, Op::none, out);
}
}  // namespace detail

// Attention of a chunk of queries at positions [p0, p0 + n) against the cache (positions < p0) and
// the chunk's own keys. q [n, H*Dh], k_new/v_new [n, Hk*Dh]; out [n, H*Dh].
//
// The work is split like flash-decoding: for each kv group, the query rows of all its heads are
// stacked (so the group's cached K and V are read once, not once per head), and the keys are cut
// into the chunk's own keys plus spans of `span` cache slots. Each (group, span) task, run in
// parallel, computes its softmax pieces (row max m_s, row sum l_s of exp(S - m_s), output O_s);
// then each row combines them exactly: out = sum_s e^(m_s - M) O_s / sum_s e^(m_s - M) l_s, M the
// largest m_s. A 16,000-token cache thus spreads over every thread even with one kv head.
template <class T>
void attention_with_cache(ConstMatrixView<T> q, ConstMatrixView<T> k_new, ConstMatrixView<T> v_new,
                          const LayerKvCache<T>& cache, Index p0, const AttentionShape& s, MatrixView<T> out,
                          Index span = cache_key_span) {
    const Index n = q.rows(), dh = s.head_dim, groups = s.kv_heads, per_group = s.heads_per_kv();
    const Index rows = per_group * n;  // a group's stacked query rows: row j * n + r is head j of token r
    // Slots that can hold a position before p0: [0, p0) on a full layer (slot = position); the
    // whole ring on a sliding one once it has wrapped.
    const Index live = std::min(p0, cache.capacity());
    const Index cache_tasks = (live + span - 1) / span;
    const Index tasks = cache_tasks + 1;  // + the chunk's own keys
    const T scale = static_cast<T>(s.scale);
    RowMatrix<T> stacked(groups * rows, dh);
    RowMatrix<T> partial_out(groups * tasks * rows, dh);
    Buffer<T> partial_max(static_cast<std::size_t>(groups * tasks * rows)), partial_sum(partial_max.size());
    std::vector<Index> first(static_cast<std::size_t>(n));  // each token's first visible position
    for (Index r = 0; r < n; ++r) first[static_cast<std::size_t>(r)] = s.first_key(p0 + r);
    const std::int32_t* position = cache.position.data();
#pragma omp parallel
    {
#pragma omp for collapse(2) schedule(static)
        for (Index g = 0; g < groups; ++g) {
            for (Index j = 0; j < per_group; ++j) {
                stacked.middleRows(g * rows + j * n, n) = sub_view(q, 0, (g * per_group + j) * dh, n, dh);
            }
        }
        RowMatrix<T> scores;
#pragma omp for collapse(2) schedule(dynamic)
        for (Index g = 0; g < groups; ++g) {
            for (Index t = 0; t < tasks; ++t) {
                const auto q_g = const_view(stacked.data() + g * rows * dh, rows, dh);
                const Index at = (g * tasks + t) * rows;
                auto o = matrix_view(partial_out.data() + at * dh, rows, dh);
                T* m = partial_max.data() + at;
                T* l = partial_sum.data() + at;
                if (t == cache_tasks) {  // the chunk's own keys: causal, and within the window
                    const auto visible = [&](Index row, Index c) {
                        const Index r = row % n;
                        return c <= r && p0 + c >= first[static_cast<std::size_t>(r)];
                    };
                    detail::attend_to_keys(q_g, sub_view(k_new, 0, g * dh, n, dh), sub_view(v_new, 0, g * dh, n, dh),
                                           scale, visible, scores, m, l, o);
                } else {  // cache slots [c0, c0 + count): a position, and within the window
                    const Index c0 = t * span, count = std::min(span, live - c0);
                    const auto visible = [&](Index row, Index c) {
                        const std::int32_t pos = position[c0 + c];  // -1: an empty slot
                        return pos >= 0 && pos >= first[static_cast<std::size_t>(row % n)];
                    };
                    detail::attend_to_keys(q_g, const_view(cache.k.data() + c0 * cache.width + g * dh, count, dh, cache.width),
                                           const_view(cache.v.data() + c0 * cache.width + g * dh, count, dh, cache.width),
                                           scale, visible, scores, m, l, o);
                }
            }
        }
#pragma omp for collapse(2) schedule(static)
        for (Index g = 0; g < groups; ++g) {
            for (Index row = 0; row < rows; ++row) {
                T max = std::numeric_limits<T>::lowest();
                for (Index t = 0; t < tasks; ++t) max = std::max(max, partial_max[static_cast<std::size_t>((g * tasks + t) * rows + row)]);
                T sum = 0;
                auto o = out.row(row % n).segment((g * per_group + row / n) * dh, dh);
                o.setZero();
                for (Index t = 0; t < tasks; ++t) {
                    const Index at = (g * tasks + t) * rows + row;
                    const T weight = std::exp(partial_max[static_cast<std::size_t>(at)] - max);  // 0 for a task that saw no key
                    sum += weight * partial_sum[static_cast<std::size_t>(at)];
                    o += weight * partial_out.row(at);
                }
                o /= sum;  // > 0: every token sees at least itself
            }
        }
    }
}

// A model's weights packed for inference (bf16, or blockwise int8; ops/packed_linear.hpp), made once
// from fp32 weights. The four matrices of a block keep forward.hpp's member names (q_proj covers
// the adjacent q, k and v rows, gate_proj gate and up); norm weights stay fp32. A tied head is packed
// once and the embedding reads its rows.
struct PackedBlockWeights {
    const float* input_norm = nullptr;
    PackedMatrix q_proj;  // [q + 2 kv, D]
    const float* q_norm = nullptr;
    const float* k_norm = nullptr;
    PackedMatrix o_proj;  // [D, q]
    const float* post_attention_norm = nullptr;
    const float* pre_feedforward_norm = nullptr;
    PackedMatrix gate_proj;  // [2F, D]
    PackedMatrix down_proj;  // [D, F]
    const float* post_feedforward_norm = nullptr;
};

template <ModelConfig C>
class PackedWeights {
public:
    using D = Dims<C>;

    PackedWeights(const Weights<C, const float>& w, WeightFormat format) : format_(format) {
        const auto norm = [&](const float* p, Index n) {
            if (!p) return static_cast<const float*>(nullptr);
            const float* copy = norms_.data() + used_;
            std::copy_n(p, n, norms_.data() + used_);
            used_ += n;
            return copy;
        };
        norms_.resize(static_cast<std::size_t>(D::layers * (4 * D::model + 2 * D::head) + D::model));
        for (int l = 0; l < D::layers; ++l) {
            const auto& b = w.blocks[static_cast<std::size_t>(l)];
            auto& p = blocks_[static_cast<std::size_t>(l)];
            p.input_norm = norm(b.input_norm, D::model);
            p.q_norm = norm(b.q_norm, D::head);
            p.k_norm = norm(b.k_norm, D::head);
            p.post_attention_norm = norm(b.post_attention_norm, D::model);
            p.pre_feedforward_norm = norm(b.pre_feedforward_norm, D::model);
            p.post_feedforward_norm = norm(b.post_feedforward_norm, D::model);
            p.q_proj = PackedMatrix::pack(const_view(b.q_proj, D::qkv, D::model), format);
            p.o_proj = PackedMatrix::pack(const_view(b.o_proj, D::model, D::q), format);
            p.gate_proj = PackedMatrix::pack(const_view(b.gate_proj, 2 * D::ffn, D::model), format);
            p.down_proj = PackedMatrix::pack(const_view(b.down_proj, D::model, D::ffn), format);
        }
        final_norm_ = norm(w.final_norm, D::model);
        head_ = PackedMatrix::pack(const_view(w.lm_head, D::vocab, D::model), format);
        if (!C::tie_word_embeddings) embed_ = PackedMatrix::pack(const_view(w.embed, D::vocab, D::model), format);
    }
    PackedWeights(const PackedWeights&) = delete;  // the blocks point into norms_
    PackedWeights& operator=(const PackedWeights&) = delete;

    WeightFormat format() const { return format_; }
    const PackedBlockWeights& block(int l) const { return blocks_[static_cast<std::size_t>(l)]; }
    const PackedMatrix& embed() const { return C::tie_word_embeddings ? head_ : embed_; }
    const PackedMatrix& head() const { return head_; }
    const float* final_norm() const { return final_norm_; }

    // Weight bytes a decoded token reads: every matrix once, the embedding one row.
    std::size_t bytes_per_token() const {
        std::size_t bytes = head_.bytes();
        for (const auto& b : blocks_) bytes += b.q_proj.bytes() + b.o_proj.bytes() + b.gate_proj.bytes() + b.down_proj.bytes();
        return bytes;
    }

private:
    WeightFormat format_;
    Buffer<float> norms_;
    Index used_ = 0;
    std::array<PackedBlockWeights, D::layers> blocks_;
    const float* final_norm_ = nullptr;
    PackedMatrix head_, embed_;
};

// Runs tokens through the model one chunk at a time, keeping a KV cache.
template <ModelConfig C, class T>
class Generator {
public:
    using D = Dims<C>;

    explicit Generator(const Model<C, Cpu<T>>& model, Index max_positions = D::context, Index chunk = 128)
        : weights_(model.parameters.weights()), cache_(max_positions), chunk_(chunk) {}
    // Decodes with packed bf16 or int8 weights (which must outlive the generator).
    explicit Generator(const PackedWeights<C>& weights, Index max_positions = D::context, Index chunk = 128)
        requires std::is_same_v<T, float>
        : weights_{}, packed_(&weights), cache_(max_positions), chunk_(chunk) {}
    Generator(const PackedWeights<C>&&, Index = D::context, Index = 128) = delete;  // would dangle

    const KvCache<C, T>& cache() const { return cache_; }
    Index length() const { return cache_.length(); }
    void reset() { cache_.reset(); }

    // Appends tokens at positions [length, length + n). Returns the logits of every new token
    // ([n, vocab]) when all_logits, else of the last one ([1, vocab]).
    ConstMatrixView<T> append(std::span<const std::int32_t> tokens, bool all_logits = false) {
        const Index n = static_cast<Index>(tokens.size());
        check_generator_append(n, cache_.length(), cache_.max_positions(), D::context);
        check_token_ids(tokens, D::vocab);
        rope_.template ensure<C>(cache_.length() + n);
        logits_.resize(static_cast<std::size_t>((all_logits ? n : 1) * D::vocab));
        for (Index c0 = 0; c0 < n; c0 += chunk_) {
            const Index m = std::min(chunk_, n - c0);
            const auto piece = tokens.subspan(static_cast<std::size_t>(c0), static_cast<std::size_t>(m));
            const auto head_forward = [&](const auto& head) {  // after forward_chunk, which sizes final_
                const auto h = const_view(final_.data(), m, D::model);
                if (all_logits) {
                    linear_forward<T>(h, head, matrix_view(logits_.data() + c0 * D::vocab, m, D::vocab));
                } else if (c0 + m == n) {
                    linear_forward<T>(row_block(h, m - 1, 1), head, matrix_view(logits_.data(), 1, D::vocab));
                }
            };
            if constexpr (std::is_same_v<T, float>) {
                if (packed_) {
                    forward_chunk(piece, packed_->embed(), [&](int l) -> const auto& { return packed_->block(l); },
                                  packed_->final_norm());
                    head_forward(packed_->head());
                    continue;
                }
            }
            forward_chunk(piece, const_view(weights_.embed, D::vocab, D::model),
                          [&](int l) -> const auto& { return weights_.blocks[static_cast<std::size_t>(l)]; },
                          weights_.final_norm);
            head_forward(const_view(weights_.lm_head, D::vocab, D::model));
        }
        return const_view(logits_.data(), all_logits ? n : 1, D::vocab);
    }

private:
    // One chunk of m tokens at positions [p0, p0 + m): forward.hpp's blocks, attending to the cache
    // plus the chunk. Leaves the final norm's output in final_. `embed` is the embedding table (a
    // view or a packed matrix), block(l) layer l's weights.
    template <class Embed, class BlockOf>
    void forward_chunk(std::span<const std::int32_t> tokens, const Embed& embed, const BlockOf& block,
                       const T* final_norm) {
        const Index m = static_cast<Index>(tokens.size()), p0 = cache_.length();
        resize_block_activations<C, T>(a_, m, 0);
        final_.resize(static_cast<std::size_t>(m * D::model));
        rstd_.resize(static_cast<std::size_t>(m));
        positions_.resize(static_cast<std::size_t>(m));
        for (Index i = 0; i < m; ++i) positions_[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(p0 + i);
        const std::span<const std::int32_t> positions(positions_);
        auto x = matrix_view(a_.input.data(), m, D::model);  // the residual stream, block to block in place
        embedding_forward<T>(embed, tokens,
                             static_cast<T>(std::sqrt(double(D::model))), x);
        for (int l = 0; l < D::layers; ++l) {
            auto& cache = cache_.layer(l);
            const auto shape = attention_shape<C, T>(l, 1, p0 + m);
            block_forward<C, T>(block(l), rope_.for_kind(D::kind(l)), positions, a_,
                                a_.input.data(),
                                [&](ConstMatrixView<T> q, ConstMatrixView<T> k, ConstMatrixView<T> v, MatrixView<T> attn) {
                                    attention_with_cache<T>(q, k, v, cache, p0, shape, attn);
                                    append_to_cache(cache, p0, k, v);
                                });
        }
        rmsnorm_forward<T>(as_const(x), final_norm, static_cast<T>(C::rms_norm_eps),
                           matrix_view(final_.data(), m, D::model), rstd_.data());
        cache_.set_length(p0 + m);
    }

    static void append_to_cache(LayerKvCache<T>& cache, Index p0, ConstMatrixView<T> k, ConstMatrixView<T> v) {
        const Index m = k.rows();
        cache.reserve(p0 + m);
        for (Index r = 0; r < m; ++r) {
            const Index pos = p0 + r, slot = cache.slot(pos);
            if (cache.position[static_cast<std::size_t>(slot)] < 0) ++cache.used;
            cache.position[static_cast<std::size_t>(slot)] = static_cast<std::int32_t>(pos);
            matrix_view(cache.k.data() + slot * D::kv, 1, D::kv) = k.row(r);
            matrix_view(cache.v.data() + slot * D::kv, 1, D::kv) = v.row(r);
        }
    }

    Weights<C, const T> weights_;
    const PackedWeights<C>* packed_ = nullptr;
    KvCache<C, T> cache_;
    Index chunk_;
    RopeTables<T> rope_;
    std::vector<std::int32_t> positions_;
    BlockActivations<T> a_;  // one block's buffers, reused by every layer
    Buffer<T> final_, rstd_, logits_;
};

}  // namespace gemma3
