// Model<Config, Cuda>: the Gemma 3 forward and backward passes on an NVIDIA GPU (or, built with
// GEMMA3_CUDA_EMULATION, on the CPU emulator), with the same public methods as the CPU Model in
// model.hpp, so the trainer and the programs can hold either.
//
//   #include <gemma3/cuda/model.cuh>        // compiled by nvcc
//   gemma3::Model<gemma3::configs::Gemma3_270M, gemma3::Cuda> model;
//   model.init(gemma3::InitScheme::seed, 0.02, 1);   // or model.load("model.safetensors")
//   gemma3::cuda::Gradients<Config> grads;            // fp32, ParameterLayout order, on the device
//   double loss = model.forward_backward(x, y, batch, seq, grads, 1.0 / 32);
//
// Precision (docs/model.md §3.7, §10.2): bf16 weights (the compute copy) and bf16 activations wherever they
// feed a matrix product; fp32 accumulation in every product (cuBLASLt compute type 32F) and in
// every reduction (norm statistics, softmax, loss in double). The residual stream and its gradient
// stay fp32 ([tokens, emb_dim], two buffers per block): adding small branch outputs to a stream of
// RMS ~25 (the seed's init) in bf16 would round most of them away. Weight gradients are fp32 and
// accumulate across micro-batches; AdamW's fp32 master weights and moments live in
// TrainingState (training.cuh), which writes this model's bf16 copy after each step.
//
// `parameters` is a host copy in fp32, as in the CPU model: init() and load() fill it and upload it.
// Device training does not update it; TrainingState::download(model.parameters, ...) does
// (for checkpoints).
//
// Memory: the weights, one arena of activations sized for the last (batch, seq, mode), and a logits
// chunk of at most 2^25 elements (the full batch x vocab logits never exist on the device).
// Attention runs the tiled flash kernels (cuda/ops/attention.cuh): training keeps one fp32
// log-sum-exp per (sequence, head, query) per layer and its backward recomputes the probabilities
// tile by tile, so no buffer of batch x heads x seq^2 exists. Inference may ask for the exact
// matrix-product path instead (see AttentionPath), which needs seq^2 scratch.
#pragma once

#if defined(__CUDACC__) && !defined(EIGEN_NO_CUDA)
#define EIGEN_NO_CUDA  // the CPU types used here are host-only: keep Eigen from marking them __device__
#endif

#include <gemma3/model.hpp>
#include <gemma3/io/weights_io.hpp>

#include <gemma3/cuda/blas_lt.hpp>
#include <gemma3/cuda/ops/attention.cuh>
#include <gemma3/cuda/ops/cast.cuh>
#include <gemma3/cuda/ops/cross_entropy.cuh>
#include <gemma3/cuda/ops/embedding.cuh>
#include <gemma3/cuda/ops/geglu.cuh>
#include <gemma3/cuda/ops/linear.cuh>
#include <gemma3/cuda/ops/rmsnorm.cuh>
#include <gemma3/cuda/ops/rope.cuh>
#include <gemma3/cuda/runtime.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

GEMMA3_CUDA_NAMESPACE_BEGIN

// The back-end tag: Model<Config, Cuda>.
struct Cuda {};

// All gradients of a model on the device: fp32, one contiguous buffer in ParameterLayout<C> order
// (the same layout as the weights), so clipping, the optimizer and an all-reduce (NCCL) each see one
// flat array. Gradients accumulate (+=) across forward_backward calls until zero().
template <ModelConfig C>
class Gradients {
public:
    static constexpr std::size_t size_v = ParameterLayout<C>::total;

    Gradients() : buffer_(size_v) { zero(); }

    float* data() noexcept { return buffer_.data(); }
    const float* data() const noexcept { return buffer_.data(); }
    std::size_t size() const noexcept { return size_v; }
    Weights<C, float> weights() { return Weights<C, float>::point_into(buffer_.data()); }

    void zero() { buffer_.fill_bytes(0); }
    void download(Parameters<C, float>& host) const { copy_to_host(host.data(), buffer_.data(), size_v); }
    void upload(const Parameters<C, float>& host) { copy_to_device(buffer_.data(), host.data(), size_v); }

private:
    DeviceBuffer<float> buffer_;
};

// Where attention runs when the model only infers (forward, loss). Training always runs the flash
// kernels (forward with log-sum-exps, tiled backward); so does inference by default, which makes
// loss() give the training forward's bits.
enum class AttentionPath {
    automatic,        // flash (the training path)
    matrix_products,  // cuBLASLt QK^T and PV with the fused masked softmax (seq^2 scratch)
    flash,            // the tiled online-softmax kernel (even head_dim <= 256)
};

namespace model_detail {

// Slices of one device allocation, each 256-byte aligned. Run a layout once without a base to
// measure it, allocate, then run it again to hand out the pointers.
class Arena {
public:
    explicit Arena(std::byte* base = nullptr) : base_(base) {}
    template <class T>
    T* take(std::size_t count) {
        const std::size_t offset = (used_ + 255) / 256 * 256;
        used_ = offset + count * sizeof(T);
        return base_ == nullptr ? nullptr : reinterpret_cast<T*>(base_ + offset);
    }
    std::size_t used() const noexcept { return used_; }

private:
    std::byte* base_;
    std::size_t used_ = 0;
};

struct BlockActivations {
    float* input = nullptr;  // [N, D] residual stream entering the block (fp32)
    float* input_rstd = nullptr;
    bf16* attn_in = nullptr;  // [N, D]
    bf16* qkv = nullptr;      // [N, q + 2 kv]
    float* q_rstd = nullptr;  // [N * H]
    float* k_rstd = nullptr;  // [N * Hk]
    bf16* q_rot = nullptr;    // [N, q]
    bf16* k_rot = nullptr;    // [N, kv]
    bf16* probs = nullptr;    // [B, H, T, T] (inference on the products path; shared scratch)
    float* lse = nullptr;     // [B, H, T] log-sum-exps of the flash forward (training)
    bf16* attn = nullptr;     // [N, q]
    bf16* attn_proj = nullptr;
    float* attn_proj_rstd = nullptr;
    float* mid = nullptr;  // [N, D] residual stream after attention (fp32)
    float* mid_rstd = nullptr;
    bf16* mlp_in = nullptr;
    bf16* gate_up = nullptr;  // [N, 2F]
    bf16* act = nullptr;      // [N, F]
    bf16* mlp_out = nullptr;  // [N, D]
    float* mlp_out_rstd = nullptr;
};

}  // namespace model_detail

// One decoder block on the device for n tokens: a.input -> out (the next block's input; may be
// a.input itself). The twin of the CPU's block_forward (core/forward.hpp): the same ops in the same
// order, bf16 storage between them and fp32 residual stream and statistics. Attention is the
// caller's attend(q_rot, k_rot, v), which writes a.attn: the model attends over its sequences, the
// generator (cuda/generation.cuh) over its KV cache. Norm statistics (the *_rstd members) are
// written where not null; training keeps them for the backward.
template <ModelConfig C, class BlockW, class Attend>
void block_forward(Gemm& gemm, const Stream& s, const BlockW& w, const DeviceRopeTable& table, const std::int32_t* positions,
                   std::int64_t n, const model_detail::BlockActivations& a, float* out, Attend&& attend) {
    using Dims = gemma3::Dims<C>;
    constexpr int D = Dims::model, F = Dims::ffn, Q = Dims::q, KV = Dims::kv, QKV = Dims::qkv, H = Dims::heads,
                  HK = Dims::kv_heads, DH = Dims::head;
    const float eps = static_cast<float>(C::rms_norm_eps);
    const auto view = [](const bf16* data, std::int64_t rows, std::int64_t cols) { return matrix_view<const bf16>(data, rows, cols, cols); };
    const auto out_view = [](bf16* data, std::int64_t rows, std::int64_t cols) { return matrix_view<bf16>(data, rows, cols, cols); };

    // Attention branch: norm, one product for q|k|v, q/k norms, RoPE, attention, output projection.
    rmsnorm_forward<float, bf16>(s, token_rows<const float>(a.input, D), w.input_norm, eps, token_rows(a.attn_in, D), a.input_rstd,
                                 n, D);
    linear_forward(gemm, s, view(a.attn_in, n, D), view(w.q_proj, QKV, D), out_view(a.qkv, n, QKV));
    if constexpr (C::qk_norm) {
        rmsnorm_forward<bf16, bf16>(s, head_rows<const bf16>(a.qkv, QKV, H), w.q_norm, eps, head_rows(a.q_rot, Q, H), a.q_rstd, n,
                                    DH);
        rmsnorm_forward<bf16, bf16>(s, head_rows<const bf16>(a.qkv + Q, QKV, HK), w.k_norm, eps, head_rows(a.k_rot, KV, HK),
                                    a.k_rstd, n, DH);
        rope_forward<bf16, bf16>(s, a.q_rot, Q, a.q_rot, Q, n, H, positions, table);
        rope_forward<bf16, bf16>(s, a.k_rot, KV, a.k_rot, KV, n, HK, positions, table);
    } else {
        rope_forward<bf16, bf16>(s, a.qkv, QKV, a.q_rot, Q, n, H, positions, table);
        rope_forward<bf16, bf16>(s, a.qkv + Q, QKV, a.k_rot, KV, n, HK, positions, table);
    }
    attend(static_cast<const bf16*>(a.q_rot), static_cast<const bf16*>(a.k_rot), static_cast<const bf16*>(a.qkv + Q + KV));
    linear_forward(gemm, s, view(a.attn, n, Q), view(w.o_proj, D, Q), out_view(a.attn_proj, n, D));
    // mid = input + post_attention_norm(attn_proj)
    rmsnorm_forward<bf16, float>(s, token_rows<const bf16>(a.attn_proj, D), w.post_attention_norm, eps, token_rows(a.mid, D),
                                 a.attn_proj_rstd, n, D, a.input, D);

    // Feed-forward branch: norm, one product for gate|up, GeGLU, down projection.
    rmsnorm_forward<float, bf16>(s, token_rows<const float>(a.mid, D), w.pre_feedforward_norm, eps, token_rows(a.mlp_in, D),
                                 a.mid_rstd, n, D);
    linear_forward(gemm, s, view(a.mlp_in, n, D), view(w.gate_proj, 2 * F, D), out_view(a.gate_up, n, 2 * F));
    geglu_forward(s, a.gate_up, 2 * F, a.act, F, n, F);
    linear_forward(gemm, s, view(a.act, n, F), view(w.down_proj, D, F), out_view(a.mlp_out, n, D));
    // out = mid + post_feedforward_norm(mlp_out)
    rmsnorm_forward<bf16, float>(s, token_rows<const bf16>(a.mlp_out, D), w.post_feedforward_norm, eps, token_rows(out, D),
                                 a.mlp_out_rstd, n, D, a.mid, D);
}

namespace model_detail {

struct BackwardScratch {
    float *d_x = nullptr, *d_x_next = nullptr;  // [N, D] residual gradient (ping-pong)
    bf16* d_mlp_out = nullptr;                  // [N, D]
    float* d_act = nullptr;                     // [N, F]
    bf16* d_gate_up = nullptr;                  // [N, 2F]
    float* d_mlp_in = nullptr;                  // [N, D]
    bf16* d_attn_proj = nullptr;                // [N, D]
    bf16* d_attn = nullptr;                     // [N, q]
    float* delta = nullptr;                     // [B, H, T] dO . O of the flash backward
    float *dq = nullptr, *dk = nullptr, *dv = nullptr;
    bf16* d_qkv = nullptr;      // [N, q + 2 kv]
    float* d_attn_in = nullptr;  // [N, D]; also dh of the head
};

}  // namespace model_detail

GEMMA3_CUDA_NAMESPACE_END

namespace gemma3 {

using cuda::Cuda;

template <ModelConfig C>
class Model<C, cuda::Cuda> {
public:
    using Config = C;
    using Scalar = float;  // of the host-side views (parameters, logits)
    using Dims = gemma3::Dims<C>;
    using bf16 = cuda::bf16;
    static constexpr std::size_t parameter_count = gemma3::parameter_count<C>;

    // Host copy of the weights in fp32 (see the header comment); upload() sends it to the device.
    Parameters<C, float> parameters;

    Model() : gemm_(std::make_unique<cuda::Gemm>()), weights_(ParameterLayout<C>::total) {
        device_weights_ = Weights<C, bf16>::point_into(weights_.data());
    }
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    // Random weights (see InitScheme), drawn on the host exactly as the CPU model draws them.
    void init(InitScheme scheme = InitScheme::seed, double initializer_range = 0.02, std::uint64_t seed = 0) {
        init_parameters(parameters, scheme, initializer_range, seed);
        upload();
    }

    // Weights from a safetensors file with Hugging Face's tensor names (read on the host).
    void load(const std::filesystem::path& safetensors_path) {
        load_weights(safetensors_path, parameters);
        upload();
    }

    // parameters (host, fp32) -> the device's bf16 compute copy, rounded to nearest even.
    void upload() {
        constexpr std::size_t chunk = std::size_t{1} << 20;
        std::vector<std::uint16_t> staging(std::min(chunk, parameters.size()));
        for (std::size_t begin = 0; begin < parameters.size(); begin += chunk) {
            const std::size_t count = std::min(chunk, parameters.size() - begin);
            for (std::size_t i = 0; i < count; ++i) staging[i] = float_to_bf16(parameters.data()[begin + i]);
            GEMMA3_CUDA_CHECK(cudaMemcpy(weights_.data() + begin, staging.data(), count * sizeof(std::uint16_t),
                                         cudaMemcpyHostToDevice));
        }
    }

    // Logits [batch*seq, vocab] (host, fp32) for `batch` sequences of `seq` tokens, batch-major in
    // `tokens`. The view stays valid until the next call.
    ConstMatrixView<float> forward(std::span<const std::int32_t> tokens, Index batch, Index seq) {
        prepare(tokens, batch, seq, Mode::inference);
        forward_to_final_norm();
        const Index n = batch * seq;
        logits_.resize(static_cast<std::size_t>(n * Dims::vocab));
        const auto h = cuda::matrix_view<const bf16>(final_out_, n, Dims::model, Dims::model);
        const auto head = cuda::matrix_view<const bf16>(device_weights_.lm_head, Dims::vocab, Dims::model, Dims::model);
        for (Index r0 = 0; r0 < n; r0 += workspace_.chunk_rows) {
            const Index rows = std::min<Index>(workspace_.chunk_rows, n - r0);
            gemm_->multiply(stream_, cuda::matrix_view(h.data + r0 * Dims::model, rows, Dims::model, Dims::model),
                            cuda::Op::none, head, cuda::Op::transpose,
                            cuda::matrix_view(workspace_.logits, rows, Dims::vocab, Dims::vocab));
            cuda::copy_to_host(logits_.data() + r0 * Dims::vocab, workspace_.logits, static_cast<std::size_t>(rows * Dims::vocab));
        }
        return const_view(logits_.data(), n, Dims::vocab);
    }

    // Training: the mean cross-entropy of predicting targets[i] at position i, and its gradient.
    // Gradients of loss_scale * mean_loss are added to `grads`. Returns the mean loss, unscaled.
    double forward_backward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets, Index batch, Index seq,
                            cuda::Gradients<C>& grads, double loss_scale = 1.0) {
        prepare(tokens, batch, seq, Mode::training);
        upload_targets(targets);
        forward_to_final_norm();
        const double n = static_cast<double>(batch * seq);
        backward(grads.weights(), static_cast<float>(loss_scale / n));
        return read_loss() / n;
    }

    // Evaluation: the mean cross-entropy, without gradients.
    double loss(std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets, Index batch, Index seq) {
        prepare(tokens, batch, seq, Mode::inference);
        upload_targets(targets);
        forward_to_final_norm();
        cuda::memset_device_async(loss_total_, 0, sizeof(double), stream_);
        const Index n = batch * seq;
        cuda::classifier_forward_backward(*gemm_, stream_, cuda::matrix_view<const bf16>(final_out_, n, Dims::model, Dims::model),
                                          cuda::matrix_view<const bf16>(device_weights_.lm_head, Dims::vocab, Dims::model,
                                                                        Dims::model),
                                          targets_, 0.0f, nullptr, 0, cuda::MatrixView<float>{}, workspace_, loss_total_);
        return read_loss() / static_cast<double>(n);
    }

    // --- Device access (trainer, benchmarks, tests) -------------------------------------------------
    bf16* device_parameters() noexcept { return weights_.data(); }
    const bf16* device_parameters() const noexcept { return weights_.data(); }
    const cuda::Stream& stream() const noexcept { return stream_; }
    cuda::Gemm& gemm() noexcept { return *gemm_; }

    void set_attention_path(cuda::AttentionPath path) { attention_path_ = path; }
    // Deterministic (sorted, the default) or atomic scatter-add for the embedding gradient.
    void set_deterministic_embedding_backward(bool deterministic) { deterministic_embedding_ = deterministic; }
    // Rows of logits computed at once by the head (default: what fits 2^25 elements).
    void set_classifier_chunk_rows(int rows) {
        if (rows < 0) throw std::invalid_argument("set_classifier_chunk_rows: " + std::to_string(rows) + " is negative");
        classifier_chunk_override_ = rows;
        shape_ = {};  // re-plan the buffers
    }
    // Device bytes held by this model (weights and work buffers).
    std::size_t device_bytes() const noexcept { return weights_.size_bytes() + arena_.size_bytes(); }

private:
    enum class Mode { training, inference };
    struct Shape {
        Index batch = 0, seq = 0;
        Mode mode = Mode::inference;
        bool flash = false;
    };

    // sqrt(emb_dim) in fp32, as the CPU model rounds it (docs/model.md §3.1).
    static float embedding_scale() { return static_cast<float>(std::sqrt(static_cast<double>(Dims::model))); }

    // The flash kernels take an even head_dim up to 256 (their shared-memory tiles).
    static constexpr bool flash_capable = Dims::head <= 256 && Dims::head % 2 == 0;

    bool use_flash(Mode mode) const {
        if constexpr (!flash_capable) {
            if (mode == Mode::training) {
                throw std::invalid_argument("Model<C, Cuda>::forward_backward: training needs the flash attention kernels, "
                                            "which take an even head_dim up to 256 (head_dim " +
                                            std::to_string(Dims::head) + ")");
            }
            return false;
        } else {
            return mode == Mode::training || attention_path_ != cuda::AttentionPath::matrix_products;
        }
    }

    // Validates the input, sizes the buffers and uploads the tokens.
    void prepare(std::span<const std::int32_t> tokens, Index batch, Index seq, Mode mode) {
        check_forward_input<C>(tokens, batch, seq);
        if (batch * seq > (Index{1} << 30)) {
            throw std::invalid_argument("Model::forward: batch * seq = " + std::to_string(batch * seq) + " is too large");
        }
        // A training arena serves inference of the same shape too (it holds every buffer inference
        // needs), so evaluating between training steps does not reallocate.
        flash_ = use_flash(mode);
        const bool fits = shape_.batch == batch && shape_.seq == seq &&
                          (shape_.mode == Mode::training || mode == Mode::inference) && (flash_ || !shape_.flash);
        if (!fits) allocate(Shape{batch, seq, mode, flash_});
        if (rope_local_.positions() < seq) {
            rope_local_ = cuda::DeviceRopeTable(C::rope_local_base, Dims::head, seq);
            rope_global_ = cuda::DeviceRopeTable(C::rope_base, Dims::head, seq);
        }
        cuda::copy_to_device(tokens_, tokens.data(), tokens.size());
        if (mode == Mode::training) {
            if (deterministic_embedding_) {
                const auto segments = cuda::EmbeddingSegments::of(tokens);
                segment_count_ = static_cast<int>(segments.segment_tokens.size());
                cuda::copy_to_device(segment_tokens_, segments.segment_tokens.data(), segments.segment_tokens.size());
                cuda::copy_to_device(segment_offsets_, segments.offsets.data(), segments.offsets.size());
                cuda::copy_to_device(segment_order_, segments.order.data(), segments.order.size());
            }
        }
    }

    void upload_targets(std::span<const std::int32_t> targets) {
        const Index n = shape_.batch * shape_.seq;
        if (static_cast<Index>(targets.size()) != n) {
            throw std::invalid_argument("Model: " + std::to_string(targets.size()) + " targets given, batch * seq = " +
                                        std::to_string(n));
        }
        check_token_ids(targets, Dims::vocab);
        cuda::copy_to_device(targets_, targets.data(), targets.size());
    }

    double read_loss() const {
        double total = 0;
        cuda::copy_to_host(&total, loss_total_, 1);
        return total;
    }

    // Hands out every work buffer from one arena (measured first, then allocated).
    void layout(cuda::model_detail::Arena& arena, const Shape& s) {
        const auto n = static_cast<std::size_t>(s.batch * s.seq);
        const std::size_t d = Dims::model, f = Dims::ffn, q = Dims::q, kv = Dims::kv, qkv = Dims::qkv;
        const std::size_t scores = static_cast<std::size_t>(s.batch) * Dims::heads * static_cast<std::size_t>(s.seq * s.seq);
        const std::size_t attention_rows = static_cast<std::size_t>(s.batch) * Dims::heads * static_cast<std::size_t>(s.seq);
        const bool training = s.mode == Mode::training;
        tokens_ = arena.take<int>(n);
        positions_ = arena.take<std::int32_t>(n);
        targets_ = arena.take<int>(n);
        segment_tokens_ = arena.take<int>(n);
        segment_offsets_ = arena.take<int>(n + 1);
        segment_order_ = arena.take<int>(n);
        for (int l = 0; l <= Dims::layers; ++l) residual_[static_cast<std::size_t>(l)] = arena.take<float>(n * d);
        bf16* shared_probs = s.flash ? nullptr : arena.take<bf16>(scores);  // training is always flash
        scores_ = s.flash ? nullptr : arena.take<float>(scores);
        for (int l = 0; l < Dims::layers; ++l) {
            auto& a = blocks_[static_cast<std::size_t>(l)];
            a.input = residual_[static_cast<std::size_t>(l)];
            a.input_rstd = arena.take<float>(n);
            a.attn_in = arena.take<bf16>(n * d);
            a.qkv = arena.take<bf16>(n * qkv);
            a.q_rstd = arena.take<float>(n * Dims::heads);
            a.k_rstd = arena.take<float>(n * Dims::kv_heads);
            a.q_rot = arena.take<bf16>(n * q);
            a.k_rot = arena.take<bf16>(n * kv);
            a.probs = shared_probs;
            a.lse = training ? arena.take<float>(attention_rows) : nullptr;
            a.attn = arena.take<bf16>(n * q);
            a.attn_proj = arena.take<bf16>(n * d);
            a.attn_proj_rstd = arena.take<float>(n);
            a.mid = arena.take<float>(n * d);
            a.mid_rstd = arena.take<float>(n);
            a.mlp_in = arena.take<bf16>(n * d);
            a.gate_up = arena.take<bf16>(n * 2 * f);
            a.act = arena.take<bf16>(n * f);
            a.mlp_out = arena.take<bf16>(n * d);
            a.mlp_out_rstd = arena.take<float>(n);
        }
        final_in_ = residual_[static_cast<std::size_t>(Dims::layers)];
        final_rstd_ = arena.take<float>(n);
        final_out_ = arena.take<bf16>(n * d);
        const int chunk = classifier_chunk_override_ > 0
                              ? static_cast<int>(std::min<Index>(classifier_chunk_override_, s.batch * s.seq))
                              : cuda::classifier_chunk_rows(s.batch * s.seq, Dims::vocab);
        workspace_.chunk_rows = chunk;
        workspace_.logits = arena.take<float>(static_cast<std::size_t>(chunk) * Dims::vocab);
        workspace_.d_logits = training ? arena.take<bf16>(static_cast<std::size_t>(chunk) * Dims::vocab) : nullptr;
        workspace_.row_loss = arena.take<double>(n);
        loss_total_ = arena.take<double>(1);
        scratch_ = {};
        if (training) {
            scratch_.d_x = arena.take<float>(n * d);
            scratch_.d_x_next = arena.take<float>(n * d);
            scratch_.d_mlp_out = arena.take<bf16>(n * d);
            scratch_.d_act = arena.take<float>(n * f);
            scratch_.d_gate_up = arena.take<bf16>(n * 2 * f);
            scratch_.d_mlp_in = arena.take<float>(n * d);
            scratch_.d_attn_proj = arena.take<bf16>(n * d);
            scratch_.d_attn = arena.take<bf16>(n * q);
            scratch_.delta = arena.take<float>(attention_rows);
            scratch_.dq = arena.take<float>(n * q);
            scratch_.dk = arena.take<float>(n * kv);
            scratch_.dv = arena.take<float>(n * kv);
            scratch_.d_qkv = arena.take<bf16>(n * qkv);
            scratch_.d_attn_in = arena.take<float>(n * d);
            const std::int64_t rows = s.batch * s.seq;
            norm_workspace_ = arena.take<float>(std::max({cuda::rmsnorm_backward_workspace(rows, Dims::model),
                                                          cuda::rmsnorm_backward_workspace(rows * Dims::heads, Dims::head),
                                                          cuda::rmsnorm_backward_workspace(rows * Dims::kv_heads, Dims::head)}));
        }
    }

    void allocate(const Shape& s) {
        shape_ = {};  // until the new arena exists: a failed allocation must not look like a fit
        arena_ = {};  // release first: the old and new arenas need not fit together
        cuda::model_detail::Arena measure;
        layout(measure, s);
        arena_ = cuda::DeviceBuffer<std::byte>(measure.used());
        cuda::model_detail::Arena real(arena_.data());
        layout(real, s);
        // RoPE positions: 0..seq-1 in every sequence (batch-major tokens).
        std::vector<std::int32_t> positions(static_cast<std::size_t>(s.batch * s.seq));
        for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(static_cast<Index>(i) % s.seq);
        cuda::copy_to_device(positions_, positions.data(), positions.size());
        shape_ = s;
    }

    cuda::AttentionShape attention_shape(int layer) const {
        return {static_cast<int>(shape_.batch), static_cast<int>(shape_.seq), Dims::heads, Dims::kv_heads, Dims::head,
                Dims::kind(layer) == AttentionKind::sliding ? Dims::window : 0,
                static_cast<float>(1.0 / std::sqrt(C::query_pre_attn_scalar))};
    }
    const cuda::DeviceRopeTable& rope_table(int layer) const {
        return Dims::kind(layer) == AttentionKind::sliding ? rope_local_ : rope_global_;
    }

    void forward_to_final_norm() {
        const Index n = shape_.batch * shape_.seq;
        cuda::embedding_forward(stream_, device_weights_.embed, tokens_, embedding_scale(), blocks_[0].input, static_cast<int>(n),
                                Dims::model);
        for (int l = 0; l < Dims::layers; ++l) block_forward(l, residual_[static_cast<std::size_t>(l) + 1]);
        cuda::rmsnorm_forward<float, bf16>(stream_, cuda::token_rows<const float>(final_in_, Dims::model),
                                           device_weights_.final_norm, eps(), cuda::token_rows(final_out_, Dims::model),
                                           final_rstd_, n, Dims::model);
    }

    static float eps() { return static_cast<float>(C::rms_norm_eps); }

    template <class T>
    static cuda::MatrixView<const T> view(const T* data, std::int64_t rows, std::int64_t cols) {
        return cuda::matrix_view<const T>(data, rows, cols, cols);
    }
    template <class T>
    static cuda::MatrixView<T> mutable_view(T* data, std::int64_t rows, std::int64_t cols) {
        return cuda::matrix_view<T>(data, rows, cols, cols);
    }

    void block_forward(int layer, float* out) {
        const auto& a = blocks_[static_cast<std::size_t>(layer)];
        cuda::block_forward<C>(*gemm_, stream_, device_weights_.blocks[static_cast<std::size_t>(layer)], rope_table(layer), positions_,
                               shape_.batch * shape_.seq, a, out, [&](const bf16* q, const bf16* k, const bf16* v) {
                                   constexpr int Q = Dims::q, KV = Dims::kv, QKV = Dims::qkv;
                                   if (flash_) {
                                       if constexpr (flash_capable) {
                                           cuda::flash_attention_forward<Dims::head>(stream_, attention_shape(layer), q, Q, k, KV, v,
                                                                                     QKV, a.attn, Q, a.lse);
                                       }
                                   } else {
                                       cuda::attention_forward(*gemm_, stream_, attention_shape(layer), q, Q, k, KV, v, QKV, scores_,
                                                               a.probs, a.attn, Q);
                                   }
                               });
    }

    // Head, loss and the whole backward pass into g, after forward_to_final_norm (training mode).
    void backward(const Weights<C, float>& g, float grad_scale) {
        auto& s = scratch_;
        const std::int64_t n = shape_.batch * shape_.seq;
        constexpr int D = Dims::model;
        cuda::memset_device_async(loss_total_, 0, sizeof(double), stream_);
        float* dh = s.d_attn_in;
        cuda::classifier_forward_backward(
            *gemm_, stream_, view(final_out_, n, D), view<bf16>(device_weights_.lm_head, Dims::vocab, D), targets_, grad_scale, dh,
            D, cuda::matrix_view(g.lm_head, Dims::vocab, D, D), workspace_, loss_total_);
        cuda::rmsnorm_backward<float, float, float>(stream_, cuda::token_rows<const float>(final_in_, D), device_weights_.final_norm,
                                                    final_rstd_, cuda::token_rows<const float>(dh, D), cuda::token_rows(s.d_x, D),
                                                    g.final_norm, norm_workspace_, n, D);
        for (int l = Dims::layers - 1; l >= 0; --l) {
            block_backward(l, g.blocks[static_cast<std::size_t>(l)], s.d_x, s.d_x_next);
            std::swap(s.d_x, s.d_x_next);
        }
        if (deterministic_embedding_) {
            cuda::embedding_backward_sorted(stream_, segment_tokens_, segment_offsets_, segment_order_, segment_count_,
                                            embedding_scale(), s.d_x, g.embed, D);
        } else {
            cuda::embedding_backward_atomic(stream_, tokens_, embedding_scale(), s.d_x, g.embed, static_cast<int>(n), D);
        }
    }

    // d_out: gradient w.r.t. the block's output; d_in (overwritten): w.r.t. its input.
    void block_backward(int layer, const BlockWeights<float>& g, const float* d_out, float* d_in) {
        using cuda::head_rows;
        using cuda::token_rows;
        const auto& w = device_weights_.blocks[static_cast<std::size_t>(layer)];
        const auto& a = blocks_[static_cast<std::size_t>(layer)];
        auto& s = scratch_;
        const std::int64_t n = shape_.batch * shape_.seq;
        constexpr int D = Dims::model, F = Dims::ffn, Q = Dims::q, KV = Dims::kv, QKV = Dims::qkv, H = Dims::heads,
                      HK = Dims::kv_heads, DH = Dims::head;
        float* ws = norm_workspace_;

        // x_out = mid + post_feedforward_norm(mlp_out)
        cuda::rmsnorm_backward<bf16, float, bf16>(stream_, token_rows<const bf16>(a.mlp_out, D), w.post_feedforward_norm,
                                                  a.mlp_out_rstd, token_rows<const float>(d_out, D), token_rows(s.d_mlp_out, D),
                                                  g.post_feedforward_norm, ws, n, D);
        cuda::linear_backward(*gemm_, stream_, view(a.act, n, F), view<bf16>(w.down_proj, D, F), view(s.d_mlp_out, n, D),
                              mutable_view(s.d_act, n, F), cuda::matrix_view(g.down_proj, D, F, F));
        cuda::geglu_backward<float>(stream_, a.gate_up, 2 * F, s.d_act, F, s.d_gate_up, 2 * F, n, F);
        cuda::linear_backward(*gemm_, stream_, view(a.mlp_in, n, D), view<bf16>(w.gate_proj, 2 * F, D), view(s.d_gate_up, n, 2 * F),
                              mutable_view(s.d_mlp_in, n, D), cuda::matrix_view(g.gate_proj, 2 * F, D, D));
        // d mid = d_out + pre_feedforward_norm'(d mlp_in), into d_in
        cuda::rmsnorm_backward<float, float, float>(stream_, token_rows<const float>(a.mid, D), w.pre_feedforward_norm, a.mid_rstd,
                                                    token_rows<const float>(s.d_mlp_in, D), token_rows(d_in, D),
                                                    g.pre_feedforward_norm, ws, n, D, d_out, D);

        // mid = x_in + post_attention_norm(attn_proj); d_in holds d mid.
        cuda::rmsnorm_backward<bf16, float, bf16>(stream_, token_rows<const bf16>(a.attn_proj, D), w.post_attention_norm,
                                                  a.attn_proj_rstd, token_rows<const float>(d_in, D), token_rows(s.d_attn_proj, D),
                                                  g.post_attention_norm, ws, n, D);
        cuda::linear_backward(*gemm_, stream_, view(a.attn, n, Q), view<bf16>(w.o_proj, D, Q), view(s.d_attn_proj, n, D),
                              mutable_view(s.d_attn, n, Q), cuda::matrix_view(g.o_proj, D, Q, Q));
        const bf16* v = a.qkv + Q + KV;
        if constexpr (flash_capable) {  // training is refused otherwise (use_flash)
            cuda::flash_attention_backward<DH>(stream_, attention_shape(layer), a.q_rot, Q, a.k_rot, KV, v, QKV, a.attn, Q, a.lse,
                                               s.d_attn, Q, s.delta, s.dq, Q, s.dk, KV, s.dv, KV);
        }
        const auto& table = rope_table(layer);
        cuda::rope_backward<float, float>(stream_, s.dq, Q, s.dq, Q, n, H, positions_, table);
        cuda::rope_backward<float, float>(stream_, s.dk, KV, s.dk, KV, n, HK, positions_, table);
        if constexpr (C::qk_norm) {
            cuda::rmsnorm_backward<bf16, float, bf16>(stream_, head_rows<const bf16>(a.qkv, QKV, H), w.q_norm, a.q_rstd,
                                                      head_rows<const float>(s.dq, Q, H), head_rows(s.d_qkv, QKV, H), g.q_norm, ws,
                                                      n, DH);
            cuda::rmsnorm_backward<bf16, float, bf16>(stream_, head_rows<const bf16>(a.qkv + Q, QKV, HK), w.k_norm, a.k_rstd,
                                                      head_rows<const float>(s.dk, KV, HK), head_rows(s.d_qkv + Q, QKV, HK),
                                                      g.k_norm, ws, n, DH);
        } else {
            cuda::cast<float, bf16>(stream_, s.dq, Q, s.d_qkv, QKV, n, Q);
            cuda::cast<float, bf16>(stream_, s.dk, KV, s.d_qkv + Q, QKV, n, KV);
        }
        cuda::cast<float, bf16>(stream_, s.dv, KV, s.d_qkv + Q + KV, QKV, n, KV);
        cuda::linear_backward(*gemm_, stream_, view(a.attn_in, n, D), view<bf16>(w.q_proj, QKV, D), view(s.d_qkv, n, QKV),
                              mutable_view(s.d_attn_in, n, D), cuda::matrix_view(g.q_proj, QKV, D, D));
        // d x_in = d mid + input_norm'(d attn_in)
        cuda::rmsnorm_backward<float, float, float>(stream_, token_rows<const float>(a.input, D), w.input_norm, a.input_rstd,
                                                    token_rows<const float>(s.d_attn_in, D), token_rows(d_in, D), g.input_norm, ws,
                                                    n, D, d_in, D);
    }

    cuda::Stream stream_;
    std::unique_ptr<cuda::Gemm> gemm_;
    cuda::DeviceBuffer<bf16> weights_;
    Weights<C, bf16> device_weights_{};
    cuda::DeviceRopeTable rope_local_, rope_global_;
    cuda::AttentionPath attention_path_ = cuda::AttentionPath::automatic;
    bool deterministic_embedding_ = true;
    int classifier_chunk_override_ = 0;

    Shape shape_{};  // what the arena was laid out for
    bool flash_ = false;  // the attention path of the current call
    cuda::DeviceBuffer<std::byte> arena_;
    int *tokens_ = nullptr, *targets_ = nullptr;
    std::int32_t* positions_ = nullptr;  // [batch * seq]: 0..seq-1 per sequence, for RoPE
    int *segment_tokens_ = nullptr, *segment_offsets_ = nullptr, *segment_order_ = nullptr;
    int segment_count_ = 0;
    std::array<float*, Dims::layers + 1> residual_{};
    std::array<cuda::model_detail::BlockActivations, Dims::layers> blocks_{};
    float* scores_ = nullptr;
    float* final_in_ = nullptr;
    float* final_rstd_ = nullptr;
    bf16* final_out_ = nullptr;
    cuda::ClassifierWorkspace workspace_{};
    double* loss_total_ = nullptr;
    cuda::model_detail::BackwardScratch scratch_{};
    float* norm_workspace_ = nullptr;
    Buffer<float> logits_;
};

}  // namespace gemma3
