// gemma3-train's CPU trainers, outside gemma3_train.cpp: one translation unit per precision
// (examples/CMakeLists.txt generates train_float.cpp and train_double.cpp, each with one
// GEMMA3_INSTANTIATE_TRAIN line per compiled config), so the two compile in parallel and apart from
// the program's option handling. Not one unit per config: the ops are templates on the scalar type
// only, and a unit with one Trainer<C, float> cost 27 s of the 37 s that all four float configs
// cost together (measured on the 2-core machine under load), so splitting further would nearly
// triple the total.
#pragma once

#include <gemma3/io/config_file.hpp>

#include "compiled_configs.hpp"

#include <cstddef>

namespace gemma3 {
struct TrainOptions;
struct TrainSummary;
}

namespace gemma3::programs {

// Trains config I of CompiledConfigs in precision T: float, double, or bf16 (Cpu<bf16> mixed
// precision: bf16 products, fp32 master weights and moments).
template <std::size_t I, class T>
TrainSummary train_compiled(const ModelConfigFile& model, const TrainingConfig& training, const TrainOptions& options);

}  // namespace gemma3::programs

#ifdef GEMMA3_TRAIN_INSTANCE_DEFINITION
#include <gemma3/train/trainer.hpp>

namespace gemma3::programs {
// The CPU trainer of precision P: the loop runs in float for bf16 mixed precision.
template <class C, class P>
struct CpuTrainer {
    using type = Trainer<C, P>;
};
template <class C>
struct CpuTrainer<C, bf16> {
    using type = Trainer<C, float, CpuEngine<C, bf16>>;
};
}  // namespace gemma3::programs

template <std::size_t I, class T>
gemma3::TrainSummary gemma3::programs::train_compiled(const ModelConfigFile& model, const TrainingConfig& training,
                                                      const TrainOptions& options) {
    return typename CpuTrainer<std::tuple_element_t<I, CompiledConfigs>, T>::type(model, training, options).run();
}

#define GEMMA3_INSTANTIATE_TRAIN(I, T)                                                      \
    template gemma3::TrainSummary gemma3::programs::train_compiled<I, T>(const gemma3::ModelConfigFile&, \
                                                         const gemma3::TrainingConfig&,     \
                                                         const gemma3::TrainOptions&);
#endif
