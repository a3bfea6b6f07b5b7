// Model<C, Cuda> and TrainingState end to end (include/gemma3/cuda/model.cuh, training.cuh) against
// the CPU model in double (model.hpp; in float for the logits at the seed's dimensions, to keep their
// memory small) with the same bf16-rounded weights: logits, loss, every
// parameter gradient after forward_backward, and AdamW steps. Two configs: Gemma3Tiny (untied head,
// multi-query, q/k norms, sliding window 8 active at 20 tokens; the seed's initialisation) and a
// tied, grouped-query config without q/k norms (Hugging Face's initialisation).
//
// Tolerances (u_b = 2^-8). The CUDA path stores intermediate tensors in bf16: per block at most 11
// of them on the forward path (attn_in, qkv, normed and rotated q/k, P, attn, attn_proj, mlp_in,
// gate_up, act, mlp_out) and 6 on the backward path (d_mlp_out, d_gate_up, d_attn_proj, d_attn, dS,
// d_qkv), plus the final norm output and d_logits. (The flash attention that training runs keeps P
// and dS in fp32, one store fewer each; its delta = dO . O reads the bf16 attn, already counted. The
// counts below keep them: an upper bound.) Each store perturbs its tensor by a relative error of at
// most u_b, independently from one store to the next; the residual stream and every accumulation
// are fp32, and the norms renormalise, so a perturbation reaches the output with a gain of order 1.
// After m stores on a tensor's dependency path the normwise relative error is then about
// u_b sqrt(m / 3) (random-walk growth of uniform roundings); we allow 4 u_b sqrt(m), seven times
// that. m = 11 L + 2 for the logits, the head and the final norm; + 6 (L - l) for the tensors of
// block l (the backward path from the head down to it), + 6 L for the embedding.
// The loss is checked through its inputs: the logits against the CPU's (above), and the fused
// classifier's value against the cross-entropy of the CUDA model's own logits computed in double,
// within the classifier's fp32 bound (test_cuda_cross_entropy.cu).
#include "kernel_test_support.hpp"

#include <gemma3/cuda/training.cuh>
#include <gemma3/model.hpp>
#include <gemma3/train/optimizer.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
using cu::test::bf16_unit;

// Tied head, 2 kv heads for 4 query heads, no q/k norms, window 5, head_dim 12.
struct TinyTiedGqa {
    static constexpr int vocab_size = 300;
    static constexpr int context_length = 64;
    static constexpr int emb_dim = 48;
    static constexpr int n_heads = 4;
    static constexpr int n_layers = 3;
    static constexpr int hidden_dim = 72;
    static constexpr int head_dim = 12;
    static constexpr bool qk_norm = false;
    static constexpr int n_kv_groups = 2;
    static constexpr double query_pre_attn_scalar = 12;
    static constexpr double rope_local_base = 10000;
    static constexpr double rope_base = 1000000;
    static constexpr int sliding_window = 5;
    static constexpr bool tie_word_embeddings = true;
    static constexpr double rms_norm_eps = 1e-6;
    using layer_types = gemma3::RepeatingPattern<3, 3>;
};

double tolerance(int stores) { return 4 * bf16_unit * std::sqrt(static_cast<double>(stores)); }

// Random weights with non-zero norm weights, all rounded to bf16 (the device's compute copy).
template <class C>
gemma3::Parameters<C, float> test_weights(gemma3::InitScheme scheme, std::uint64_t seed) {
    gemma3::Parameters<C, float> p;
    gemma3::init_parameters(p, scheme, 0.02, seed);
    std::mt19937 generator(static_cast<std::uint32_t>(seed));
    std::uniform_real_distribution<float> norm_weight(-0.3f, 0.3f);
    for (const auto& t : gemma3::parameter_tensors<C>())
        if (t.role == gemma3::TensorRole::norm)
            for (std::size_t i = 0; i < t.numel(); ++i) p.data()[t.offset + i] = norm_weight(generator);
    for (std::size_t i = 0; i < p.size(); ++i) p.data()[i] = gemma3::round_to_bf16_value(p.data()[i]);
    return p;
}

template <class C>
void copy_parameters(const gemma3::Parameters<C, float>& from, gemma3::Parameters<C, double>& to) {
    for (std::size_t i = 0; i < from.size(); ++i) to.data()[i] = from.data()[i];
}

std::vector<std::int32_t> random_tokens(std::size_t n, int vocab, std::uint32_t seed) {
    std::mt19937 generator(seed);
    std::vector<std::int32_t> tokens(n);
    for (auto& t : tokens) t = static_cast<std::int32_t>(generator() % static_cast<unsigned>(vocab / 2));  // repeats
    tokens[1] = vocab - 1;
    return tokens;
}

template <class View>
std::vector<double> values_of(const View& view) {
    std::vector<double> out;
    out.reserve(static_cast<std::size_t>(view.size()));
    for (gemma3::Index r = 0; r < view.rows(); ++r)
        for (gemma3::Index c = 0; c < view.cols(); ++c) out.push_back(static_cast<double>(view(r, c)));
    return out;
}

// The mean cross-entropy of row-major logits [n, vocab] in double, and the bound on the fused
// classifier's fp32 evaluation of it from the same logits: per row (vocab + 16) u_f for the softmax
// sum and 4 u_f (|max| + |logit of the target|) for the final subtraction (test_cuda_cross_entropy.cu).
struct MeanLoss {
    double value = 0, bound = 0;
};
MeanLoss mean_cross_entropy(const std::vector<double>& logits, int vocab, const std::vector<std::int32_t>& targets) {
    MeanLoss result;
    const std::size_t n = targets.size();
    for (std::size_t i = 0; i < n; ++i) {
        const double* row = logits.data() + i * static_cast<std::size_t>(vocab);
        const double max = *std::max_element(row, row + vocab);
        double sum = 0;
        for (int j = 0; j < vocab; ++j) sum += std::exp(row[j] - max);
        const double target = row[targets[i]];
        result.value += max + std::log(sum) - target;
        result.bound += (vocab + 16) * cu::test::fp32_unit + 4 * cu::test::fp32_unit * (std::fabs(max) + std::fabs(target));
    }
    result.value /= static_cast<double>(n);
    result.bound /= static_cast<double>(n);
    return result;
}

// Layer of a tensor from its Hugging Face name, or -1 outside the blocks.
int layer_of(const std::string& name) {
    const std::string prefix = "model.layers.";
    if (name.rfind(prefix, 0) != 0) return -1;
    return std::stoi(name.substr(prefix.size()));
}

template <class C>
void check_model(int batch, int seq, gemma3::InitScheme scheme, std::uint64_t seed) {
    using D = gemma3::Dims<C>;
    const int n = batch * seq, L = D::layers;
    const gemma3::Parameters<C, float> weights = test_weights<C>(scheme, seed);
    gemma3::Model<C, gemma3::Cuda> gpu;
    for (std::size_t i = 0; i < weights.size(); ++i) gpu.parameters.data()[i] = weights.data()[i];
    gpu.upload();
    gpu.set_classifier_chunk_rows(16);  // several chunks, the last one partial
    gemma3::Model<C, gemma3::Cpu<double>> cpu;
    copy_parameters(weights, cpu.parameters);
    const auto tokens = random_tokens(static_cast<std::size_t>(n), D::vocab, static_cast<std::uint32_t>(seed) + 1);
    const auto targets = random_tokens(static_cast<std::size_t>(n), D::vocab, static_cast<std::uint32_t>(seed) + 2);

    // --- Logits and loss (inference), both attention paths ----------------------------------------
    const std::vector<double> logits_ref = values_of(cpu.forward(tokens, batch, seq));
    const double tol_logits = tolerance(11 * L + 2);
    std::vector<double> logits;
    // loss() below and training run flash (the training path), so the exact products come first.
    for (const auto path : {cu::AttentionPath::matrix_products, cu::AttentionPath::flash}) {
        gpu.set_attention_path(path);
        logits = values_of(gpu.forward(tokens, batch, seq));
        const double error = cu::test::relative_error(logits, logits_ref);
        MESSAGE("logits (" << std::string(path == cu::AttentionPath::flash ? "flash" : "products") << "): relative error " << error
                           << ", tolerance " << tol_logits);
        CHECK(error <= tol_logits);
    }
    const double loss_ref = cpu.loss(tokens, targets, batch, seq);
    const double loss = gpu.loss(tokens, targets, batch, seq);
    MESSAGE("loss: " << loss << " (CPU: " << loss_ref << ")");
    // The fused classifier against the cross-entropy of the model's own logits in double (the logits
    // themselves are checked against the CPU's above).
    const MeanLoss own = mean_cross_entropy(logits, D::vocab, targets);
    MESSAGE("loss vs cross-entropy of its own logits: |error| " << std::fabs(loss - own.value) << ", bound " << own.bound);
    CHECK(std::fabs(loss - own.value) <= own.bound);

    // --- Gradients ------------------------------------------------------------------------------------
    const double loss_scale = 0.5;
    gemma3::Parameters<C, double> grads_ref;
    const double train_loss_ref = cpu.forward_backward(tokens, targets, batch, seq, grads_ref, loss_scale);
    cu::Gradients<C> grads;
    const double train_loss = gpu.forward_backward(tokens, targets, batch, seq, grads, loss_scale);
    MESSAGE("training loss: " << train_loss << " (CPU: " << train_loss_ref << ")");
    CHECK(train_loss == loss);  // the same logits and loss kernel as evaluation, bit for bit
    // Evaluation right after training reuses the training buffers and gives the same bits.
    CHECK(gpu.loss(tokens, targets, batch, seq) == loss);
    gemma3::Parameters<C, float> grads_host;
    grads.download(grads_host);
    double worst_ratio = 0;
    std::string worst_tensor;
    // Elements whose reference gradient exceeds the tensor's whole error budget (tolerance x its
    // 2-norm) have the same sign on the device: the AdamW check below relies on it.
    std::vector<char> sign_certain(grads_host.size(), 0);
    for (const auto& t : gemma3::parameter_tensors<C>()) {
        const int layer = layer_of(t.name);
        const int stores = 11 * L + 2 + (layer >= 0 ? 6 * (L - layer) : (t.role == gemma3::TensorRole::embedding ? 6 * L : 0));
        std::vector<double> got(t.numel()), expected(t.numel());
        for (std::size_t i = 0; i < t.numel(); ++i) {
            got[i] = grads_host.data()[t.offset + i];
            expected[i] = grads_ref.data()[t.offset + i];
        }
        const double error = cu::test::relative_error(got, expected);
        double norm = 0;
        for (const double e : expected) norm += e * e;
        const double error_budget = tolerance(stores) * std::sqrt(norm);
        for (std::size_t i = 0; i < t.numel(); ++i) sign_certain[t.offset + i] = std::fabs(expected[i]) > error_budget;
        INFO(t.name << ": relative error " << error << ", tolerance " << tolerance(stores));
        CHECK(error <= tolerance(stores));
        if (!(error / tolerance(stores) <= worst_ratio)) {
            worst_ratio = error / tolerance(stores);
            worst_tensor = t.name + ": relative error " + std::to_string(error) + ", tolerance " + std::to_string(tolerance(stores));
        }
    }
    MESSAGE("gradients: largest error/tolerance " << worst_ratio << " (" << worst_tensor << ")");

    // The deterministic embedding backward gives the same bits again; the atomic one agrees to fp32.
    cu::Gradients<C> again;
    gpu.forward_backward(tokens, targets, batch, seq, again, loss_scale);
    gemma3::Parameters<C, float> again_host;
    again.download(again_host);
    CHECK(std::equal(grads_host.data(), grads_host.data() + grads_host.size(), again_host.data()));
    gpu.set_deterministic_embedding_backward(false);
    cu::Gradients<C> atomic;
    gpu.forward_backward(tokens, targets, batch, seq, atomic, loss_scale);
    gpu.set_deterministic_embedding_backward(true);
    gemma3::Parameters<C, float> atomic_host;
    atomic.download(atomic_host);
    double worst = 0, scale = 0;
    for (std::size_t i = 0; i < D::vocab * static_cast<std::size_t>(D::model); ++i) {
        worst = std::max(worst, static_cast<double>(std::fabs(atomic_host.data()[i] - grads_host.data()[i])));
        scale = std::max(scale, static_cast<double>(std::fabs(grads_host.data()[i])));
    }
    CHECK(worst <= 1e-5 * scale);  // only the order of fp32 additions differs

    // --- AdamW through TrainingState -----------------------------------------------------------------
    const gemma3::AdamWSettings settings{0.9, 0.95, 1e-8, 0.1};
    const double lr = 1e-3;
    cu::TrainingState<C> state(gpu, settings);
    gemma3::Parameters<C, float> master_cpu = weights;  // the CPU float path on the device's own gradients
    gemma3::AdamW<float> adam_cpu(weights.size(), settings);
    gemma3::Parameters<C, double> reference_master;  // the CPU double path, first step
    copy_parameters(weights, reference_master);
    gemma3::AdamW<double> adam_ref(weights.size(), settings);
    for (int step = 1; step <= 2; ++step) {
        state.zero_gradients();
        gpu.forward_backward(tokens, targets, batch, seq, state.gradients(), loss_scale);
        gemma3::Parameters<C, float> g;
        state.gradients().download(g);
        const double unclipped = gemma3::global_norm(g.data(), g.size());
        const double max_norm = step == 2 ? 0.5 * unclipped : 0.0;  // clip the second step
        const double norm = state.clip_and_step(lr, max_norm);
        CHECK(std::fabs(norm - unclipped) <= 1e-6 * unclipped);
        gemma3::clip_grad_norm(g.data(), g.size(), max_norm);
        adam_cpu.step(master_cpu.data(), g.data(), lr);
        if (step == 1) adam_ref.step(reference_master.data(), grads_ref.data(), lr);
        CHECK(state.steps() == step);
        gemma3::Parameters<C, float> master_gpu;
        gemma3::AdamW<float> moments;
        state.download(master_gpu, moments);
        CHECK(moments.steps() == step);
        // Tight: the same float AdamW on the same gradients (see test_cuda_optimizer.cu for the bound).
        std::size_t off = 0;
        for (std::size_t i = 0; i < weights.size(); ++i) {
            const double bound = 8 * step * cu::test::fp32_unit * (std::fabs(master_cpu.data()[i]) + 4 * lr / (1 - std::pow(0.9, step)));
            off += !(std::fabs(master_gpu.data()[i] - master_cpu.data()[i]) <= bound);
        }
        CHECK(off == 0);
        if (step == 1) {
            // Against the CPU double path. With t = 1 the update is lr g / (|g| + eps) (plus the same
            // weight decay), so where the gradients agree in sign the weights agree to the float
            // AdamW bound above plus lr eps / |g| <= 1e-3 lr for |g| >= 1e3 eps. The sign is certain
            // where |g_ref| exceeds the tensor's gradient error budget (sign_certain).
            std::size_t checked = 0, far = 0;
            for (std::size_t i = 0; i < weights.size(); ++i) {
                if (!sign_certain[i] || std::fabs(grads_ref.data()[i]) < 1e3 * settings.eps) continue;
                ++checked;
                const double bound = 8 * cu::test::fp32_unit * (std::fabs(reference_master.data()[i]) + 40 * lr) + 1e-3 * lr;
                far += !(std::fabs(master_gpu.data()[i] - reference_master.data()[i]) <= bound);
            }
            MESSAGE("first AdamW step against the double path: " << checked << " of " << weights.size()
                                                                   << " weights with a certain gradient sign, " << far << " off");
            CHECK(checked > 0);
            CHECK(far == 0);
        }
        // The model computes with the bf16 rounding of the new master weights.
        std::vector<__nv_bfloat16> compute(weights.size());
        cu::copy_to_host(compute.data(), gpu.device_parameters(), compute.size());
        std::size_t mismatched = 0;
        for (std::size_t i = 0; i < weights.size(); ++i)
            mismatched += cu::test::bf16_bits(compute[i]) != gemma3::float_to_bf16(master_gpu.data()[i]);
        CHECK(mismatched == 0);
    }

    // A non-finite gradient norm takes no step and leaves the weights alone.
    gemma3::Parameters<C, float> before, poisoned;
    gemma3::AdamW<float> moments_before;
    state.download(before, moments_before);
    state.gradients().download(poisoned);
    poisoned.data()[7] = std::numeric_limits<float>::quiet_NaN();
    state.gradients().upload(poisoned);
    CHECK(std::isnan(state.clip_and_step(lr, 1.0)));
    gemma3::Parameters<C, float> after;
    gemma3::AdamW<float> moments_after;
    state.download(after, moments_after);
    CHECK(std::equal(before.data(), before.data() + before.size(), after.data()));
    CHECK(moments_after.steps() == 2);

    // Resuming: upload the downloaded state into a fresh TrainingState, same master and step count.
    cu::TrainingState<C> resumed(gpu, settings);
    resumed.upload(after, moments_after);
    gemma3::Parameters<C, float> round_trip;
    gemma3::AdamW<float> moments_round_trip;
    resumed.download(round_trip, moments_round_trip);
    CHECK(std::equal(after.data(), after.data() + after.size(), round_trip.data()));
    CHECK(moments_round_trip.steps() == 2);
    CHECK(moments_round_trip.first_moment() == moments_after.first_moment());
    CHECK(moments_round_trip.second_moment() == moments_after.second_moment());
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("Model<Gemma3Tiny, Cuda>: logits, loss, all gradients and two AdamW steps match the CPU model") {
    check_model<gemma3::configs::Gemma3Tiny>(2, 20, gemma3::InitScheme::seed, 11);
}

GEMMA3_CUDA_TEST_CASE("Model<tied head, grouped-query, no q/k norm, Cuda>: logits, loss, gradients and AdamW match the CPU model") {
    check_model<TinyTiedGqa>(3, 13, gemma3::InitScheme::hf, 12);
}

GEMMA3_CUDA_TEST_CASE("Model<Gemma3Tiny, Cuda> rejects bad input with the CPU model's messages") {
    gemma3::Model<gemma3::configs::Gemma3Tiny, gemma3::Cuda> gpu;
    gpu.init(gemma3::InitScheme::seed, 0.02, 3);
    const std::vector<std::int32_t> tokens{1, 2, 512, 3};
    CHECK(cu::test::contains(cu::test::thrown_message<std::out_of_range>([&] { gpu.forward(tokens, 1, 4); }),
                             "token id 512 at position 2 is outside the vocabulary [0, 512)"));
    CHECK(cu::test::contains(cu::test::thrown_message<std::invalid_argument>([&] { gpu.forward(tokens, 1, 3); }),
                             "4 tokens given, batch * seq = 3"));
    const std::vector<std::int32_t> good{1, 2, 3, 4}, short_targets{1, 2};
    cu::Gradients<gemma3::configs::Gemma3Tiny> grads;
    CHECK(cu::test::contains(
        cu::test::thrown_message<std::invalid_argument>([&] { gpu.forward_backward(good, short_targets, 1, 4, grads); }),
        "2 targets given, batch * seq = 4"));
    CHECK(cu::test::contains(cu::test::thrown_message<std::invalid_argument>([&] { gpu.forward(good, 1, 2000); }),
                             "exceeds context_length 1024"));
}

GEMMA3_CUDA_TEST_CASE("bf16_peak_tflops reads NVIDIA's data-sheet peaks from device names") {
    CHECK(cu::bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989);
    CHECK(cu::bf16_peak_tflops("NVIDIA H100 PCIe") == 756);
    CHECK(cu::bf16_peak_tflops("NVIDIA H200") == 989);
    CHECK(cu::bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312);
    CHECK(cu::bf16_peak_tflops("NVIDIA A10G") == 70);
    CHECK(cu::bf16_peak_tflops("NVIDIA A10") == 125);
    CHECK(cu::bf16_peak_tflops("gemma3 CUDA emulator (CPU, sm_80 limits)") == 0);
}

GEMMA3_CUDA_TEST_CASE("Model<Gemma3_270M, Cuda>: logits and loss at the seed's full dimensions match the CPU model") {
    // Forward only (the gradients of 165M parameters would need several GB of host memory here):
    // emb_dim 640, head_dim 256 (the flash kernel's largest tile), hidden 2048, vocab 50257, 18 layers.
    using C = gemma3::configs::Gemma3_270M;
    const int batch = 1, seq = 6, n = batch * seq;
    auto gpu = std::make_unique<gemma3::Model<C, gemma3::Cuda>>();
    gemma3::init_parameters(gpu->parameters, gemma3::InitScheme::hf, 0.02, 5);
    for (std::size_t i = 0; i < gpu->parameters.size(); ++i) gpu->parameters.data()[i] = gemma3::round_to_bf16_value(gpu->parameters.data()[i]);
    gpu->upload();
    auto cpu = std::make_unique<gemma3::Model<C, gemma3::Cpu<float>>>();
    std::copy(gpu->parameters.data(), gpu->parameters.data() + gpu->parameters.size(), cpu->parameters.data());
    const auto tokens = random_tokens(n, C::vocab_size, 21), targets = random_tokens(n, C::vocab_size, 22);
    const std::vector<double> logits_ref = values_of(cpu->forward(tokens, batch, seq));
    const double tol = tolerance(11 * C::n_layers + 2);
    std::vector<double> logits;
    for (const auto path : {cu::AttentionPath::flash, cu::AttentionPath::matrix_products}) {  // loss() below: products
        gpu->set_attention_path(path);
        logits = values_of(gpu->forward(tokens, batch, seq));
        const double error = cu::test::relative_error(logits, logits_ref);
        MESSAGE("seed dims, logits (" << std::string(path == cu::AttentionPath::flash ? "flash" : "products")
                                      << "): relative error " << error << ", tolerance " << tol);
        CHECK(error <= tol);
    }
    const double loss_ref = cpu->loss(tokens, targets, batch, seq), loss = gpu->loss(tokens, targets, batch, seq);
    MESSAGE("seed dims, loss " << loss << " (CPU: " << loss_ref << ")");
    const MeanLoss own = mean_cross_entropy(logits, C::vocab_size, targets);
    MESSAGE("seed dims, loss vs cross-entropy of its own logits: |error| " << std::fabs(loss - own.value) << ", bound " << own.bound);
    CHECK(std::fabs(loss - own.value) <= own.bound);
}

#if !GEMMA3_CUDA_IS_EMULATED && defined(GEMMA3_HAVE_NCCL)
namespace {
// A job of one process: what gemma3::Communicator offers NcclAllReduce (rank, size, broadcast).
struct OneProcess {
    int rank() const { return 0; }
    int size() const { return 1; }
    template <class T>
    void broadcast(std::span<T>, int) {}
};
}  // namespace

GEMMA3_CUDA_TEST_CASE("NcclAllReduce over one rank leaves the gradients unchanged") {
    OneProcess host;
    cu::NcclAllReduce reduce(host);
    const std::vector<float> values = cu::test::random_floats(1001, -1.0f, 1.0f, 9u);
    auto device_values = cu::DeviceBuffer<float>::from_host(values);
    cu::Stream stream;
    reduce.sum(device_values.data(), values.size(), stream);
    stream.synchronize();
    CHECK(device_values.download() == values);
}
#endif
