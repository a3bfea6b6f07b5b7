// gemma3-train's CPU trainers, one Trainer instantiation per translation unit: a Trainer<C, T>
// takes the compiler about half a minute, and gemma3-train holds one per compiled config and
// precision. examples/CMakeLists.txt generates train_<index>_<scalar>.cpp for every pair, each
// with one GEMMA3_INSTANTIATE_TRAIN line, so they compile in parallel and recompile alone.
#pragma once

#include <gemma3/config_file.hpp>

#include "compiled_configs.hpp"

#include <cstddef>

namespace gemma3 {
struct TrainOptions;
}

namespace gemma3::programs {

// Trains config I of CompiledConfigs in precision T (float or double).
template <std::size_t I, class T>
void train_compiled(const ModelConfigFile& model, const TrainingConfig& training, const TrainOptions& options);

}  // namespace gemma3::programs

#ifdef GEMMA3_TRAIN_INSTANCE_DEFINITION
#include <gemma3/trainer.hpp>

template <std::size_t I, class T>
void gemma3::programs::train_compiled(const ModelConfigFile& model, const TrainingConfig& training,
                                      const TrainOptions& options) {
    Trainer<std::tuple_element_t<I, CompiledConfigs>, T>(model, training, options).run();
}

#define GEMMA3_INSTANTIATE_TRAIN(I, T)                                                      \
    template void gemma3::programs::train_compiled<I, T>(const gemma3::ModelConfigFile&,    \
                                                         const gemma3::TrainingConfig&,     \
                                                         const gemma3::TrainOptions&);
#endif
