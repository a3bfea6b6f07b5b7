// The library's entry point: Model<Config, Backend>.
//
//   #include <gemma3/model.hpp>
//   gemma3::Model<gemma3::configs::Gemma3_270M, gemma3::Cpu<float>> model;
//   model.init(gemma3::InitScheme::hf, 0.02, /*seed=*/1);       // or, with <gemma3/io/weights_io.hpp>,
//   gemma3::load_weights("model.safetensors", model.parameters); // Hugging Face tensor names
//   auto logits = model.forward(tokens, batch, seq);              // [batch*seq, vocab], row-major
//
// The config type fixes every shape at compile time (configs.hpp); the back end fixes where and in
// which precision the model runs. Cpu<float> and Cpu<double> are the Eigen/BLAS reference;
// Cpu<bf16> is mixed precision: fp32 weights, activations and gradients, matrix products with bf16
// inputs and fp32 accumulation (ops/linear.hpp), from a bf16 copy of the weights.
// This header is the model and its math only: weights, checkpoints and configs are read and written
// by weights_io.hpp, checkpoint.hpp and config_file.hpp.
#pragma once

#include <gemma3/core/activations.hpp>
#include <gemma3/core/backward.hpp>
#include <gemma3/core/config.hpp>
#include <gemma3/core/configs.hpp>
#include <gemma3/core/forward.hpp>
#include <gemma3/core/parameters.hpp>
#include <gemma3/core/tensor.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace gemma3 {

// The CPU back end, computing in T: float or double, or bf16 for mixed precision, whose weights,
// activations and gradients are float (Scalar) and whose matrix products take bf16 inputs.
template <class T>
struct Cpu {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16>,
                  "Cpu<T>: T must be float, double or bf16");
    using Scalar = std::conditional_t<std::is_same_v<T, bf16>, float, T>;  // storage and element-wise math
    static constexpr bool mixed_bf16 = std::is_same_v<T, bf16>;
};

template <ModelConfig C, class Backend = Cpu<float>>
class Model;

// What every back end checks on the input of a forward pass: positive sizes, seq within the
// context, one token per position, every id in the vocabulary.
template <ModelConfig C>
void check_forward_input(std::span<const std::int32_t> tokens, Index batch, Index seq) {
    if (batch <= 0 || seq <= 0) {
        throw std::invalid_argument("Model::forward: batch (" + std::to_string(batch) + ") and seq (" +
                                    std::to_string(seq) + ") must be positive");
    }
    if (seq > C::context_length) {
        throw std::invalid_argument("Model::forward: seq " + std::to_string(seq) + " exceeds context_length " +
                                    std::to_string(C::context_length));
    }
    if (static_cast<Index>(tokens.size()) != batch * seq) {
        throw std::invalid_argument("Model::forward: " + std::to_string(tokens.size()) + " tokens given, batch * seq = " +
                                    std::to_string(batch * seq));
    }
    check_token_ids(tokens, C::vocab_size);
}

template <ModelConfig C, class P>
class Model<C, Cpu<P>> {
public:
    using Config = C;
    using Scalar = typename Cpu<P>::Scalar;
    using T = Scalar;
    using Dims = gemma3::Dims<C>;
    static constexpr std::size_t parameter_count = gemma3::parameter_count<C>;

    Parameters<C, T> parameters;

    // Random weights (see InitScheme); norm weights start at zero.
    void init(InitScheme scheme = InitScheme::seed, double initializer_range = 0.02, std::uint64_t seed = 0) {
        init_parameters(parameters, scheme, initializer_range, seed);
        weights_updated();
    }

    // Call after changing `parameters` other than through init() (loading weights, an optimizer step,
    // a checkpoint): Cpu<bf16> then rounds its bf16 copy afresh before the next pass, or checks again
    // whether the weights are all bf16 values (see products_scope). A no-op otherwise.
    void weights_updated() {
        compute_copy_stale_ = true;
        bf16_values_checked_ = false;
    }

    // Logits [batch*seq, vocab] for `batch` sequences of `seq` tokens each, stored batch-major in
    // `tokens`. The view stays valid until the next call.
    ConstMatrixView<T> forward(std::span<const std::int32_t> tokens, Index batch, Index seq) {
        prepare(tokens, batch, seq, /*keep_lse=*/false);
        const auto precision = products_scope();
        forward_to_final_norm<C, T>(std::as_const(parameters).weights(), tokens, rope_, acts_);
        logits_.resize(static_cast<std::size_t>(batch * seq * Dims::vocab));
        head_forward<C, T>(std::as_const(parameters).weights(), acts_, matrix_view(logits_.data(), batch * seq, Dims::vocab));
        return const_view(logits_.data(), batch * seq, Dims::vocab);
    }

    // Training: the mean cross-entropy of predicting targets[i] at position i, and its gradient.
    // Gradients of loss_scale * mean_loss are added to `grads` (pass 1 / accumulation_steps to
    // accumulate micro-batches as the seed does). Returns the mean loss, unscaled.
    double forward_backward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets, Index batch,
                            Index seq, Parameters<C, T>& grads, double loss_scale = 1.0) {
        prepare(tokens, batch, seq, /*keep_lse=*/true);
        check_targets(targets);
        const auto precision = products_scope();
        forward_to_final_norm<C, T>(std::as_const(parameters).weights(), tokens, rope_, acts_);
        const double n = static_cast<double>(batch * seq);
        const double loss_sum = backward<C, T>(std::as_const(parameters).weights(), grads.weights(), targets,
                                               static_cast<T>(loss_scale / n), rope_, acts_, scratch_);
        return loss_sum / n;
    }

    // Evaluation: the mean cross-entropy, without gradients.
    double loss(std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets, Index batch, Index seq) {
        prepare(tokens, batch, seq, /*keep_lse=*/false);
        check_targets(targets);
        const auto precision = products_scope();
        forward_to_final_norm<C, T>(std::as_const(parameters).weights(), tokens, rope_, acts_);
        return loss_only<C, T>(std::as_const(parameters).weights(), targets, acts_, scratch_.logits_chunk) /
               static_cast<double>(batch * seq);
    }

    const Activations<C, T>& activations() const { return acts_; }

protected:
    // Validates the input and sizes the work buffers.
    void prepare(std::span<const std::int32_t> tokens, Index batch, Index seq, bool keep_lse) {
        check_forward_input<C>(tokens, batch, seq);
        acts_.resize(batch, seq, keep_lse, /*bf16_act=*/Cpu<P>::mixed_bf16);
        rope_.template ensure<C>(seq);
    }

    void check_targets(std::span<const std::int32_t> targets) const {
        if (static_cast<Index>(targets.size()) != acts_.tokens_count()) {
            throw std::invalid_argument("Model: " + std::to_string(targets.size()) + " targets given, batch * seq = " +
                                        std::to_string(acts_.tokens_count()));
        }
        check_token_ids(targets, Dims::vocab);
    }

    // Cpu<bf16>: the scope that makes this thread's products bf16, after rounding the weight copy
    // when the weights changed. Widened products (blas.hpp) round the weights on their way into the
    // fp32 kernel, so they need no copy, and none is held (the seed's is 252 MiB). When the weights
    // are all bf16 values (a bf16 checkpoint's, as inference has them; checked once after each
    // weights_updated(), a read-only pass that stops early for fp32 training weights) the widened
    // products read them in place, with no rounding pass (docs/design.md §2: the seed's bf16 forward
    // on one core, 464 -> 480 tokens/s).
    // Nothing for float and double.
    std::optional<Bf16Products> products_scope() {
        if constexpr (Cpu<P>::mixed_bf16) {
            if (bf16_kernel() == Bf16Kernel::widened) {
                Buffer<bf16>().swap(compute_copy_);
                compute_copy_stale_ = true;
                if (!bf16_values_checked_) {
                    weights_are_bf16_ = all_bf16_values(parameters.data(), parameters.size());
                    bf16_values_checked_ = true;
                }
                copy_view_ = {parameters.data(), nullptr, parameters.size(), weights_are_bf16_};
                return std::optional<Bf16Products>(std::in_place, copy_view_);
            }
            if (compute_copy_stale_ || compute_copy_.size() != parameters.size()) {
                compute_copy_.resize(parameters.size());
                const float* master = parameters.data();
                const auto count = static_cast<std::ptrdiff_t>(parameters.size());
#pragma omp parallel for schedule(static)
                for (std::ptrdiff_t i = 0; i < count; ++i) compute_copy_[static_cast<std::size_t>(i)] = bf16(master[i]);
                compute_copy_stale_ = false;
            }
            copy_view_ = {parameters.data(), compute_copy_.data(), compute_copy_.size()};
            return std::optional<Bf16Products>(std::in_place, copy_view_);
        } else {
            return std::nullopt;
        }
    }

    Buffer<bf16> compute_copy_;  // Cpu<bf16>: the weights rounded to bf16, same layout as `parameters`
    Bf16WeightCopy copy_view_;
    bool compute_copy_stale_ = true;
    bool bf16_values_checked_ = false;  // Cpu<bf16>, widened products: weights_are_bf16_ is current
    bool weights_are_bf16_ = false;
    Activations<C, T> acts_;
    BackwardScratch<C, T> scratch_;
    RopeTables<T> rope_;
    Buffer<T> logits_;
};

}  // namespace gemma3
