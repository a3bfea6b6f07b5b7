// Shared by the trainer tests (test_trainer.cpp; tests/cuda/trainer_test_support.hpp for the CUDA
// engine): one run of a Trainer, without the live progress line, returning what it printed.
#pragma once

#include <gemma3/train/trainer.hpp>

#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>

namespace gemma3::test {

template <class Trainer>
std::string run_quietly(const ModelConfigFile& model_config, const TrainingConfig& config,
                        const std::filesystem::path& data, const std::filesystem::path& out, std::int64_t stop_after,
                        bool resume, DataParallelOptions parallel = {}) {
    std::ostringstream log;
    TrainOptions options;
    options.data_dir = data;
    options.out_dir = out;
    options.stop_after = stop_after;
    options.resume = resume;
    options.live_line = false;
    options.log = &log;
    options.parallel = parallel;
    Trainer(model_config, config, options).run();
    return log.str();
}

}  // namespace gemma3::test
