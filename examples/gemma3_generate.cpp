// gemma3-generate: text from a trained model, with a KV cache.
//
//   build/bin/gemma3-generate --checkpoint out/demo/best --prompt "And God said"
//       --max-new-tokens 100 --temperature 0.8 --top-k 40 [--weights bf16] [--device cuda]
//
// --weights picks how the weight matrices are stored while decoding: f32 as loaded, or packed once
// after loading to bf16 (half the bytes read per token) or blockwise int8 (about a quarter); the
// activations stay fp32 either way (include/gemma3/ops/packed_linear.hpp).
//
// --device cuda decodes on the GPU (include/gemma3/cuda/generation.cuh: bf16 weights and KV cache,
// fp32 accumulation; gemma3_generate_cuda.cu, built only with CUDA); the logits come back to the
// host and are sampled by the same TokenSampler as on the CPU. Without a GPU, or in a build without
// CUDA, it fails with a message instead of falling back to the CPU.
//
// Loads checkpoints written by gemma3-train and Hugging Face directories (config.json +
// model.safetensors) of an architecture the program was compiled for (compiled_configs.hpp).
// Tokens stream to stdout as they are produced; timing goes to stderr.
#include <gemma3/io/checkpoint.hpp>
#include <gemma3/core/generation.hpp>
#include <gemma3/text/tokenizer.hpp>

#include "compiled_configs.hpp"
#include "find_tokenizer.hpp"
#ifdef GEMMA3_HAVE_CUDA
#include "gemma3_generate_cuda.hpp"
#endif

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Options {
    std::string checkpoint;
    std::string prompt;
    std::string prompt_ids;
    std::string tokenizer;  // empty: the checkpoint's own, else find_tokenizer.hpp's places
    std::string logits_out;
    int max_new_tokens = 200;
    int num_samples = 1;
    std::string weights = "bf16";
    std::string device = "cpu";
    bool no_stop = false;
    bool print_ids = false;
    gemma3::SamplingSettings sampling{0.8, 0, 1.0, 1234};
};

std::vector<std::int32_t> parse_ids(const std::string& text) {
    std::vector<std::int32_t> ids;
    std::istringstream in(text);
    std::string word;
    while (in >> word) {
        std::size_t used = 0;
        long value = -1;
        try {
            value = std::stol(word, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used != word.size() || value < 0 || value > INT32_MAX) {
            throw std::invalid_argument("--prompt-ids: \"" + word + "\" is not a token id");
        }
        ids.push_back(static_cast<std::int32_t>(value));
    }
    return ids;
}

// The tokenizer: --tokenizer, else the one saved in the checkpoint (gemma3-train writes GPT-2's
// vocab.json and merges.txt there), else find_tokenizer.hpp's places.
std::unique_ptr<gemma3::Tokenizer> load_tokenizer(const Options& o) {
    const std::filesystem::path dir = o.checkpoint;
    if (o.tokenizer.empty() && std::filesystem::is_regular_file(dir / "vocab.json") &&
        std::filesystem::is_regular_file(dir / "merges.txt")) {
        return std::make_unique<gemma3::Tokenizer>(gemma3::Tokenizer::from_hf_files(dir / "vocab.json", dir / "merges.txt"));
    }
    return std::make_unique<gemma3::Tokenizer>(
        gemma3::Tokenizer::from_tiktoken_file(gemma3::programs::find_tokenizer(o.tokenizer)));
}

// Device selection: never switch silently (as gemma3-train).
std::optional<std::string> device_problem(const Options& o) {
    if (o.device == "cpu") return std::nullopt;
#ifdef GEMMA3_HAVE_CUDA
    if (!o.logits_out.empty()) return "--logits-out runs on the CPU; drop --device cuda";
    if (o.weights != "bf16") {
        return "--weights " + o.weights + " is a CPU setting; the CUDA path decodes with bf16 weights (use --weights bf16 or --device cpu)";
    }
    if (gemma3::programs::cuda_device_count() > 0) return std::nullopt;
    return "device \"cuda\" was requested, but no CUDA device is present on this machine. Generate on the CPU with --device cpu.";
#else
    return "device \"cuda\" was requested, but this gemma3-generate was built without CUDA (GEMMA3_CUDA=OFF, or nvcc was not "
           "found when it was configured). Generate on the CPU with --device cpu.";
#endif
}

// One sample: gemma3::generate() with a fresh cache, on whichever device.
using GenerateFn = std::function<std::vector<std::int32_t>(gemma3::TokenSampler&, std::int32_t stop,
                                                           const std::function<void(std::int32_t)>& on_token)>;

// The samples, streamed to stdout as they are produced; timing on stderr.
int sample_loop(const Options& o, const gemma3::Tokenizer* tokenizer, const std::vector<std::int32_t>& prompt,
                const GenerateFn& generate_one, const std::string& device) {
    const std::int32_t stop = o.no_stop || !tokenizer ? -1 : tokenizer->eot_token();
    for (int sample = 0; sample < o.num_samples; ++sample) {
        auto settings = o.sampling;
        settings.seed += static_cast<std::uint64_t>(sample);
        gemma3::TokenSampler sampler(settings);
        if (o.num_samples > 1) std::cout << "--- sample " << sample + 1 << " ---\n";
        if (tokenizer && !o.print_ids) std::cout << tokenizer->decode(prompt) << std::flush;
        const auto start = std::chrono::steady_clock::now();
        std::chrono::steady_clock::time_point first_token;
        const auto tokens = generate_one(sampler, stop, [&](std::int32_t t) {
            if (first_token == std::chrono::steady_clock::time_point{}) first_token = std::chrono::steady_clock::now();
            if (tokenizer && !o.print_ids) {
                const auto bytes = tokenizer->token_bytes(t);
                std::cout.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
            } else {
                std::cout << t << " ";
            }
            std::cout << std::flush;
        });
        const auto end = std::chrono::steady_clock::now();
        if (first_token == std::chrono::steady_clock::time_point{}) first_token = end;
        std::cout << "\n" << std::flush;  // before the statistics on stderr
        const double prefill = std::chrono::duration<double>(first_token - start).count();
        const double decode = std::chrono::duration<double>(end - first_token).count();
        std::fprintf(stderr, "[%zu prompt tokens in %.2f s (%.0f tok/s); %zu new tokens, %.1f tok/s; %s]\n", prompt.size(), prefill,
                     prompt.size() / std::max(prefill, 1e-9), tokens.size(),
                     tokens.size() > 1 ? (tokens.size() - 1) / std::max(decode, 1e-9) : 0.0, device.c_str());
    }
    return 0;
}

template <class C>
int run(const Options& o, const gemma3::Tokenizer* tokenizer, std::vector<std::int32_t> prompt) {
    using Model = gemma3::Model<C, gemma3::Cpu<float>>;
    auto model = std::make_unique<Model>();
    gemma3::load_pretrained(*model, o.checkpoint);  // checks config.json against C, then the weights

    if (!o.logits_out.empty()) {  // the prompt's logits, for comparison with another implementation
        const auto logits = model->forward(prompt, 1, static_cast<gemma3::Index>(prompt.size()));
        const std::vector<std::int64_t> shape = {logits.rows(), logits.cols()};
        const std::vector<gemma3::TensorToWrite> tensors = {
            {"input_ids", {static_cast<std::int64_t>(prompt.size())}, std::span<const std::int32_t>(prompt), gemma3::DType::I32},
            {"logits", shape, std::span<const float>(logits.data(), static_cast<std::size_t>(logits.size())), gemma3::DType::F32}};
        gemma3::write_safetensors(o.logits_out, tensors);
        std::cerr << "wrote the logits of " << prompt.size() << " prompt tokens to " << o.logits_out << "\n";
        return 0;
    }

    const gemma3::Index max_positions =
        std::min<gemma3::Index>(C::context_length, static_cast<gemma3::Index>(prompt.size()) + o.max_new_tokens);
    const auto format = gemma3::parse_weight_format(o.weights);
    std::unique_ptr<gemma3::PackedWeights<C>> packed;
    if (format != gemma3::WeightFormat::f32) {
        packed = std::make_unique<gemma3::PackedWeights<C>>(std::as_const(model->parameters).weights(), format);
        model.reset();  // the packed copy is all decoding reads
    }
    return sample_loop(
        o, tokenizer, prompt,
        [&](gemma3::TokenSampler& sampler, std::int32_t stop, const std::function<void(std::int32_t)>& on_token) {
            auto generator = packed ? gemma3::Generator<C, float>(*packed, max_positions)
                                    : gemma3::Generator<C, float>(*model, max_positions);
            return gemma3::generate(generator, prompt, o.max_new_tokens, sampler, stop, on_token);
        },
        "cpu, " + o.weights + " weights");
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Generate text with a Gemma 3 model (KV cache; temperature, top-k, top-p sampling)"};
    Options o;
    app.add_option("--checkpoint", o.checkpoint, "checkpoint directory (gemma3-train or Hugging Face)")->required();
    app.add_option("--prompt", o.prompt, "prompt text");
    app.add_option("--prompt-ids", o.prompt_ids, "prompt as space-separated token ids (instead of --prompt)");
    app.add_option("--tokenizer", o.tokenizer,
                   "GPT-2 ranks in tiktoken format (default: the checkpoint's vocab.json + merges.txt, else "
                   "$GEMMA3_TOKENIZER, else gpt2.tiktoken in the data folder of this program's install or checkout)");
    app.add_option("--max-new-tokens", o.max_new_tokens, "tokens to generate")->capture_default_str()->check(CLI::NonNegativeNumber);
    app.add_option("--temperature", o.sampling.temperature, "0 = greedy")->capture_default_str()->check(CLI::NonNegativeNumber);
    app.add_option("--top-k", o.sampling.top_k, "keep the k most likely tokens (0 = all)")->capture_default_str()->check(CLI::NonNegativeNumber);
    app.add_option("--top-p", o.sampling.top_p, "nucleus sampling threshold")->capture_default_str()->check(CLI::Range(1e-9, 1.0));
    app.add_option("--seed", o.sampling.seed, "sampling seed")->capture_default_str();
    app.add_option("--num-samples", o.num_samples, "independent samples")->capture_default_str()->check(CLI::PositiveNumber);
    app.add_option("--weights", o.weights, "weight format while decoding: f32, bf16 or int8")
        ->capture_default_str()
        ->check(CLI::IsMember({"f32", "bf16", "int8"}));
    app.add_option("--device", o.device, "where to decode: cpu, or cuda (a GPU; bf16 weights and KV cache)")
        ->capture_default_str()
        ->check(CLI::IsMember({"cpu", "cuda"}));
    app.add_flag("--no-stop", o.no_stop, "do not stop at <|endoftext|>");
    app.add_flag("--ids", o.print_ids, "print the new tokens' ids (space-separated) instead of text");
    app.add_option("--logits-out", o.logits_out, "write the prompt's logits to this safetensors file and exit");
    CLI11_PARSE(app, argc, argv);

    if (const auto problem = device_problem(o)) {
        std::cerr << "gemma3-generate: " << *problem << "\n";
        return 2;
    }
    try {
        const auto config = gemma3::checkpoint_model_config(o.checkpoint);
        std::unique_ptr<gemma3::Tokenizer> tokenizer;
        std::vector<std::int32_t> prompt;
        if (!o.prompt_ids.empty()) {
            prompt = parse_ids(o.prompt_ids);
        } else {
            if (config.vocab_size != 50257) {
                throw std::invalid_argument("the model's vocabulary has " + std::to_string(config.vocab_size) +
                                            " tokens, not GPT-2's 50257: give the prompt as --prompt-ids");
            }
            tokenizer = load_tokenizer(o);
            prompt = tokenizer->encode_ordinary(o.prompt.empty() ? "\n" : o.prompt);
        }
        if (config.vocab_size == 50257 && !tokenizer && o.logits_out.empty()) {
            try {  // to print text as well as ids; without a tokenizer, ids only
                tokenizer = load_tokenizer(o);
            } catch (const std::exception&) {
            }
        }
        if (prompt.empty()) throw std::invalid_argument("the prompt has no tokens");
        int status = 0;
        bool found = false;
#ifdef GEMMA3_HAVE_CUDA
        if (o.device == "cuda") {
            const std::int64_t max_positions =
                std::min<std::int64_t>(config.context_length, static_cast<std::int64_t>(prompt.size()) + o.max_new_tokens);
            const auto gpu = gemma3::programs::load_for_cuda_generation(config, o.checkpoint, max_positions);
            found = gpu != nullptr;
            if (found) {
                status = sample_loop(
                    o, tokenizer.get(), prompt,
                    [&](gemma3::TokenSampler& sampler, std::int32_t stop, const std::function<void(std::int32_t)>& on_token) {
                        return gpu->generate(prompt, o.max_new_tokens, sampler, stop, on_token);
                    },
                    "cuda, " + gpu->device_name());
            }
        } else
#endif
        {
            found = gemma3::programs::with_compiled_config(config,
                                                           [&]<class C>() { status = run<C>(o, tokenizer.get(), prompt); });
        }
        if (!found) {
            std::cerr << "gemma3-generate: " << gemma3::programs::no_compiled_config_message(o.checkpoint, "gemma3-generate")
                      << "\n";
            return 2;
        }
        return status;
    } catch (const std::exception& e) {
        std::cerr << "gemma3-generate: " << e.what() << "\n";
        return 1;
    }
}
