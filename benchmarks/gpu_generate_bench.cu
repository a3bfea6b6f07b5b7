// Generation throughput of the seed config (Gemma 3 270M, GPT-2 vocabulary) on the GPU, as
// `gemma3-generate --device cuda` decodes: cuda::Generator (include/gemma3/cuda/generation.cuh),
// chunked prefill of a random prompt, then one token at a time with the logits copied to the host
// and sampled there by the CPU's TokenSampler (temperature 0.8, every token a candidate, as the
// program's defaults). Random weights: the speed does not depend on them.
// Built by nvcc only (GEMMA3_CUDA); scripts/gpu-check.sh runs it after the training benchmark.
//
//   gemma3-gpu-generate-bench [--prompt=128] [--new-tokens=256] [--runs=3]
//
// Prints prefill and decode tokens/s (the best of `runs`, after one warm-up run) and the KV cache's size.
#include <gemma3/core/configs.hpp>
#include <gemma3/cuda/generation.cuh>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using Config = gemma3::configs::Gemma3_270M;
using Dims = gemma3::Dims<Config>;

struct Options {
    int prompt = 128;
    int new_tokens = 256;
    int runs = 3;
};

[[noreturn]] void usage(const std::string& problem) {
    std::fprintf(stderr, "%s\nusage: gemma3-gpu-generate-bench [--prompt=N] [--new-tokens=N] [--runs=N]\n", problem.c_str());
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") usage("Generation benchmark of the seed config on the GPU.");
        const auto eq = arg.find('=');
        if (eq == std::string_view::npos) usage("unknown argument " + std::string(arg));
        const std::string key(arg.substr(0, eq)), value(arg.substr(eq + 1));
        char* end = nullptr;
        const long number = std::strtol(value.c_str(), &end, 10);
        if (end == value.c_str() || *end != '\0' || number < 1 || number > Dims::context) usage(key + "=" + value + ": expected a positive integer");
        if (key == "--prompt") o.prompt = static_cast<int>(number);
        else if (key == "--new-tokens") o.new_tokens = static_cast<int>(number);
        else if (key == "--runs") o.runs = static_cast<int>(number);
        else usage("unknown option " + key);
    }
    if (o.prompt + o.new_tokens > Dims::context) usage("--prompt + --new-tokens exceed the context length " + std::to_string(Dims::context));
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    namespace cu = gemma3::cuda;
    try {
        if (cu::device_count() == 0) {
            std::fprintf(stderr, "gemma3-gpu-generate-bench: no CUDA device\n");
            return 1;
        }
        gemma3::Model<Config, gemma3::Cuda> model;
        model.init(gemma3::InitScheme::seed, 0.02, 1);
        cu::Generator<Config> generator(model, o.prompt + o.new_tokens);
        std::mt19937 draw(42);
        std::vector<std::int32_t> prompt(static_cast<std::size_t>(o.prompt));
        for (auto& t : prompt) t = static_cast<std::int32_t>(draw() % static_cast<unsigned>(Dims::vocab));
        std::printf("device: %s\nconfig: %s; prompt %d tokens, %d new tokens, KV cache %.1f MiB (bf16)\n",
                    cu::device_name().c_str(), std::string(Config::name).c_str(), o.prompt, o.new_tokens,
                    static_cast<double>(generator.cache().allocated_bytes()) / (1024.0 * 1024.0));
        double best_prefill = 0, best_decode = 0;
        for (int run = 0; run <= o.runs; ++run) {  // run 0 warms up
            generator.reset();
            gemma3::TokenSampler sampler({0.8, 0, 1.0, static_cast<std::uint64_t>(run)});
            const auto start = std::chrono::steady_clock::now();
            std::chrono::steady_clock::time_point first{};
            const auto tokens = gemma3::generate(generator, prompt, o.new_tokens, sampler, -1, [&](std::int32_t) {
                if (first == std::chrono::steady_clock::time_point{}) first = std::chrono::steady_clock::now();
            });
            const auto end = std::chrono::steady_clock::now();
            const double prefill = std::chrono::duration<double>(first - start).count();
            const double decode = std::chrono::duration<double>(end - first).count();
            const double prefill_rate = o.prompt / prefill, decode_rate = tokens.size() > 1 ? (tokens.size() - 1) / decode : 0.0;
            std::printf("run %d%s: prefill %.0f tok/s (%.1f ms), decode %.1f tok/s (%.2f ms/token)\n", run, run == 0 ? " (warm-up)" : "",
                        prefill_rate, 1e3 * prefill, decode_rate, tokens.size() > 1 ? 1e3 * decode / (tokens.size() - 1) : 0.0);
            if (run > 0) {
                best_prefill = std::max(best_prefill, prefill_rate);
                best_decode = std::max(best_decode, decode_rate);
            }
        }
        std::printf("prefill tokens/s: %.0f\ndecode tokens/s: %.1f\n", best_prefill, best_decode);
    } catch (const std::exception& error) {
        std::fprintf(stderr, "gemma3-gpu-generate-bench: %s\n", error.what());
        return 1;
    }
    return 0;
}
