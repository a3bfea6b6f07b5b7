// Compile-time model configuration.
//
// A configuration is a plain struct of `static constexpr` constants plus a `layer_types` type list
// (see `configs.hpp` for the shipped ones). Everything shape-related in the library is derived from
// it at compile time, so buffer sizes, loop bounds and CUDA launch shapes are constants.
// `check_config<C>()` turns every impossible combination into a compile error with a message.
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>
#include <utility>

#include <gemma3/core/config_fields.hpp>

namespace gemma3 {

enum class AttentionKind { sliding, full };

// The two layer kinds of the attention pattern. The names match Hugging Face's `layer_types`.
struct SlidingAttention {
    static constexpr AttentionKind kind = AttentionKind::sliding;
    static constexpr std::string_view name = "sliding_attention";
};
struct FullAttention {
    static constexpr AttentionKind kind = AttentionKind::full;
    static constexpr std::string_view name = "full_attention";
};

template <class T>
concept LayerKind = std::same_as<T, SlidingAttention> || std::same_as<T, FullAttention>;

// The attention pattern: one type per layer, in order.
template <LayerKind... Layers>
struct LayerPattern {
    static constexpr int size = static_cast<int>(sizeof...(Layers));
    static constexpr std::array<AttentionKind, sizeof...(Layers)> kinds{Layers::kind...};
};

namespace detail {
template <int Period, std::size_t... I>
auto repeating_pattern(std::index_sequence<I...>)
    -> LayerPattern<std::conditional_t<(I + 1) % Period == 0, FullAttention, SlidingAttention>...>;
}  // namespace detail

// Gemma 3's rule (HF `sliding_window_pattern`): layer i (0-based) is full iff (i + 1) % Period == 0.
// `RepeatingPattern<18, 6>` is 5 sliding layers then 1 full, three times.
template <int NumLayers, int Period>
    requires(NumLayers > 0 && Period > 0)
using RepeatingPattern =
    decltype(detail::repeating_pattern<Period>(std::make_index_sequence<NumLayers>{}));

template <class T>
struct is_layer_pattern : std::false_type {};
template <class... L>
struct is_layer_pattern<LayerPattern<L...>> : std::true_type {};

// What a configuration type must provide: a constant per architecture field of the table in
// config_fields.hpp (n_kv_groups is the number of key/value heads, seed naming) and the
// `layer_types` type list. Field names follow the seed's model_config.json.
template <class C>
concept ModelConfig = requires { GEMMA3_MODEL_ARCHITECTURE_FIELDS(GEMMA3_CONFIG_REQUIREMENT) };

// Rejects impossible configurations at compile time. Instantiated by every model type; call it in
// a static_assert to check a config of your own early.
template <ModelConfig C>
consteval bool check_config() {
    static_assert(C::vocab_size > 0, "gemma3 config: vocab_size must be positive");
    static_assert(C::context_length > 0, "gemma3 config: context_length must be positive");
    static_assert(C::emb_dim > 0, "gemma3 config: emb_dim must be positive");
    static_assert(C::hidden_dim > 0, "gemma3 config: hidden_dim must be positive");
    static_assert(C::n_layers > 0, "gemma3 config: n_layers must be positive");
    static_assert(C::n_heads > 0 && C::n_kv_groups > 0,
                  "gemma3 config: n_heads and n_kv_groups must be positive");
    static_assert(C::n_heads % C::n_kv_groups == 0,
                  "gemma3 config: n_heads must be a multiple of n_kv_groups (the key/value heads)");
    static_assert(C::head_dim > 0 && C::head_dim % 2 == 0,
                  "gemma3 config: head_dim must be positive and even (RoPE rotates pairs of dimensions)");
    static_assert(C::layer_types::size == C::n_layers,
                  "gemma3 config: layer_types must have exactly n_layers entries");
    static_assert(C::sliding_window > 0, "gemma3 config: sliding_window must be positive");
    static_assert(C::sliding_window < C::context_length,
                  "gemma3 config: sliding_window must be smaller than context_length");
    static_assert(C::query_pre_attn_scalar > 0, "gemma3 config: query_pre_attn_scalar must be positive");
    static_assert(C::rope_base > 1 && C::rope_local_base > 1,
                  "gemma3 config: rope_base and rope_local_base must be greater than 1");
    static_assert(C::rms_norm_eps > 0, "gemma3 config: rms_norm_eps must be positive");
    return true;
}

// The name a config type reports in messages: its `name` member when it has one.
template <ModelConfig C>
constexpr std::string_view config_name() {
    if constexpr (requires { C::name; }) {
        return C::name;
    } else {
        return "the compiled config type";
    }
}

// Shapes derived from a configuration, for use in kernels and buffer sizes.
template <ModelConfig C>
struct Dims {
    static_assert(check_config<C>());
    static constexpr int vocab = C::vocab_size;
    static constexpr int model = C::emb_dim;
    static constexpr int ffn = C::hidden_dim;
    static constexpr int layers = C::n_layers;
    static constexpr int heads = C::n_heads;
    static constexpr int kv_heads = C::n_kv_groups;
    static constexpr int heads_per_kv = C::n_heads / C::n_kv_groups;
    static constexpr int head = C::head_dim;
    static constexpr int q = C::n_heads * C::head_dim;       // width of the query projection
    static constexpr int kv = C::n_kv_groups * C::head_dim;  // width of the key and value projections
    static constexpr int qkv = q + 2 * kv;                   // the three projections side by side
    static constexpr int window = C::sliding_window;
    static constexpr int context = C::context_length;

    static constexpr AttentionKind kind(int layer) { return C::layer_types::kinds[layer]; }
    static constexpr double rope_theta(int layer) {
        return kind(layer) == AttentionKind::sliding ? C::rope_local_base : C::rope_base;
    }
    static constexpr int count(AttentionKind k) {
        int n = 0;
        for (auto x : C::layer_types::kinds) n += (x == k);
        return n;
    }
};

}  // namespace gemma3
