// A user's translation unit: every public header (public_headers_all.hpp, generated from
// include/gemma3 at configure time) and the templates a downstream program instantiates. The
// public_headers_warnings.* tests compile it with plain -I, -Wall -Wextra -Wpedantic -Werror and
// -O2 (some warnings need the optimizer), with g++ and clang++; it is never run.
#include "public_headers_all.hpp"

#include <cstdint>
#include <memory>
#include <vector>

using Config = gemma3::configs::Gemma3Tiny;

double train_a_step(gemma3::Model<Config, gemma3::Cpu<float>>& model, const std::vector<std::int32_t>& x,
                    const std::vector<std::int32_t>& y) {
    auto grads = std::make_unique<gemma3::Parameters<Config, float>>();
    gemma3::AdamW<float> adamw(grads->size(), gemma3::AdamWSettings{0.9, 0.95, 1e-8, 0.1});
    const double loss = model.forward_backward(x, y, 1, static_cast<gemma3::Index>(x.size()), *grads);
    gemma3::clip_grad_norm(grads->data(), grads->size(), 1.0);
    adamw.step(model.parameters.data(), grads->data(), 1e-3);
    return loss;
}

std::vector<std::int32_t> continue_prompt(const std::filesystem::path& dir, const std::vector<std::int32_t>& prompt) {
    auto model = std::make_unique<gemma3::Model<Config, gemma3::Cpu<float>>>();
    gemma3::load_pretrained(*model, dir);
    gemma3::Generator<Config, float> generator(*model);
    gemma3::TokenSampler sampler({0.8, 40, 0.95, 1});
    return gemma3::generate(generator, prompt, 8, sampler, -1);
}

gemma3::TrainSummary train(const gemma3::ModelConfigFile& model, const gemma3::TrainingConfig& training,
                           gemma3::TrainOptions options) {
    options.stop_request = gemma3::install_stop_on_signals();
    return gemma3::Trainer<Config, float>(model, training, options).run();
}

std::size_t tokenizer_files(const std::filesystem::path& ranks, const std::string& text) {
    const auto tokenizer = gemma3::Tokenizer::from_tiktoken_file(ranks);
    std::vector<std::string> tokens;
    for (std::int32_t id = 0; id < tokenizer.eot_token(); ++id) tokens.emplace_back(tokenizer.token_bytes(id));
    return gemma3::hf_tokenizer_files(tokens, gemma3::Tokenizer::eot_text, 1024).size() +
           tokenizer.encode(text, true).size();
}
