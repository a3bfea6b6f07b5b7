// The CUDA engine of the trainer (trainer.hpp): the same training loop, with the model, the
// gradients, the master weights and the AdamW moments on the GPU (model.cuh, training.cuh).
//
//   gemma3::Trainer<Config, float, gemma3::cuda::TrainerEngine<Config>>(model, training, options).run();
//
// The host buffers the loop sees (parameters(), gradients(), its AdamW<float>) are mirrors: the
// engine fills them from the device before a checkpoint or an error report (sync_to_host) and sends
// them to the device after the loop set them (host_state_changed: a fresh start, a resume, rank 0's
// broadcast). Data-parallel gradients go through NCCL when it is available (one all-reduce of the
// flat fp32 gradients, its unique id broadcast over the MPI communicator), else through the host
// communicator (download, all-reduce, upload). ZeRO-1 is not implemented on the GPU.
#pragma once

#include <gemma3/cuda/training.cuh>
#include <gemma3/train/distributed.hpp>
#include <gemma3/core/footprint.hpp>
#include <gemma3/train/trainer.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

GEMMA3_CUDA_NAMESPACE_BEGIN

template <ModelConfig C>
class TrainerEngine {
public:
    static constexpr bool supports_zero1 = false;

    TrainerEngine() {
#if !GEMMA3_CUDA_IS_EMULATED
        // One GPU per process of a machine: Open MPI's local rank picks it.
        if (const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) {
            const int devices = device_count();
            if (devices > 0) GEMMA3_CUDA_CHECK(cudaSetDevice(std::atoi(local) % devices));
        }
#endif
        model_ = std::make_unique<Model<C, Cuda>>();
        device_ = is_emulated() ? "the CPU emulator" : device_name();  // this rank's GPU, asked once
    }

    std::string description() const {
        return "CUDA bf16 (fp32 accumulation and master weights) on " + device_;
    }
    Parameters<C, float>& parameters() { return model_->parameters; }
    Parameters<C, float>& gradients() { return host_gradients_; }

    void init(InitScheme scheme, double initializer_range, std::uint64_t seed) {
        model_->init(scheme, initializer_range, seed);
    }

    // The host weights, moments and gradients are the truth now: rebuild the device state from them.
    void host_state_changed(const AdamW<float>& adamw) {
        if (!state_) state_ = std::make_unique<TrainingState<C>>(*model_, adamw.settings());
        if (adamw.first_moment().size() == ParameterLayout<C>::total) {
            state_->upload(model_->parameters, adamw);
        } else {  // a fresh optimizer: zero moments
            AdamW<float> zero(ParameterLayout<C>::total, adamw.settings());
            zero.set_steps(adamw.steps());
            state_->upload(model_->parameters, zero);
        }
        state_->upload_gradients(host_gradients_);
    }

    void sync_to_host(AdamW<float>* adamw, bool gradients) {
        if (adamw) {
            state_->download(model_->parameters, *adamw);
        } else {
            AdamW<float> moments;
            state_->download(model_->parameters, moments);
        }
        if (gradients) state_->download_gradients(host_gradients_);
    }

    double forward_backward(std::span<const std::int32_t> x, std::span<const std::int32_t> y, Index batch, Index seq,
                            double loss_scale) {
        return model_->forward_backward(x, y, batch, seq, state_->gradients(), loss_scale);
    }
    double loss(std::span<const std::int32_t> x, std::span<const std::int32_t> y, Index batch, Index seq) {
        return model_->loss(x, y, batch, seq);
    }

    void allreduce_gradients(Communicator& comm) {
#if !GEMMA3_CUDA_IS_EMULATED && defined(GEMMA3_HAVE_NCCL)
        if (!nccl_) nccl_ = std::make_unique<NcclAllReduce>(comm);
        nccl_->sum(state_->gradients().data(), state_->gradients().size(), model_->stream());
#else
        state_->download_gradients(host_gradients_);
        comm.allreduce_sum(std::span<float>(host_gradients_.data(), host_gradients_.size()));
        state_->upload_gradients(host_gradients_);
#endif
    }

    double clip_and_step(AdamW<float>& /*mirror*/, double lr, double max_norm) {
        const double norm = state_->clip_and_step(lr, max_norm);
        if (std::isfinite(norm)) state_->zero_gradients();
        return norm;
    }

    // Model FLOPs utilisation (6 x matrix parameters + attention FLOPs per token, against the
    // device's dense bf16 peak) and the device memory in use.
    std::string progress(double tokens_per_second, Index seq) const {
        if (is_emulated()) return {};
        char text[96];
        const double peak = bf16_peak_tflops(device_) * 1e12;
        const double flops = tokens_per_second * training_flops_per_token(config_file_of<C>(), seq);
#if !GEMMA3_CUDA_IS_EMULATED
        peak_memory_ = std::max(peak_memory_, device_memory_in_use());
#endif
        if (peak > 0) {
            std::snprintf(text, sizeof text, " | MFU %.1f%% | %.2f GiB", 100.0 * flops / peak,
                          static_cast<double>(peak_memory_) / (1024.0 * 1024.0 * 1024.0));
        } else {
            std::snprintf(text, sizeof text, " | %.1f TFLOP/s | %.2f GiB", flops / 1e12,
                          static_cast<double>(peak_memory_) / (1024.0 * 1024.0 * 1024.0));
        }
        return text;
    }

private:
    std::unique_ptr<Model<C, Cuda>> model_;
    std::string device_;
    std::unique_ptr<TrainingState<C>> state_;
    Parameters<C, float> host_gradients_;
    mutable std::size_t peak_memory_ = 0;
#if !GEMMA3_CUDA_IS_EMULATED && defined(GEMMA3_HAVE_NCCL)
    std::unique_ptr<NcclAllReduce> nccl_;
#endif
};

GEMMA3_CUDA_NAMESPACE_END
