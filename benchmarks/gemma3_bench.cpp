// gemma3-bench: end-to-end speed of the CPU back end and this machine's limits, measured in one run.
//
//   build/bin/gemma3-bench --config seed --batch 4 --seq 128 --mode all [--dtype bfloat16]
//
// Modes (one per process when peak memory matters; benchmarks/compare.py runs them that way):
//   limits    GEMM GFLOP/s at the model's matrix shapes (M = batch*seq), fp32 and bf16 inputs, copy
//             bandwidth (GB/s), and the peak rates of the fp32 FMA and bf16 dot-product instructions
//   forward   logits for batch x seq tokens: tokens/s, GFLOP/s
//   train     forward + backward + AdamW: tokens/s, GFLOP/s
// --dtype bfloat16 runs forward and train on Cpu<bf16> (bf16 products, fp32 master weights); the
// forward's weights are bf16 values, as inference loads them from a bf16 checkpoint.
// Every line names the GEMM engine and the instruction set it dispatched to.
//   decode    one sequence: a prompt of seq tokens, then new tokens one at a time with the KV cache
// Each mode prints one JSON object per line (and a readable line on stderr). Times are the median
// of --repeats runs after --warmup runs. Peak RSS is the process's (VmHWM of /proc/self/status).
#include <gemma3/core/bf16_bits.hpp>
#include <gemma3/core/configs.hpp>
#include <gemma3/core/footprint.hpp>
#include <gemma3/core/generation.hpp>
#include <gemma3/model.hpp>
#include <gemma3/train/optimizer.hpp>

#include "trainer_configs.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Settings {
    std::int64_t batch = 4, seq = 128, decode_tokens = 64;
    gemma3::WeightFormat weights = gemma3::WeightFormat::f32;  // decode: how the weight matrices are stored
    std::string dtype = "float32";
    int warmup = 1, repeats = 5;
};

double median_seconds(int warmup, int repeats, const std::function<void()>& run) {
    for (int i = 0; i < warmup; ++i) run();
    std::vector<double> t;
    for (int i = 0; i < repeats; ++i) {
        const auto start = Clock::now();
        run();
        t.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// Peak resident memory of this process (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
// from the parent across exec, so a child of a big Python process would report the parent's peak.
double peak_rss_mib() {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
        if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
    }
    return -1;
}

void report(nlohmann::json j) {
    j["peak_rss_mib"] = peak_rss_mib();
    j["threads"] = omp_get_max_threads();
    j["gemm_engine"] = gemma3::gemm_engine_name();
    std::cout << j.dump() << std::endl;
}

// CPU time of the whole process: on a shared machine, a one-thread run's rate per CPU second is
// what it would reach with the core to itself (memory bandwidth aside).
double process_cpu_seconds() {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

std::vector<std::int32_t> random_tokens(std::int64_t n, int vocab, unsigned seed) {
    std::mt19937 rng(seed);
    std::vector<std::int32_t> t(static_cast<std::size_t>(n));
    for (auto& x : t) x = static_cast<std::int32_t>(rng() % static_cast<unsigned>(vocab));
    return t;
}

#if GEMMA3_X86_KERNELS  // blas.hpp's switch; it includes <immintrin.h>
// The arithmetic peak of one instruction on one thread, GFLOP/s: 12 independent accumulators cover
// its latency, so the loop runs at the rate the core issues it. fp32 FMA against the bf16 dot
// product (avx512_bf16) says whether bf16 products can be faster than fp32 at all on this core: on
// some they issue at the FMA's rate (each does twice the work), on others at half of it
// (docs/design.md §1). Hand-written: no library reports an instruction's rate.
template <class Step>
double instruction_loop_gflops(double flops_per_step, Step step) {
    constexpr long steps = 20'000'000;
    const auto start = Clock::now();
    [[maybe_unused]] volatile float sink = step(steps);  // keeps the loop's result live
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return flops_per_step * static_cast<double>(steps) / seconds / 1e9;
}

__attribute__((target("avx512f"))) float fma_loop(long steps) {
    __m512 acc[12];
    for (auto& a : acc) a = _mm512_setzero_ps();
    const __m512 x = _mm512_set1_ps(1.0f), y = _mm512_set1_ps(1e-9f);
    for (long i = 0; i < steps; ++i) {
#pragma GCC unroll 12
        for (auto& a : acc) a = _mm512_fmadd_ps(x, y, a);
    }
    float sum = 0;
    for (auto& a : acc) sum += _mm512_reduce_add_ps(a);
    return sum;
}

__attribute__((target("avx512f,avx512bf16"))) float bf16_dot_loop(long steps) {
    __m512 acc[12];
    for (auto& a : acc) a = _mm512_setzero_ps();
    const __m512bh x = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3f80));  // 1.0
    const __m512bh y = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3089));  // 1e-9
    for (long i = 0; i < steps; ++i) {
#pragma GCC unroll 12
        for (auto& a : acc) a = _mm512_dpbf16_ps(a, x, y);
    }
    float sum = 0;
    for (auto& a : acc) sum += _mm512_reduce_add_ps(a);
    return sum;
}
#endif

// Per-thread instruction peaks summed over the team (JSON null where the CPU lacks the instruction).
nlohmann::json instruction_peaks() {
    nlohmann::json peaks = {{"fp32_fma_gflops", nullptr}, {"bf16_dot_gflops", nullptr}};
#if GEMMA3_X86_KERNELS
    const auto team_rate = [](auto loop, double flops_per_step) {
        double total = 0;
#pragma omp parallel reduction(+ : total)
        total += instruction_loop_gflops(flops_per_step, loop);
        return total;
    };
    // Per step: 12 instructions of 16 fp32 lanes; an FMA is 2 FLOPs a lane, a bf16 dot product 4.
    if (__builtin_cpu_supports("avx512f")) peaks["fp32_fma_gflops"] = team_rate(fma_loop, 12 * 16 * 2);
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16"))
        peaks["bf16_dot_gflops"] = team_rate(bf16_dot_loop, 12 * 16 * 4);
#endif
    return peaks;
}

// sgemm at the shapes of the model's products, weighted by how often training performs them, copy
// bandwidth, and the instruction peaks: the limits the end-to-end numbers are compared with.
template <class C>
void limits(const Settings& s) {
    using D = gemma3::Dims<C>;
    const gemma3::Index m = s.batch * s.seq;
    struct Shape {
        gemma3::Index k, n;
        double weight;  // products of this shape per layer (or per model for the head)
    };
    const std::vector<Shape> shapes = {{D::model, D::q, D::layers},   {D::model, D::kv, 2.0 * D::layers},
                                       {D::q, D::model, D::layers},   {D::model, D::ffn, 2.0 * D::layers},
                                       {D::ffn, D::model, D::layers}, {D::model, D::vocab, 1}};
    double flops = 0, seconds = 0, seconds_bf16 = 0;
    nlohmann::json per_shape = nlohmann::json::array();
    for (const auto& sh : shapes) {
        gemma3::RowMatrix<float> a = gemma3::RowMatrix<float>::Random(m, sh.k), w = gemma3::RowMatrix<float>::Random(sh.n, sh.k),
                                 c(m, sh.n);
        const gemma3::RowMatrix<gemma3::bf16> a16 = a.cast<gemma3::bf16>(), w16 = w.cast<gemma3::bf16>();
        const double t = median_seconds(s.warmup, s.repeats, [&] {
            gemma3::gemm(a, gemma3::Op::none, w, gemma3::Op::transpose, c);
        });
        const double t16 = median_seconds(s.warmup, s.repeats, [&] {
            gemma3::gemm(a16, gemma3::Op::none, w16, gemma3::Op::transpose, c);
        });
        const double f = 2.0 * static_cast<double>(m * sh.k * sh.n);
        per_shape.push_back({{"m", m}, {"k", sh.k}, {"n", sh.n}, {"gflops", f / t / 1e9}, {"bf16_gflops", f / t16 / 1e9}});
        flops += f * sh.weight;
        seconds += t * sh.weight;
        seconds_bf16 += t16 * sh.weight;
    }
    const std::size_t bytes = std::size_t{512} << 20;
    std::vector<char> src(bytes, 1), dst(bytes, 0);
    const double copy_t = median_seconds(s.warmup, s.repeats, [&] {
#pragma omp parallel
        {
            const std::size_t nt = static_cast<std::size_t>(omp_get_num_threads()), id = static_cast<std::size_t>(omp_get_thread_num());
            const std::size_t chunk = bytes / nt;
            std::memcpy(dst.data() + id * chunk, src.data() + id * chunk, chunk);
        }
    });
    const double sgemm = flops / seconds / 1e9, bgemm = flops / seconds_bf16 / 1e9, copy = 2.0 * bytes / copy_t / 1e9;
    const nlohmann::json peaks = instruction_peaks();
    std::cerr << "limits: " << gemma3::gemm_engine_name() << ": fp32 " << sgemm << " GFLOP/s, bf16 inputs " << bgemm
              << " GFLOP/s at the model's shapes (M=" << m << "), copy " << copy << " GB/s; instruction peaks: fp32 FMA "
              << peaks["fp32_fma_gflops"].dump() << ", bf16 dot product " << peaks["bf16_dot_gflops"].dump() << " GFLOP/s\n";
    report({{"mode", "limits"},
            {"sgemm_gflops", sgemm},
            {"bf16_gemm_gflops", bgemm},
            {"copy_gbps", copy},
            {"fp32_fma_gflops", peaks["fp32_fma_gflops"]},
            {"bf16_dot_gflops", peaks["bf16_dot_gflops"]},
            {"shapes", per_shape}});
}

template <class C, class P>
void forward(const Settings& s) {
    auto model = std::make_unique<gemma3::Model<C, gemma3::Cpu<P>>>();
    model->init(gemma3::InitScheme::hf, 0.02, 1);
    if constexpr (std::is_same_v<P, gemma3::bf16>) {
        // Inference weights in bf16, as a bf16 checkpoint (the seed's dtype) or llama.cpp's BF16
        // GGUF holds them: each rounded once here, as loading would.
        float* w = model->parameters.data();
        for (std::size_t i = 0; i < model->parameters.size(); ++i) w[i] = gemma3::round_to_bf16_value(w[i]);
        model->weights_updated();
    }
    const auto tokens = random_tokens(s.batch * s.seq, C::vocab_size, 2);
    const double t = median_seconds(s.warmup, s.repeats, [&] { model->forward(tokens, s.batch, s.seq); });
    const double n = static_cast<double>(s.batch * s.seq);
    const double flops = gemma3::training_flops_per_token(gemma3::config_file_of<C>(), s.seq) / 3.0 * n;
    std::cerr << "forward " << s.dtype << ": " << n / t << " tokens/s, " << flops / t / 1e9 << " GFLOP/s ("
              << gemma3::gemm_engine_name() << ")\n";
    report({{"mode", "forward"}, {"dtype", s.dtype}, {"tokens_per_s", n / t}, {"gflops", flops / t / 1e9}, {"seconds", t}});
}

template <class C, class P>
void train(const Settings& s) {
    auto model = std::make_unique<gemma3::Model<C, gemma3::Cpu<P>>>();
    model->init(gemma3::InitScheme::hf, 0.02, 1);
    auto grads = std::make_unique<gemma3::Parameters<C, float>>();
    gemma3::AdamW<float> adamw(grads->size(), {});
    const auto tokens = random_tokens(s.batch * s.seq, C::vocab_size, 3);
    const auto targets = random_tokens(s.batch * s.seq, C::vocab_size, 4);
    double forward_backward_t = 0, optimizer_t = 0;
    // As gemma3-train does it: the global norm, then AdamW applies the clipping coefficient and
    // clears the gradients for the next step in the same pass.
    const double t = median_seconds(s.warmup, s.repeats, [&] {
        const auto t0 = Clock::now();
        model->forward_backward(tokens, targets, s.batch, s.seq, *grads);
        const auto t1 = Clock::now();
        const double norm = gemma3::global_norm(grads->data(), grads->size());
        adamw.step(model->parameters.data(), grads->data(), 1e-4, gemma3::clip_coefficient(norm, 1.0), true);
        model->weights_updated();  // Cpu<bf16> rounds its weight copy in the next pass (counted there)
        const auto t2 = Clock::now();
        forward_backward_t = std::chrono::duration<double>(t1 - t0).count();
        optimizer_t = std::chrono::duration<double>(t2 - t1).count();
    });
    const double n = static_cast<double>(s.batch * s.seq);
    const double flops = gemma3::training_flops_per_token(gemma3::config_file_of<C>(), s.seq) * n;
    std::cerr << "train " << s.dtype << " (" << gemma3::gemm_engine_name() << "): " << n / t << " tokens/s, " << flops / t / 1e9 << " GFLOP/s (forward+backward "
              << forward_backward_t << " s, clip+AdamW " << optimizer_t << " s)\n";
    report({{"mode", "train"},
            {"dtype", s.dtype},
            {"tokens_per_s", n / t},
            {"gflops", flops / t / 1e9},
            {"seconds", t},
            {"forward_backward_s", forward_backward_t},
            {"optimizer_s", optimizer_t}});
}

template <class C>
void decode(const Settings& s) {
    auto model = std::make_unique<gemma3::Model<C, gemma3::Cpu<float>>>();
    model->init(gemma3::InitScheme::hf, 0.02, 1);
    std::unique_ptr<gemma3::PackedWeights<C>> packed;
    if (s.weights != gemma3::WeightFormat::f32) {
        packed = std::make_unique<gemma3::PackedWeights<C>>(std::as_const(model->parameters).weights(), s.weights);
        model.reset();  // decoding reads only the packed copy
    }
    const auto prompt = random_tokens(s.seq, C::vocab_size, 5);
    // Each repeat's decode and prefill times; the medians are reported (as median_seconds does for
    // the whole run), not the last repeat's.
    std::vector<double> per_token_runs, cpu_per_token_runs, prefill_runs;
    int runs = 0;
    median_seconds(s.warmup, s.repeats, [&] {
        const bool warming_up = runs++ < s.warmup;
        auto generator = packed ? gemma3::Generator<C, float>(*packed, s.seq + s.decode_tokens + 1)
                                : gemma3::Generator<C, float>(*model, s.seq + s.decode_tokens + 1);
        const auto prefill_start = Clock::now();
        generator.append(prompt);
        const double prefill_s = std::chrono::duration<double>(Clock::now() - prefill_start).count();
        std::int32_t next = 1;
        const auto start = Clock::now();
        const double cpu_start = process_cpu_seconds();
        for (std::int64_t i = 0; i < s.decode_tokens; ++i) {
            const auto logits = generator.append(std::span<const std::int32_t>(&next, 1));
            gemma3::Index arg = 0;
            logits.row(0).maxCoeff(&arg);
            next = static_cast<std::int32_t>(arg);
        }
        if (warming_up) return;
        const auto tokens = static_cast<double>(s.decode_tokens);
        per_token_runs.push_back(std::chrono::duration<double>(Clock::now() - start).count() / tokens);
        cpu_per_token_runs.push_back((process_cpu_seconds() - cpu_start) / tokens);
        prefill_runs.push_back(prefill_s);
    });
    const auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    const double per_token = median(per_token_runs), cpu_per_token = median(cpu_per_token_runs), prefill_s = median(prefill_runs);
    // Bytes a decode step must read: every weight matrix once (the embedding only one row).
    const auto counts = gemma3::count_parameters(gemma3::config_file_of<C>());
    const double bytes =
        packed ? static_cast<double>(packed->bytes_per_token())
               : 4.0 * static_cast<double>(counts.total - counts.embedding + (C::tie_word_embeddings ? counts.embedding : 0));
    const char* format = gemma3::weight_format_name(s.weights);
    const char* kernels = s.weights == gemma3::WeightFormat::f32 ? "gemm"
                          : gemma3::packed_kernels_use_avx512() ? "avx512" : "scalar";
    std::cerr << "decode (" << format << " weights, " << kernels << "): " << 1 / per_token << " tokens/s after a " << s.seq
              << "-token prompt (" << bytes / 1e6 << " MB of weights per token, " << bytes / per_token / 1e9
              << " GB/s); per CPU second " << 1 / cpu_per_token << "; prefill " << static_cast<double>(s.seq) / prefill_s
              << " tokens/s\n";
    report({{"mode", "decode"},
            {"weights", format},
            {"kernels", kernels},
            {"tokens_per_s", 1 / per_token},
            {"tokens_per_cpu_s", 1 / cpu_per_token},  // with one thread: the rate when the core is not shared
            {"weight_bytes_per_token", bytes},
            {"prompt", s.seq},
            {"prefill_tokens_per_s", static_cast<double>(s.seq) / prefill_s}});
}

template <class C>
int run(const std::string& mode, const Settings& s) {
    if (mode == "limits" || mode == "all") limits<C>(s);
    if (s.dtype == "bfloat16") {
        if (mode == "forward" || mode == "all") forward<C, gemma3::bf16>(s);
        if (mode == "train" || mode == "all") train<C, gemma3::bf16>(s);
    } else {
        if (mode == "forward" || mode == "all") forward<C, float>(s);
        if (mode == "train" || mode == "all") train<C, float>(s);
    }
    if (mode == "decode" || mode == "all") decode<C>(s);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"gemma3 CPU benchmarks"};
    std::string config = "seed", mode = "all";
    Settings s;
    app.add_option("--config", config, "seed | tiny | demo")->check(CLI::IsMember({"seed", "tiny", "demo"}))->capture_default_str();
    app.add_option("--mode", mode, "limits | forward | train | decode | all")
        ->check(CLI::IsMember({"limits", "forward", "train", "decode", "all"}))
        ->capture_default_str();
    app.add_option("--dtype", s.dtype, "float32 | bfloat16 (forward and train: Cpu<bf16> mixed precision)")
        ->check(CLI::IsMember({"float32", "bfloat16"}))
        ->capture_default_str();
    app.add_option("--batch", s.batch)->capture_default_str()->check(CLI::PositiveNumber);
    app.add_option("--seq", s.seq)->capture_default_str()->check(CLI::PositiveNumber);
    app.add_option("--decode-tokens", s.decode_tokens)->capture_default_str()->check(CLI::PositiveNumber);
    std::string weights = "f32";
    app.add_option("--weights", weights, "decode: weight format f32 | bf16 | int8")
        ->check(CLI::IsMember({"f32", "bf16", "int8"}))
        ->capture_default_str();
    app.add_option("--warmup", s.warmup)->capture_default_str();
    app.add_option("--repeats", s.repeats)->capture_default_str()->check(CLI::PositiveNumber);
    CLI11_PARSE(app, argc, argv);
    s.weights = gemma3::parse_weight_format(weights);
    if (config == "seed") return run<gemma3::configs::Gemma3_270M>(mode, s);
    if (config == "tiny") return run<gemma3::configs::Gemma3Tiny>(mode, s);
    return run<gemma3::configs::Trainer_demo_model_config>(mode, s);
}
