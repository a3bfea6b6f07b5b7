// gemma3-info: what a model config describes: architecture, exact parameter count, FLOPs per token
// and the memory for weights, training state, activations and the KV cache.
//
//   build/bin/gemma3-info --model-config config/model_config.json [--batch 32 --block-size 128 --context 32768]
// The model config may also be a Hugging Face config.json.
#include <gemma3/core/blas.hpp>
#include <gemma3/core/config_fields.hpp>
#include <gemma3/io/config_file.hpp>
#include <gemma3/core/footprint.hpp>
#include <gemma3/io/hf_config.hpp>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <string>

namespace {

std::string grouped(std::int64_t n) {
    std::string digits = std::to_string(n), out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return out;
}

std::string bytes(double b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) b /= 1024, ++u;
    char text[32];
    std::snprintf(text, sizeof text, "%.1f %s", b, units[u]);
    return text;
}

std::string number(double x) {
    char text[32];
    std::snprintf(text, sizeof text, "%.15g", x);
    return text;
}

// A field's value as the printout shows it.
std::string shown(int v) { return std::to_string(v); }
std::string shown(double v) { return number(v); }
std::string shown(bool v) { return v ? "true" : "false"; }
std::string shown(const std::string& v) { return v; }
std::string shown(const gemma3::LayerKinds& kinds) {
    std::string full;
    int n_full = 0;
    for (std::size_t i = 0; i < kinds.size(); ++i) {
        if (kinds[i] != gemma3::AttentionKind::full) continue;
        if (++n_full <= 12) full += (n_full > 1 ? ", " : "") + std::to_string(i + 1);
    }
    if (n_full > 12) full += ", ...";
    return std::to_string(kinds.size() - static_cast<std::size_t>(n_full)) + " sliding, " + std::to_string(n_full) +
           " full" + (n_full > 0 ? " (layers " + full + ")" : "");
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Architecture, parameter count and memory of a Gemma 3 model config"};
    std::string path = "config/model_config.json";
    std::int64_t batch = 32, block = 128, context = -1;
    app.add_option("--model-config", path, "model config JSON")->check(CLI::ExistingFile);
    app.add_option("--batch", batch, "sequences per micro-batch for the activation estimate")->check(CLI::PositiveNumber);
    app.add_option("--block-size", block, "tokens per sequence for the activation estimate")->check(CLI::PositiveNumber);
    app.add_option("--context", context, "KV-cache length (default: context_length)");
    bool recommend_dtype = false;
    app.add_flag("--recommended-dtype", recommend_dtype,
                 "print the CPU training dtype for this machine and exit: bfloat16 when bf16 products run at least "
                 "1.2x faster than fp32 ones here (timed), else float32");
    CLI11_PARSE(app, argc, argv);
    if (recommend_dtype) {
        const double speedup = gemma3::bf16_speedup();
        std::cout << (speedup >= 1.2 ? "bfloat16" : "float32") << "\n";
        std::cerr << "GEMM engine " << gemma3::gemm_engine_name() << "; bf16 products run at " << speedup
                  << "x the fp32 rate here" << (speedup == 0 ? " (no native bf16)" : "") << "\n";
        return 0;
    }

    gemma3::ModelConfigFile c;
    try {
        c = gemma3::load_model_config_any_format(path);
    } catch (const std::exception& e) {
        std::cerr << e.what() << "\n";
        return 1;
    }
    for (const auto& w : c.warnings) std::cerr << "warning: " << w << "\n";
    if (context < 0) context = c.context_length;

    const auto p = gemma3::count_parameters(c);
    const bool hf = c.format == gemma3::ConfigFormat::hugging_face;
    std::cout << "Model config: " << path << (hf ? " (Hugging Face's format; our field names)" : "") << "\n";
    // Every field of the table, with its meaning.
#define GEMMA3_PRINT_FIELD(type, name, presence, rule, hugging_face, description) \
    std::printf("  %-22s %-38s %s\n", #name, shown(c.name).c_str(), description);
    GEMMA3_MODEL_CONFIG_FIELDS(GEMMA3_PRINT_FIELD)
#undef GEMMA3_PRINT_FIELD
    std::cout << "  (feed-forward: GeGLU with tanh GELU)\n\n";

    std::cout << "Parameters: " << grouped(p.total) << "\n"
              << "  embedding    " << grouped(p.embedding) << "\n"
              << "  blocks       " << grouped(p.blocks) << " (" << c.n_layers << " x " << grouped(p.per_block) << ")\n"
              << "  final norm   " << grouped(p.final_norm) << "\n"
              << "  output head  " << (p.head ? grouped(p.head) : std::string("tied")) << "\n"
              << "  in matrix products: " << grouped(p.matrices) << " ; training FLOPs per token at block "
              << block << ": " << gemma3::training_flops_per_token(c, block) / 1e9 << " G\n\n";

    const double n = static_cast<double>(p.total);
    const double acts = static_cast<double>(gemma3::activation_elements(c, batch, block));
    const double kv = static_cast<double>(gemma3::kv_cache_elements(c, 1, context));
    const auto row = [](const std::string& label, const std::string& fp32, const std::string& bf16) {
        std::printf("  %-42s %12s %12s\n", label.c_str(), fp32.c_str(), bf16.c_str());
    };
    std::printf("Memory%*s%12s %12s\n", 39, "", "fp32", "bf16");
    row("weights", bytes(4 * n), bytes(2 * n));
    row("gradients", bytes(4 * n), bytes(2 * n));
    row("AdamW moments (always fp32)", bytes(8 * n), bytes(8 * n));
    row("fp32 master weights (bf16 training)", "-", bytes(4 * n));
    row("activations, batch " + std::to_string(batch) + " x " + std::to_string(block), bytes(4 * acts), bytes(2 * acts));
    const double exact_probs = static_cast<double>(gemma3::exact_attention_probability_elements(c, batch, block));
    std::printf("  (the CPU's attention is tiled: it keeps %s log-sum-exps per layer, not the %s of T x T\n"
                "   probabilities the exact scheme, and for now the CUDA back end, would hold; every term above\n"
                "   grows linearly with the block size)\n",
                grouped(batch * c.n_heads * block).c_str(), bytes(4 * exact_probs).c_str());
    row("KV cache, 1 sequence of " + std::to_string(context) + " tokens", bytes(4 * kv), bytes(2 * kv));
    std::printf("  (sliding layers keep %lld positions, full layers %lld)\n",
                static_cast<long long>(std::min<std::int64_t>(c.sliding_window, context)), static_cast<long long>(context));
    return 0;
}
