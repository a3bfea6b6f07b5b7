// Training throughput of the seed config (Gemma 3 270M, GPT-2 vocabulary, untied head) on the GPU:
// tokens/s, model FLOPs utilisation against the device's bf16 peak, and peak device memory.
// Built by nvcc only (GEMMA3_CUDA); scripts/gpu-check.sh runs it after the device tests.
//
//   gemma3-gpu-train-bench [--batch=32] [--seq=128] [--accumulation=1] [--steps=10] [--warmup=2]
//                          [--peak-tflops=X]
//
// Each step is `accumulation` forward_backward calls on random tokens, the global-norm clip and one
// AdamW step, as gemma3-train does (TrainingState, include/gemma3/cuda/training.cuh).
//
// Model FLOPs per token (the MFU numerator) are gemma3-info's (footprint.hpp, training_flops_per_token):
//   6 x (matrix parameters: q/k/v/o, gate/up/down, the output head; not the embedding gather or norms)
//   + 12 x heads x head_dim x (mean number of keys a query attends to) per layer
// (a query at position i sees min(i + 1, window) keys on sliding layers and i + 1 on full ones).
// The peak is dense bf16 with fp32 accumulation (cuda::bf16_peak_tflops, or --peak-tflops).
#include <gemma3/io/config_file.hpp>
#include <gemma3/core/configs.hpp>
#include <gemma3/cuda/training.cuh>
#include <gemma3/core/footprint.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using Config = gemma3::configs::Gemma3_270M;
using Dims = gemma3::Dims<Config>;

struct Options {
    int batch = 32;
    int seq = 128;
    int accumulation = 1;
    int steps = 10;
    int warmup = 2;
    double peak_tflops = 0;  // 0: from the table
};

[[noreturn]] void usage(const std::string& problem) {
    std::fprintf(stderr,
                 "%s\nusage: gemma3-gpu-train-bench [--batch=N] [--seq=N] [--accumulation=N] [--steps=N] [--warmup=N] "
                 "[--peak-tflops=X]\n",
                 problem.c_str());
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        const auto eq = arg.find('=');
        if (arg == "--help" || arg == "-h") usage("Training benchmark of the seed config on the GPU.");
        if (eq == std::string_view::npos) usage("unknown argument " + std::string(arg));
        const std::string key(arg.substr(0, eq)), value(arg.substr(eq + 1));
        char* end = nullptr;
        const double number = std::strtod(value.c_str(), &end);
        const bool whole = key != "--peak-tflops", zero_allowed = key == "--warmup";
        if (end == value.c_str() || *end != '\0' || !(number >= (zero_allowed ? 0 : 1e-9)) || number > 1e9 ||
            (whole && number != static_cast<double>(static_cast<int>(number))))
            usage(key + "=" + value + ": expected a " + (zero_allowed ? "non-negative" : "positive") + (whole ? " integer" : " number"));
        if (key == "--batch") o.batch = static_cast<int>(number);
        else if (key == "--seq") o.seq = static_cast<int>(number);
        else if (key == "--accumulation") o.accumulation = static_cast<int>(number);
        else if (key == "--steps") o.steps = static_cast<int>(number);
        else if (key == "--warmup") o.warmup = static_cast<int>(number);
        else if (key == "--peak-tflops") o.peak_tflops = number;
        else usage("unknown option " + key);
    }
    if (o.seq > Dims::context) usage("--seq exceeds the context length " + std::to_string(Dims::context));
    return o;
}

double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    namespace cu = gemma3::cuda;
    try {
        if (cu::device_count() == 0) {
            std::fprintf(stderr, "gemma3-gpu-train-bench: no CUDA device\n");
            return 1;
        }
        cudaDeviceProp properties{};
        GEMMA3_CUDA_CHECK(cudaGetDeviceProperties(&properties, 0));
        const std::string device = properties.name;
        const std::size_t total_bytes = properties.totalGlobalMem;
        const std::size_t baseline_used = cu::device_memory_in_use();
        std::size_t peak_used = baseline_used;
        const auto sample_memory = [&] { peak_used = std::max(peak_used, cu::device_memory_in_use()); };

        gemma3::Model<Config, gemma3::Cuda> model;
        model.init(gemma3::InitScheme::seed, 0.02, 1);
        cu::TrainingState<Config> state(model, {0.9, 0.95, 1e-9, 0.1});
        const std::size_t n = static_cast<std::size_t>(o.batch) * static_cast<std::size_t>(o.seq);
        std::mt19937 generator(42);
        std::vector<std::vector<std::int32_t>> batches(4, std::vector<std::int32_t>(n + 1));
        for (auto& b : batches)
            for (auto& t : b) t = static_cast<std::int32_t>(generator() % static_cast<unsigned>(Dims::vocab));

        std::printf("device: %s (sm_%d%d, %.1f GiB)\n", device.c_str(), properties.major, properties.minor, gib(total_bytes));
        std::printf("config: %s, %zu parameters; batch %d x seq %d, %d micro-batch(es) per step\n", std::string(Config::name).c_str(),
                    gemma3::parameter_count<Config>, o.batch, o.seq, o.accumulation);

        int micro = 0;
        double last_loss = 0, last_norm = 0;
        const auto step = [&] {
            for (int a = 0; a < o.accumulation; ++a, ++micro) {
                const auto& b = batches[static_cast<std::size_t>(micro) % batches.size()];
                const std::span<const std::int32_t> x(b.data(), n), y(b.data() + 1, n);
                last_loss = model.forward_backward(x, y, o.batch, o.seq, state.gradients(), 1.0 / o.accumulation);
            }
            last_norm = state.clip_and_step(1e-4, 0.5);
            state.zero_gradients();
            cu::synchronize();
            sample_memory();
        };
        for (int i = 0; i < o.warmup; ++i) step();
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < o.steps; ++i) step();
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

        const double tokens = static_cast<double>(n) * o.accumulation * o.steps;
        const double tokens_per_second = tokens / seconds;
        const gemma3::ModelConfigFile config = gemma3::config_file_of<Config>();
        const double flops_per_token = gemma3::training_flops_per_token(config, o.seq);
        const double matrices = static_cast<double>(gemma3::count_parameters(config).matrices);
        const double peak = o.peak_tflops > 0 ? o.peak_tflops : cu::bf16_peak_tflops(device);
        std::printf("step: %.2f ms (%d timed after %d warm-up), last loss %.4f, gradient norm %.4f\n", 1e3 * seconds / o.steps, o.steps,
                    o.warmup, last_loss, last_norm);
        std::printf("tokens/s: %.0f\n", tokens_per_second);
        std::printf("model FLOPs per token: %.3f GFLOP (6 x %.1fM matrix parameters + %.3f GFLOP attention)\n", flops_per_token / 1e9,
                    matrices / 1e6, (flops_per_token - 6 * matrices) / 1e9);
        if (peak > 0) {
            std::printf("MFU: %.1f%% of %.0f TFLOPS (dense bf16)\n", 100.0 * tokens_per_second * flops_per_token / (peak * 1e12), peak);
        } else {
            std::printf("MFU: n/a (no bf16 peak known for \"%s\"; pass --peak-tflops=X)\n", device.c_str());
        }
        std::printf("peak device memory: %.2f GiB in use (%.2f GiB before the model; model and training state %.2f GiB)\n",
                    gib(static_cast<double>(peak_used)), gib(static_cast<double>(baseline_used)),
                    gib(static_cast<double>(model.device_bytes()) + 16.0 * static_cast<double>(gemma3::parameter_count<Config>)));
    } catch (const std::exception& error) {
        std::fprintf(stderr, "gemma3-gpu-train-bench: %s\n", error.what());
        return 1;
    }
    return 0;
}
