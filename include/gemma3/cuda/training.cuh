// The device side of training a Model<C, Cuda>: fp32 master weights, fp32 gradients and fp32 AdamW
// moments in ParameterLayout<C> order, global-norm clipping and the AdamW step, which also writes
// the model's bf16 compute copy.
//
//   gemma3::Model<Config, gemma3::Cuda> model;  model.init(...);
//   gemma3::cuda::TrainingState<Config> state(model, {beta1, beta2, eps, weight_decay});
//   for each optimizer step:
//       for each micro-batch: model.forward_backward(x, y, batch, seq, state.gradients(), 1.0 / accumulation);
//       [data parallel: all-reduce state.gradients().data(), state.gradients().size() floats, in place]
//       double norm = state.clip_and_step(lr, max_norm);   // non-finite norm: no step taken
//       state.zero_gradients();
//   checkpoint: state.download(model.parameters, adamw);  // host fp32 weights + an AdamW<float> with the moments
//   resume:     state.upload(model.parameters, adamw);
//
// Why fp32 gradients (not bf16): the seed accumulates 32 micro-batches per step; in bf16 each
// addition would round to 8 significant bits, so small contributions vanish (docs/model.md §10.2). The
// weight-gradient products write fp32 directly (cuBLASLt bf16 inputs, fp32 output, beta = 1), so
// accumulating in fp32 costs nothing in time, and 4 bytes x 165M parameters = 0.66 GB is small next
// to the activations. fp32 also makes the all-reduce exact up to summation order.
//
// Per parameter the device holds: bf16 weight (model) 2 B + fp32 master 4 B + fp32 gradient 4 B +
// fp32 moments 8 B = 18 B, i.e. 2.96 GB for the seed's 164.65M parameters.
#pragma once

#include <gemma3/cuda/model.cuh>
#include <gemma3/cuda/ops/optimizer.cuh>
#include <gemma3/train/optimizer.hpp>

#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#if !GEMMA3_CUDA_IS_EMULATED && defined(GEMMA3_HAVE_NCCL)
#include <nccl.h>
#endif

GEMMA3_CUDA_NAMESPACE_BEGIN

template <ModelConfig C>
class TrainingState {
public:
    static constexpr std::size_t size_v = ParameterLayout<C>::total;

    // Master weights from model.parameters (the host fp32 copy that init()/load() filled), zero
    // moments and gradients; the model's bf16 copy is refreshed from the master weights.
    explicit TrainingState(Model<C, Cuda>& model, AdamWSettings settings = {})
        : model_(model), settings_(settings), master_(size_v), m_(size_v), v_(size_v),
          partials_(kernels::squared_norm_blocks), squared_norm_(1) {
        copy_to_device(master_.data(), model.parameters.data(), size_v);
        m_.fill_bytes(0);
        v_.fill_bytes(0);
        refresh_compute_copy();
    }
    TrainingState(const TrainingState&) = delete;
    TrainingState& operator=(const TrainingState&) = delete;

    Gradients<C>& gradients() noexcept { return grads_; }
    const Gradients<C>& gradients() const noexcept { return grads_; }
    void zero_gradients() { grads_.zero(); }

    // The global L2 norm of the gradients (torch.nn.utils.clip_grad_norm_'s total_norm).
    double gradient_norm() {
        squared_norm(model_.stream(), grads_.data(), size_v, partials_.data(), squared_norm_.data());
        double value = 0;
        copy_to_host(&value, squared_norm_.data(), 1);
        return std::sqrt(value);
    }

    // Clips the gradients to max_norm (coefficient min(1, max_norm / (norm + 1e-6)); max_norm <= 0:
    // no clipping) and takes one AdamW step at learning rate lr, updating the master weights, the
    // moments and the model's bf16 copy. Returns the norm before clipping. A non-finite norm takes
    // no step and changes nothing, so the caller can report it (the CPU trainer's guard).
    double clip_and_step(double lr, double max_norm) {
        const double norm = gradient_norm();
        if (!std::isfinite(norm)) return norm;
        ++steps_;
        // The constants exactly as the CPU AdamW (optimizer.hpp) computes them.
        const double b1 = settings_.beta1, b2 = settings_.beta2;
        const double bias1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
        const double bias2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(steps_)));
        kernels::AdamWConstants c;
        c.decay = static_cast<float>(1.0 - lr * settings_.weight_decay);
        c.step_size = static_cast<float>(lr / bias1);
        c.inv_bias2_sqrt = static_cast<float>(1.0 / bias2_sqrt);
        c.beta1 = static_cast<float>(b1);
        c.beta2 = static_cast<float>(b2);
        c.one_minus_beta1 = 1.0f - c.beta1;
        c.one_minus_beta2 = 1.0f - c.beta2;
        c.eps = static_cast<float>(settings_.eps);
        c.clip = static_cast<float>(clip_coefficient(norm, max_norm));
        adamw_step(model_.stream(), master_.data(), model_.device_parameters(), grads_.data(), m_.data(), v_.data(), size_v, c);
        return norm;
    }

    std::int64_t steps() const noexcept { return steps_; }
    const AdamWSettings& settings() const noexcept { return settings_; }

    // --- Checkpoints: host copies in the layouts the CPU trainer saves ------------------------------
    // master -> `weights`; moments and step count -> `adamw` (resized to the layout if needed).
    void download(Parameters<C, float>& weights, AdamW<float>& adamw) const {
        copy_to_host(weights.data(), master_.data(), size_v);
        adamw.first_moment().resize(size_v);
        adamw.second_moment().resize(size_v);
        copy_to_host(adamw.first_moment().data(), m_.data(), size_v);
        copy_to_host(adamw.second_moment().data(), v_.data(), size_v);
        adamw.set_steps(steps_);
    }
    // The reverse (resuming): master weights, moments and step count; refreshes the bf16 copy.
    void upload(const Parameters<C, float>& weights, const AdamW<float>& adamw) {
        if (adamw.first_moment().size() != size_v || adamw.second_moment().size() != size_v)
            throw std::invalid_argument("TrainingState::upload: AdamW moments of " + std::to_string(adamw.first_moment().size()) +
                                        " and " + std::to_string(adamw.second_moment().size()) + " elements, the layout has " +
                                        std::to_string(size_v));
        copy_to_device(master_.data(), weights.data(), size_v);
        copy_to_device(m_.data(), adamw.first_moment().data(), size_v);
        copy_to_device(v_.data(), adamw.second_moment().data(), size_v);
        steps_ = adamw.steps();
        refresh_compute_copy();
    }
    // Gradients of an interrupted accumulation (a checkpoint taken mid-step).
    void download_gradients(Parameters<C, float>& host) const { grads_.download(host); }
    void upload_gradients(const Parameters<C, float>& host) { grads_.upload(host); }

    const float* master() const noexcept { return master_.data(); }

private:
    void refresh_compute_copy() { cast<float, bf16>(model_.stream(), master_.data(), model_.device_parameters(), size_v); }

    Model<C, Cuda>& model_;
    AdamWSettings settings_;
    DeviceBuffer<float> master_, m_, v_;
    Gradients<C> grads_;
    DeviceBuffer<double> partials_, squared_norm_;
    std::int64_t steps_ = 0;
};

// The dense bf16 tensor-core peak (fp32 accumulation) of a GPU in TFLOPS, from NVIDIA's data sheets,
// matched against its name (cudaDeviceProp::name); 0 when unknown. For model FLOPs utilisation:
// tokens/s x training_flops_per_token (footprint.hpp) / (peak x 1e12).
inline double bf16_peak_tflops(std::string_view device_name) {
    struct Entry {
        std::string_view part;
        double tflops;
    };
    // More specific names first ("H100 PCIe" before "H100", "A10G" before "A10").
    static constexpr Entry table[] = {
        {"B200", 2250}, {"GH200", 989},    {"H200", 989},   {"H100 PCIe", 756}, {"H100 NVL", 835},     {"H100", 989},
        {"H800", 989},  {"A100", 312},     {"A800", 312},    {"A30", 165},       {"A10G", 70},          {"A10", 125},
        {"L40S", 362},  {"L40", 181},      {"L4", 121},      {"RTX 4090", 165},  {"RTX 3090", 71},      {"RTX A6000", 155},
    };
    for (const Entry& e : table)
        if (device_name.find(e.part) != std::string_view::npos) return e.tflops;
    return 0;
}

#if !GEMMA3_CUDA_IS_EMULATED
// Bytes of device memory in use on the current device (all processes), from cudaMemGetInfo.
// Sampled after each step it gives the peak of a training run whose buffers are all allocated up
// front (this back end allocates nothing inside a step). Not available in emulation.
inline std::size_t device_memory_in_use() {
    std::size_t free_bytes = 0, total_bytes = 0;
    GEMMA3_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return total_bytes - free_bytes;
}
#endif

#if !GEMMA3_CUDA_IS_EMULATED && defined(GEMMA3_HAVE_NCCL)
// Sums a device buffer over the ranks of a data-parallel job with NCCL (one ncclAllReduce call over
// the flat gradients). The NCCL unique id travels over the job's host communicator, anything with
// rank(), size() and broadcast(std::span<T>, root) (gemma3::Communicator in distributed.hpp).
// Each rank must have selected its GPU (cudaSetDevice) before constructing this.
class NcclAllReduce {
public:
    template <class Communicator>
    explicit NcclAllReduce(Communicator& host) {
        ncclUniqueId id{};
        if (host.rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
        host.broadcast(std::span<ncclUniqueId>(&id, 1), 0);
        check(ncclCommInitRank(&comm_, host.size(), id, host.rank()), "ncclCommInitRank");
    }
    ~NcclAllReduce() {
        if (comm_ != nullptr) (void)ncclCommDestroy(comm_);
    }
    NcclAllReduce(const NcclAllReduce&) = delete;
    NcclAllReduce& operator=(const NcclAllReduce&) = delete;

    // In place: data[0 .. n) becomes the element-wise sum over the ranks (ordered on `stream`).
    void sum(float* data, std::size_t n, const Stream& stream) {
        check(ncclAllReduce(data, data, n, ncclFloat, ncclSum, comm_, stream.get()), "ncclAllReduce");
    }

private:
    static void check(ncclResult_t result, const char* call) {
        if (result != ncclSuccess)
            throw CudaError(std::string(call) + " failed: " + ncclGetErrorString(result), static_cast<int>(result));
    }
    ncclComm_t comm_ = nullptr;
};
#endif

GEMMA3_CUDA_NAMESPACE_END
