// Text generation on the GPU: a device KV cache, chunked prefill, single-token decode, and sampling
// on the host with the CPU's sampler. The twin of include/gemma3/core/generation.hpp, with the same
// names (KvCache, Generator, append, length, reset, cache) and the same generate() loop
// (core/sampling.hpp):
//
//   #include <gemma3/cuda/generation.cuh>   // compiled by nvcc
//   gemma3::Model<C, gemma3::Cuda> model;  model.load(...);
//   gemma3::cuda::Generator<C> generator(model, max_positions);
//   gemma3::TokenSampler sampler({0.8, 40, 0.95, seed});
//   auto tokens = gemma3::generate(generator, prompt, 100, sampler, stop_token, on_token);
//
// The cache keeps one K and one V per key/value head in bf16 (the dtype the model's attention reads
// K and V in): [slots, kv_heads * head_dim] per layer. A sliding layer keeps a ring buffer of
// min(window, max_positions) slots (slot = position % window), a full layer one slot per position
// up to max_positions, all allocated when the generator is made. Slots fill in position order, so
// the position a slot holds follows from the length alone (slot_position below); no position array.
//
// A chunk of new tokens at positions [p0, p0 + m) runs the model's own block (cuda::block_forward in
// cuda/model.cuh, RoPE at the explicit positions), with attention of the chunk's queries over the
// cache as it was before the chunk (positions < p0) plus the chunk's own keys (causal); then the
// chunk's K and V are written into the cache. As on the CPU, the ring
// never needs more than the window. The attention kernel is a simple one: one block per (query,
// head), 128 keys per step with an online softmax in fp32 (scores and accumulation fp32, K/V/Q/out
// bf16). Logits of the last token (or every token with all_logits) are computed in fp32 on the
// device and copied to the host; sampling runs there with TokenSampler, so temperature, top-k,
// top-p and the seed give the CPU's token for the same logits.
#pragma once

#include <gemma3/core/sampling.hpp>
#include <gemma3/cuda/model.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

GEMMA3_CUDA_NAMESPACE_BEGIN

namespace kernels {

inline constexpr int cached_attention_threads = 128;  // also the keys scored per step
inline constexpr int cached_attention_max_head_dim = 256;
inline constexpr int cached_attention_dims_per_thread = cached_attention_max_head_dim / cached_attention_threads;

// The position held by cache slot `slot` when positions [0, length) have been written: on a ring
// of `ring` slots the latest position p < length with p % ring == slot; else the slot itself.
__device__ __forceinline__ std::int64_t slot_position(std::int64_t slot, std::int64_t length, int ring) {
    return ring > 0 ? slot + static_cast<std::int64_t>(ring) * ((length - 1 - slot) / ring) : slot;
}

// out[r, h] = softmax(scale q[r, h] . keys) values for query r (position p0 + r) of head h, over the
// `cached` cache slots and the chunk's keys 0..r, restricted to positions >= first_key (window).
// Grid (rows, heads), block cached_attention_threads. head_dim <= cached_attention_max_head_dim.
template <int = 0>
__global__ void __launch_bounds__(cached_attention_threads)
    cached_attention_kernel(const bf16* __restrict__ q, std::int64_t q_ld, const bf16* __restrict__ k_new, std::int64_t k_ld,
                            const bf16* __restrict__ v_new, std::int64_t v_ld, const bf16* __restrict__ cache_k,
                            const bf16* __restrict__ cache_v, std::int64_t cache_ld, int cached, int ring, std::int64_t p0,
                            int heads_per_kv, int head_dim, int window, float scale, bf16* __restrict__ out,
                            std::int64_t out_ld) {
    __shared__ float q_row[cached_attention_max_head_dim];
    __shared__ float weights[cached_attention_threads];
    __shared__ float scratch[32];
    const int r = static_cast<int>(blockIdx.x), h = static_cast<int>(blockIdx.y), g = h / heads_per_kv;
    const int tid = static_cast<int>(threadIdx.x);
    const std::int64_t i = p0 + r, first = window > 0 ? (i - window + 1 > 0 ? i - window + 1 : 0) : 0;
    for (int d = tid; d < head_dim; d += cached_attention_threads) {
        q_row[d] = to_float(q[static_cast<std::int64_t>(r) * q_ld + static_cast<std::int64_t>(h) * head_dim + d]);
    }
    __syncthreads();
    const auto key_row = [&](int j, const bf16* cache, const bf16* fresh, std::int64_t fresh_ld) {
        return j < cached ? cache + static_cast<std::int64_t>(j) * cache_ld + static_cast<std::int64_t>(g) * head_dim
                          : fresh + static_cast<std::int64_t>(j - cached) * fresh_ld + static_cast<std::int64_t>(g) * head_dim;
    };
    float acc[cached_attention_dims_per_thread];
#pragma unroll
    for (int e = 0; e < cached_attention_dims_per_thread; ++e) acc[e] = 0.0f;
    float running_max = -INFINITY, running_sum = 0.0f;
    const int keys = cached + r + 1;
    for (int j0 = 0; j0 < keys; j0 += cached_attention_threads) {
        const int j = j0 + tid;
        float score = -INFINITY;
        if (j < keys) {
            const std::int64_t position = j < cached ? slot_position(j, p0, ring) : p0 + (j - cached);
            if (position >= first) {
                const bf16* k = key_row(j, cache_k, k_new, k_ld);
                float dot = 0.0f;
                for (int d = 0; d < head_dim; ++d) dot += q_row[d] * to_float(k[d]);
                score = dot * scale;
            }
        }
        const float tile_max = block_max(score, scratch);
        if (tile_max == -INFINITY) continue;  // the same for every thread: no visible key in this step
        const float new_max = fmaxf(running_max, tile_max);
        const float factor = expf(running_max - new_max);  // 0 on the first visible step
        const float weight = score == -INFINITY ? 0.0f : expf(score - new_max);
        weights[tid] = weight;
        running_sum = running_sum * factor + block_sum(weight, scratch);  // block_sum's barrier publishes weights
        running_max = new_max;
        const int count = keys - j0 < cached_attention_threads ? keys - j0 : cached_attention_threads;
#pragma unroll
        for (int e = 0; e < cached_attention_dims_per_thread; ++e) {
            const int d = tid + e * cached_attention_threads;
            if (d >= head_dim) continue;
            float a = acc[e] * factor;
            for (int t = 0; t < count; ++t) {
                const float w = weights[t];
                if (w != 0.0f) a += w * to_float(key_row(j0 + t, cache_v, v_new, v_ld)[d]);
            }
            acc[e] = a;
        }
        __syncthreads();  // weights is rewritten by the next step
    }
    const float inverse = 1.0f / running_sum;
#pragma unroll
    for (int e = 0; e < cached_attention_dims_per_thread; ++e) {
        const int d = tid + e * cached_attention_threads;
        if (d < head_dim) {
            out[static_cast<std::int64_t>(r) * out_ld + static_cast<std::int64_t>(h) * head_dim + d] = from_float<bf16>(acc[e] * inverse);
        }
    }
}

// Writes rows [0, rows) of k and v (positions p0 + r) into the cache's slots. On a ring of `ring`
// slots only the last `ring` rows are written (earlier ones would be overwritten in the same launch).
template <int = 0>
__global__ void __launch_bounds__(256)
    kv_cache_append_kernel(const bf16* __restrict__ k, std::int64_t k_ld, const bf16* __restrict__ v, std::int64_t v_ld,
                           bf16* __restrict__ cache_k, bf16* __restrict__ cache_v, int width, int rows, std::int64_t p0, int ring) {
    const int skip = ring > 0 && rows > ring ? rows - ring : 0;
    const std::int64_t total = static_cast<std::int64_t>(rows - skip) * width;
    for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
         e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        const int r = skip + static_cast<int>(e / width), c = static_cast<int>(e % width);
        const std::int64_t position = p0 + r, slot = ring > 0 ? position % ring : position;
        cache_k[slot * width + c] = k[static_cast<std::int64_t>(r) * k_ld + c];
        cache_v[slot * width + c] = v[static_cast<std::int64_t>(r) * v_ld + c];
    }
}

}  // namespace kernels

// One layer's cache on the device: K and V [slots, kv_heads * head_dim] in bf16.
struct LayerKvCache {
    bool ring = false;  // sliding layer: slot = position % limit
    std::int64_t limit = 0;
    DeviceBuffer<bf16> k, v;

    std::int64_t slot(std::int64_t position) const { return ring ? position % limit : position; }
    // Slots holding a position once positions [0, length) are written.
    std::int64_t used(std::int64_t length) const { return std::min(length, limit); }
};

template <ModelConfig C>
class KvCache {
public:
    using D = Dims<C>;

    explicit KvCache(Index max_positions = D::context) : max_positions_(std::min<Index>(max_positions, D::context)) {
        if (max_positions_ <= 0) throw std::invalid_argument("cuda::KvCache: max_positions must be positive");
        for (int l = 0; l < D::layers; ++l) {
            auto& layer = layers_[static_cast<std::size_t>(l)];
            layer.ring = D::kind(l) == AttentionKind::sliding;
            layer.limit = layer.ring ? std::min<Index>(D::window, max_positions_) : max_positions_;
            layer.k = DeviceBuffer<bf16>(static_cast<std::size_t>(layer.limit * D::kv));
            layer.v = DeviceBuffer<bf16>(static_cast<std::size_t>(layer.limit * D::kv));
        }
    }

    LayerKvCache& layer(int l) { return layers_[static_cast<std::size_t>(l)]; }
    const LayerKvCache& layer(int l) const { return layers_[static_cast<std::size_t>(l)]; }
    Index length() const { return length_; }
    Index max_positions() const { return max_positions_; }
    void set_length(Index n) { length_ = n; }
    void reset() { length_ = 0; }  // slots past the length are never read

    // Bytes of K and V holding positions now, and allocated (the same formula as the CPU cache's).
    std::size_t used_bytes() const {
        std::size_t slots = 0;
        for (const auto& l : layers_) slots += static_cast<std::size_t>(l.used(length_));
        return 2 * slots * static_cast<std::size_t>(D::kv) * sizeof(bf16);
    }
    std::size_t allocated_bytes() const {
        std::size_t slots = 0;
        for (const auto& l : layers_) slots += static_cast<std::size_t>(l.limit);
        return 2 * slots * static_cast<std::size_t>(D::kv) * sizeof(bf16);
    }

private:
    Index max_positions_;
    Index length_ = 0;
    std::array<LayerKvCache, D::layers> layers_;
};

// Runs tokens through a Model<C, Cuda>'s weights one chunk at a time, keeping a device KV cache.
// The model must outlive the generator; its weights are read, not changed.
template <ModelConfig C>
class Generator {
public:
    using D = Dims<C>;

    explicit Generator(Model<C, Cuda>& model, Index max_positions = D::context, Index chunk = 128)
        : gemm_(&model.gemm()),
          stream_(&model.stream()),
          weights_(Weights<C, bf16>::point_into(model.device_parameters())),
          cache_(max_positions),
          chunk_(std::max<Index>(1, std::min(chunk, cache_.max_positions()))),
          rope_local_(C::rope_local_base, D::head, cache_.max_positions()),
          rope_global_(C::rope_base, D::head, cache_.max_positions()) {
        static_assert(D::head <= kernels::cached_attention_max_head_dim, "cuda::Generator: head_dim above 256");
        const auto n = static_cast<std::size_t>(chunk_);
        tokens_ = DeviceBuffer<int>(n);
        positions_ = DeviceBuffer<std::int32_t>(n);
        x_ = DeviceBuffer<float>(n * D::model);
        mid_ = DeviceBuffer<float>(n * D::model);
        attn_in_ = DeviceBuffer<bf16>(n * D::model);
        qkv_ = DeviceBuffer<bf16>(n * D::qkv);
        q_rot_ = DeviceBuffer<bf16>(n * D::q);
        k_rot_ = DeviceBuffer<bf16>(n * D::kv);
        attn_ = DeviceBuffer<bf16>(n * D::q);
        attn_proj_ = DeviceBuffer<bf16>(n * D::model);
        mlp_in_ = DeviceBuffer<bf16>(n * D::model);
        gate_up_ = DeviceBuffer<bf16>(n * 2 * D::ffn);
        act_ = DeviceBuffer<bf16>(n * D::ffn);
        mlp_out_ = DeviceBuffer<bf16>(n * D::model);
        final_out_ = DeviceBuffer<bf16>(n * D::model);
        activations_.input = x_.data();  // the block runs in place: x_ is also its output
        activations_.attn_in = attn_in_.data();
        activations_.qkv = qkv_.data();
        activations_.q_rot = q_rot_.data();
        activations_.k_rot = k_rot_.data();
        activations_.attn = attn_.data();
        activations_.attn_proj = attn_proj_.data();
        activations_.mid = mid_.data();
        activations_.mlp_in = mlp_in_.data();
        activations_.gate_up = gate_up_.data();
        activations_.act = act_.data();
        activations_.mlp_out = mlp_out_.data();
    }
    Generator(const Generator&) = delete;
    Generator& operator=(const Generator&) = delete;

    const KvCache<C>& cache() const { return cache_; }
    Index length() const { return cache_.length(); }
    void reset() { cache_.reset(); }

    // Appends tokens at positions [length, length + n). Returns the logits (host, fp32) of every
    // new token ([n, vocab]) when all_logits, else of the last one ([1, vocab]). The view stays
    // valid until the next call.
    ConstMatrixView<float> append(std::span<const std::int32_t> tokens, bool all_logits = false) {
        const Index n = static_cast<Index>(tokens.size());
        check_generator_append(n, cache_.length(), cache_.max_positions(), D::context);
        check_token_ids(tokens, D::vocab);
        host_logits_.resize(static_cast<std::size_t>((all_logits ? n : 1) * D::vocab));
        for (Index c0 = 0; c0 < n; c0 += chunk_) {
            const Index m = std::min(chunk_, n - c0);
            forward_chunk(tokens.subspan(static_cast<std::size_t>(c0), static_cast<std::size_t>(m)));
            if (all_logits) {
                head_forward(0, m, host_logits_.data() + c0 * D::vocab);
            } else if (c0 + m == n) {
                head_forward(m - 1, 1, host_logits_.data());
            }
        }
        return const_view(host_logits_.data(), all_logits ? n : 1, D::vocab);
    }

private:
    static float eps() { return static_cast<float>(C::rms_norm_eps); }

    // One chunk of m tokens at positions [p0, p0 + m): leaves the residual stream entering the
    // final norm in x_ and advances the cache.
    void forward_chunk(std::span<const std::int32_t> tokens) {
        const Index m = static_cast<Index>(tokens.size()), p0 = cache_.length();
        positions_host_.resize(static_cast<std::size_t>(m));
        for (Index i = 0; i < m; ++i) positions_host_[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(p0 + i);
        copy_to_device(tokens_.data(), tokens.data(), tokens.size());
        copy_to_device(positions_.data(), positions_host_.data(), positions_host_.size());
        embedding_forward(*stream_, weights_.embed, tokens_.data(), static_cast<float>(std::sqrt(static_cast<double>(D::model))),
                          x_.data(), static_cast<int>(m), D::model);
        for (int l = 0; l < D::layers; ++l) block_forward(l, m, p0);
        cache_.set_length(p0 + m);
    }

    // The final norm and the head for rows [row0, row0 + rows) of the last chunk, into host memory.
    void head_forward(Index row0, Index rows, float* host) {
        constexpr int DM = D::model;
        rmsnorm_forward<float, bf16>(*stream_, token_rows<const float>(x_.data() + row0 * DM, DM), weights_.final_norm, eps(),
                                     token_rows(final_out_.data(), DM), nullptr, rows, DM);
        const Index needed = rows * D::vocab;
        if (static_cast<Index>(logits_.size()) < needed) logits_ = DeviceBuffer<float>(static_cast<std::size_t>(needed));
        linear_forward(*gemm_, *stream_, matrix_view<const bf16>(final_out_.data(), rows, DM, DM),
                       matrix_view<const bf16>(weights_.lm_head, D::vocab, DM, DM), matrix_view(logits_.data(), rows, D::vocab, D::vocab));
        copy_to_host(host, logits_.data(), static_cast<std::size_t>(needed));
    }

    // The model's block (cuda::block_forward) for m tokens at positions [p0, p0 + m), attending
    // over the cache plus the chunk; then the chunk's K and V join the cache.
    void block_forward(int layer, Index m, Index p0) {
        constexpr int Q = D::q, KV = D::kv, QKV = D::qkv, H = D::heads, HK = D::kv_heads, DH = D::head;
        const auto& table = D::kind(layer) == AttentionKind::sliding ? rope_local_ : rope_global_;
        const Stream& s = *stream_;
        auto& cache = cache_.layer(layer);
        const int ring = cache.ring ? static_cast<int>(cache.limit) : 0;
        cuda::block_forward<C>(*gemm_, s, weights_.blocks[static_cast<std::size_t>(layer)], table, positions_.data(), m, activations_,
                               x_.data(), [&](const bf16* q, const bf16* k, const bf16* v) {
                                   launch(kernels::cached_attention_kernel<>, LaunchGrid(static_cast<unsigned>(m), static_cast<unsigned>(H)),
                                          kernels::cached_attention_threads, 0, s, q, std::int64_t{Q}, k, std::int64_t{KV}, v,
                                          std::int64_t{QKV}, static_cast<const bf16*>(cache.k.data()),
                                          static_cast<const bf16*>(cache.v.data()), std::int64_t{KV}, static_cast<int>(cache.used(p0)),
                                          ring, std::int64_t{p0}, H / HK, DH,
                                          D::kind(layer) == AttentionKind::sliding ? static_cast<int>(D::window) : 0,
                                          static_cast<float>(1.0 / std::sqrt(C::query_pre_attn_scalar)), activations_.attn,
                                          std::int64_t{Q});
                                   launch(kernels::kv_cache_append_kernel<>, ops_detail::blocks_for(m * KV, 256), 256, 0, s, k,
                                          std::int64_t{KV}, v, std::int64_t{QKV}, cache.k.data(), cache.v.data(), KV,
                                          static_cast<int>(m), std::int64_t{p0}, ring);
                               });
    }

    Gemm* gemm_;
    const Stream* stream_;
    Weights<C, bf16> weights_;
    KvCache<C> cache_;
    Index chunk_;
    DeviceRopeTable rope_local_, rope_global_;
    DeviceBuffer<int> tokens_;
    DeviceBuffer<std::int32_t> positions_;
    DeviceBuffer<float> x_, mid_, logits_;
    DeviceBuffer<bf16> attn_in_, qkv_, q_rot_, k_rot_, attn_, attn_proj_, mlp_in_, gate_up_, act_, mlp_out_, final_out_;
    model_detail::BlockActivations activations_;  // the buffers above, as the block sees them (no norm statistics)
    std::vector<std::int32_t> positions_host_;
    std::vector<float> host_logits_;
};

GEMMA3_CUDA_NAMESPACE_END
