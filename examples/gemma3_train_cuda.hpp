// The GPU entry points of gemma3-train (gemma3_train_cuda.cu, built only with CUDA).
#pragma once

#include <gemma3/io/config_file.hpp>
#include <gemma3/train/trainer.hpp>

namespace gemma3::programs {

// Usable CUDA devices on this machine (0 without a GPU or driver).
int cuda_device_count();

// Trains with the CUDA engine (the run's summary into `summary`); false when no compiled config
// matches `model`.
bool train_on_cuda(const ModelConfigFile& model, const TrainingConfig& training, const TrainOptions& options,
                   TrainSummary& summary);

}  // namespace gemma3::programs
