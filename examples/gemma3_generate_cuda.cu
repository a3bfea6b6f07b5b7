// gemma3-generate's GPU path, compiled by nvcc when the build has CUDA: Model<C, Cuda> with the
// device KV cache of include/gemma3/cuda/generation.cuh, for every compiled config. Sampling runs on
// the host with the CPU's TokenSampler.
#include <gemma3/cuda/generation.cuh>
#include <gemma3/io/checkpoint.hpp>

#include "compiled_configs.hpp"
#include "gemma3_generate_cuda.hpp"

namespace gemma3::programs {

int cuda_device_count() { return cuda::device_count(); }

namespace {

template <ModelConfig C>
class CudaGenerationOf final : public CudaGeneration {
public:
    CudaGenerationOf(const std::filesystem::path& checkpoint, std::int64_t max_positions) {
        load_pretrained(model_, checkpoint);  // checks config.json against C, then uploads the weights
        generator_ = std::make_unique<cuda::Generator<C>>(model_, max_positions);
    }
    std::vector<std::int32_t> generate(std::span<const std::int32_t> prompt, std::int64_t max_new_tokens, TokenSampler& sampler,
                                       std::int32_t stop_token, const std::function<void(std::int32_t)>& on_token) override {
        generator_->reset();
        return gemma3::generate(*generator_, prompt, max_new_tokens, sampler, stop_token, on_token);
    }
    std::string device_name() const override { return cuda::device_name(); }

private:
    Model<C, Cuda> model_;
    std::unique_ptr<cuda::Generator<C>> generator_;
};

}  // namespace

std::unique_ptr<CudaGeneration> load_for_cuda_generation(const ModelConfigFile& model, const std::filesystem::path& checkpoint,
                                                         std::int64_t max_positions) {
    std::unique_ptr<CudaGeneration> result;
    with_compiled_config(model, [&]<class C>() { result = std::make_unique<CudaGenerationOf<C>>(checkpoint, max_positions); });
    return result;
}

}  // namespace gemma3::programs
