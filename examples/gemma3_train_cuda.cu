// gemma3-train's GPU path, compiled by nvcc when the build has CUDA: the same Trainer with the
// CUDA engine (include/gemma3/cuda/trainer_engine.cuh), for every compiled config.
#include <gemma3/cuda/trainer_engine.cuh>

#include "compiled_configs.hpp"
#include "gemma3_train_cuda.hpp"

namespace gemma3::programs {

int cuda_device_count() { return cuda::device_count(); }

bool train_on_cuda(const ModelConfigFile& model, const TrainingConfig& training, const TrainOptions& options,
                   TrainSummary& summary) {
    if (training.dtype == "float64") {
        throw TrainingError("dtype \"float64\" is a CPU setting; the CUDA back end trains in bf16 with fp32 "
                            "accumulation (use dtype \"bfloat16\" or --device cpu)");
    }
    return with_compiled_config(model, [&]<class C>() {
        summary = Trainer<C, float, cuda::TrainerEngine<C>>(model, training, options).run();
    });
}

}  // namespace gemma3::programs
