// A minimal generator: loads a checkpoint directory (config.json + model.safetensors, written by
// train.cpp, gemma3-train or transformers' save_pretrained), checking its config against the
// compiled type, and continues a prompt greedily with the KV cache.
//   ./generate small_model
#include <gemma3/io/checkpoint.hpp>  // load_pretrained
#include <gemma3/core/generation.hpp>  // Generator, TokenSampler, generate
#include <gemma3/model.hpp>

#include "small_model.hpp"

#include <cstdio>
#include <exception>
#include <memory>
#include <vector>

int main(int argc, char** argv) {
    using Config = downstream::SmallModel;
    try {
        auto model = std::make_unique<gemma3::Model<Config, gemma3::Cpu<float>>>();
        gemma3::load_pretrained(*model, argc > 1 ? argv[1] : "small_model");  // names every config mismatch

        gemma3::Generator<Config, float> generator(*model);
        gemma3::TokenSampler sampler({/*temperature=*/0.0, /*top_k=*/0, /*top_p=*/1.0, /*seed=*/0});  // greedy
        // With GPT-2's vocabulary: gemma3::Tokenizer::from_tiktoken_file("gpt2.tiktoken").encode_ordinary(text)
        // (gemma3/text/tokenizer.hpp, CMake target gemma3::tokenizer), and decode() for the output.
        const std::vector<std::int32_t> prompt = {0, 7, 14, 21};
        const auto tokens = gemma3::generate(generator, prompt, /*max_new_tokens=*/12, sampler, /*stop_token=*/-1);
        for (const auto t : tokens) std::printf("%d ", t);
        std::printf("\n");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "generate: %s\n", e.what());
        return 1;
    }
}
