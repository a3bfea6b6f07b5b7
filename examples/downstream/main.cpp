// Uses gemma3 from an installed copy: a config type generated from JSON, the run-time check that
// the JSON still matches it, random weights, one training step and a forward pass.
#include <gemma3/io/config_file.hpp>
#include <gemma3/model.hpp>
#include <gemma3/train/optimizer.hpp>

#include "small_model.hpp"

#include <cstdio>
#include <memory>
#include <vector>

int main() {
    using Config = downstream::SmallModel;
    const auto file = gemma3::load_model_config(SMALL_MODEL_CONFIG);
    gemma3::require_matches<Config>(file);  // throws, listing the differences, if the JSON changed

    auto model = std::make_unique<gemma3::Model<Config, gemma3::Cpu<float>>>();
    model->init(gemma3::InitScheme::hf, file.initializer_range, /*seed=*/42);

    // Learn to continue the sequence 0, 1, 2, ... for a few steps.
    const gemma3::Index batch = 2, seq = 32;
    std::vector<std::int32_t> tokens(batch * seq), targets(batch * seq);
    for (gemma3::Index i = 0; i < batch * seq; ++i) {
        tokens[i] = static_cast<std::int32_t>(i % 100);
        targets[i] = static_cast<std::int32_t>((i + 1) % 100);
    }
    gemma3::Parameters<Config, float> grads;
    gemma3::AdamW<float> adamw(grads.size(), gemma3::AdamWSettings{0.9, 0.95, 1e-8, 0.0});
    double first = 0, last = 0;
    for (int step = 0; step < 20; ++step) {
        grads.set_zero();
        last = model->forward_backward(tokens, targets, batch, seq, grads);
        if (step == 0) first = last;
        adamw.step(model->parameters.data(), grads.data(), 1e-2);
    }
    const auto logits = model->forward(tokens, batch, seq);
    Eigen::Index next = 0;
    logits.row(seq - 1).maxCoeff(&next);
    std::printf("%zu parameters; loss %.3f -> %.3f; after token %d the model predicts %ld\n",
                gemma3::parameter_count<Config>, first, last, tokens[seq - 1], static_cast<long>(next));
    return last < first ? 0 : 1;
}
