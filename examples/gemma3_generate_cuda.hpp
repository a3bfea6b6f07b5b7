// The GPU entry points of gemma3-generate (gemma3_generate_cuda.cu, built only with CUDA).
#pragma once

#include <gemma3/core/sampling.hpp>
#include <gemma3/io/config_file.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace gemma3::programs {

// Usable CUDA devices on this machine (0 without a GPU or driver).
int cuda_device_count();

// A model loaded onto the GPU with its generator (include/gemma3/cuda/generation.cuh).
class CudaGeneration {
public:
    virtual ~CudaGeneration() = default;
    // gemma3::generate() from an empty cache: prefill `prompt`, then sample up to max_new_tokens.
    virtual std::vector<std::int32_t> generate(std::span<const std::int32_t> prompt, std::int64_t max_new_tokens,
                                               TokenSampler& sampler, std::int32_t stop_token,
                                               const std::function<void(std::int32_t)>& on_token) = 0;
    // The device's name, for the statistics line.
    virtual std::string device_name() const = 0;
};

// Loads `checkpoint` (gemma3-train or Hugging Face) onto the GPU with a cache of max_positions;
// nullptr when no compiled config matches `model`.
std::unique_ptr<CudaGeneration> load_for_cuda_generation(const ModelConfigFile& model, const std::filesystem::path& checkpoint,
                                                         std::int64_t max_positions);

}  // namespace gemma3::programs
