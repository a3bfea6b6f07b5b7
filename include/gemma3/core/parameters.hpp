// Parameters: every weight of the model in one contiguous buffer.
//
// The layout is fixed at compile time by the config type (as llm.c does, one allocation and pointers
// into it), so the optimizer, gradient clipping and all-reduce see one flat array, and gradients use
// the same layout as the weights. Within a block, q/k/v and gate/up are adjacent, which lets a
// back end multiply them as one matrix. Each tensor also has its Hugging Face name
// (`parameter_tensors`), used for safetensors checkpoints.
#pragma once

#include <gemma3/core/config.hpp>
#include <gemma3/core/tensor.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace gemma3 {

template <ModelConfig C>
struct ParameterLayout {
    using D = Dims<C>;
    using size_type = std::size_t;
    static constexpr size_type model = D::model, ffn = D::ffn, q = D::q, kv = D::kv, head = D::head, vocab = D::vocab;

    // Offsets inside one block, relative to the block's start.
    struct Block {
        static constexpr size_type input_norm = 0;
        static constexpr size_type q_proj = input_norm + model;
        static constexpr size_type k_proj = q_proj + q * model;
        static constexpr size_type v_proj = k_proj + kv * model;
        static constexpr size_type q_norm = v_proj + kv * model;
        static constexpr size_type k_norm = q_norm + (C::qk_norm ? head : 0);
        static constexpr size_type o_proj = k_norm + (C::qk_norm ? head : 0);
        static constexpr size_type post_attention_norm = o_proj + model * q;
        static constexpr size_type pre_feedforward_norm = post_attention_norm + model;
        static constexpr size_type gate_proj = pre_feedforward_norm + model;
        static constexpr size_type up_proj = gate_proj + ffn * model;
        static constexpr size_type down_proj = up_proj + ffn * model;
        static constexpr size_type post_feedforward_norm = down_proj + model * ffn;
        static constexpr size_type size = post_feedforward_norm + model;
    };

    static constexpr size_type embed = 0;
    static constexpr size_type first_block = embed + vocab * model;
    static constexpr size_type block(int layer) { return first_block + static_cast<size_type>(layer) * Block::size; }
    static constexpr size_type final_norm = first_block + static_cast<size_type>(D::layers) * Block::size;
    static constexpr size_type lm_head = final_norm + model;  // only when the head is untied
    static constexpr size_type total = lm_head + (C::tie_word_embeddings ? 0 : vocab * model);
};

// The number of parameters (tied head counted once).
template <ModelConfig C>
inline constexpr std::size_t parameter_count = ParameterLayout<C>::total;

// Pointers to every tensor of one block. T is float/double, or const float/const double.
// ParameterLayout stores q, k, v and gate, up back to back, and the forward and backward passes
// use that: they read [q; k; v] as one matrix from q_proj and [gate; up] as one from gate_proj. So
// these pointers must point into one parameter buffer (point_into), never into separate tensors.
template <class T>
struct BlockWeights {
    T* input_norm;
    T* q_proj;  // [heads*head_dim, emb_dim]
    T* k_proj;  // [kv_heads*head_dim, emb_dim]
    T* v_proj;  // [kv_heads*head_dim, emb_dim]
    T* q_norm;  // [head_dim], nullptr without qk_norm
    T* k_norm;  // [head_dim], nullptr without qk_norm
    T* o_proj;  // [emb_dim, heads*head_dim]
    T* post_attention_norm;
    T* pre_feedforward_norm;
    T* gate_proj;  // [hidden_dim, emb_dim]
    T* up_proj;    // [hidden_dim, emb_dim]
    T* down_proj;  // [emb_dim, hidden_dim]
    T* post_feedforward_norm;
};

template <ModelConfig C, class T>
struct Weights {
    T* embed;  // [vocab, emb_dim]
    std::array<BlockWeights<T>, C::n_layers> blocks;
    T* final_norm;  // [emb_dim]
    T* lm_head;     // [vocab, emb_dim]; equals `embed` when the head is tied

    // Points every tensor into a buffer of ParameterLayout<C>::total elements.
    static Weights point_into(T* base) {
        using L = ParameterLayout<C>;
        using B = typename L::Block;
        Weights w{};
        w.embed = base + L::embed;
        for (int l = 0; l < C::n_layers; ++l) {
            T* p = base + L::block(l);
            w.blocks[static_cast<std::size_t>(l)] = BlockWeights<T>{
                p + B::input_norm,
                p + B::q_proj,
                p + B::k_proj,
                p + B::v_proj,
                C::qk_norm ? p + B::q_norm : nullptr,
                C::qk_norm ? p + B::k_norm : nullptr,
                p + B::o_proj,
                p + B::post_attention_norm,
                p + B::pre_feedforward_norm,
                p + B::gate_proj,
                p + B::up_proj,
                p + B::down_proj,
                p + B::post_feedforward_norm,
            };
        }
        w.final_norm = base + L::final_norm;
        w.lm_head = C::tie_word_embeddings ? w.embed : base + L::lm_head;
        return w;
    }
};

// One named tensor of the layout, as Hugging Face's Gemma3ForCausalLM names it.
enum class TensorRole { embedding, matrix, norm, head };
struct ParameterTensor {
    std::string name;
    std::size_t offset;
    std::vector<std::int64_t> shape;
    TensorRole role;
    std::int64_t fan_in;  // input width of a matrix (for initialisation)

    std::size_t numel() const {
        std::size_t n = 1;
        for (auto d : shape) n *= static_cast<std::size_t>(d);
        return n;
    }
};

// Every tensor, in layout order. The tied head has no entry of its own (HF omits lm_head.weight).
template <ModelConfig C>
std::vector<ParameterTensor> parameter_tensors() {
    using L = ParameterLayout<C>;
    using B = typename L::Block;
    using D = Dims<C>;
    const std::int64_t model = D::model, ffn = D::ffn, q = D::q, kv = D::kv, head = D::head, vocab = D::vocab;
    std::vector<ParameterTensor> t;
    t.push_back({"model.embed_tokens.weight", L::embed, {vocab, model}, TensorRole::embedding, model});
    for (int l = 0; l < C::n_layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        const std::size_t o = L::block(l);
        t.push_back({p + "input_layernorm.weight", o + B::input_norm, {model}, TensorRole::norm, 0});
        t.push_back({p + "self_attn.q_proj.weight", o + B::q_proj, {q, model}, TensorRole::matrix, model});
        t.push_back({p + "self_attn.k_proj.weight", o + B::k_proj, {kv, model}, TensorRole::matrix, model});
        t.push_back({p + "self_attn.v_proj.weight", o + B::v_proj, {kv, model}, TensorRole::matrix, model});
        if constexpr (C::qk_norm) {
            t.push_back({p + "self_attn.q_norm.weight", o + B::q_norm, {head}, TensorRole::norm, 0});
            t.push_back({p + "self_attn.k_norm.weight", o + B::k_norm, {head}, TensorRole::norm, 0});
        }
        t.push_back({p + "self_attn.o_proj.weight", o + B::o_proj, {model, q}, TensorRole::matrix, q});
        t.push_back({p + "post_attention_layernorm.weight", o + B::post_attention_norm, {model}, TensorRole::norm, 0});
        t.push_back({p + "pre_feedforward_layernorm.weight", o + B::pre_feedforward_norm, {model}, TensorRole::norm, 0});
        t.push_back({p + "mlp.gate_proj.weight", o + B::gate_proj, {ffn, model}, TensorRole::matrix, model});
        t.push_back({p + "mlp.up_proj.weight", o + B::up_proj, {ffn, model}, TensorRole::matrix, model});
        t.push_back({p + "mlp.down_proj.weight", o + B::down_proj, {model, ffn}, TensorRole::matrix, ffn});
        t.push_back(
            {p + "post_feedforward_layernorm.weight", o + B::post_feedforward_norm, {model}, TensorRole::norm, 0});
    }
    t.push_back({"model.norm.weight", L::final_norm, {model}, TensorRole::norm, 0});
    if constexpr (!C::tie_word_embeddings) {
        t.push_back({"lm_head.weight", L::lm_head, {vocab, model}, TensorRole::head, model});
    }
    return t;
}

// Owns the buffer; `weights()` points into it. Also used for gradients.
template <ModelConfig C, class T>
class Parameters {
public:
    Parameters() : data_(ParameterLayout<C>::total, T(0)) {}

    Weights<C, T> weights() { return Weights<C, T>::point_into(data_.data()); }
    Weights<C, const T> weights() const { return Weights<C, const T>::point_into(data_.data()); }
    T* data() { return data_.data(); }
    const T* data() const { return data_.data(); }
    std::size_t size() const { return data_.size(); }
    void set_zero() { std::fill(data_.begin(), data_.end(), T(0)); }

private:
    Buffer<T> data_;
};

// ------------------------------------------------------------------------------------------------
// Random initialisation

enum class InitScheme {
    seed,  // PyTorch module defaults, as the seed notebook: embedding N(0,1), Linear U(±1/sqrt(fan_in))
    hf,    // Hugging Face _init_weights: normal(0, initializer_range) for embedding and matrices
};

namespace detail {
// SplitMix64: decorrelates the per-tensor seeds derived from one user seed.
constexpr std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Uniform in (0, 1) from 53 random bits. std::uniform_real_distribution and std::normal_distribution
// are implementation-defined, so the transforms are ours and the values are the same everywhere.
inline double uniform_open01(std::mt19937_64& rng) {
    return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53;
}
}  // namespace detail

// Norm weights are zero in both schemes (scale 1 through the (1 + w) form). Each tensor draws from
// its own generator seeded by (seed, tensor index), so the values do not depend on the order of
// initialisation.
template <ModelConfig C, class T>
void init_parameters(Parameters<C, T>& params, InitScheme scheme, double initializer_range, std::uint64_t seed) {
    const auto tensors = parameter_tensors<C>();
#pragma omp parallel for schedule(dynamic)
    for (std::size_t ti = 0; ti < tensors.size(); ++ti) {
        const ParameterTensor& t = tensors[ti];
        T* p = params.data() + t.offset;
        const std::size_t n = t.numel();
        std::mt19937_64 rng(detail::splitmix64(seed ^ detail::splitmix64(ti + 1)));
        if (t.role == TensorRole::norm) {
            std::fill(p, p + n, T(0));
        } else if (scheme == InitScheme::seed && t.role != TensorRole::embedding) {
            const double bound = 1.0 / std::sqrt(static_cast<double>(t.fan_in));
            for (std::size_t i = 0; i < n; ++i) {
                p[i] = static_cast<T>(bound * (2.0 * detail::uniform_open01(rng) - 1.0));
            }
        } else {
            const double std_dev = scheme == InitScheme::seed ? 1.0 : initializer_range;
            for (std::size_t i = 0; i < n; i += 2) {  // Box-Muller, two normals per pair of uniforms
                const double r = std::sqrt(-2.0 * std::log(detail::uniform_open01(rng)));
                const double a = 2.0 * 3.14159265358979323846 * detail::uniform_open01(rng);
                p[i] = static_cast<T>(std_dev * r * std::cos(a));
                if (i + 1 < n) p[i + 1] = static_cast<T>(std_dev * r * std::sin(a));
            }
        }
    }
}

}  // namespace gemma3
