// The backward pass, the optimizer and the schedule against PyTorch autograd / torch.optim
// (fixtures from tools/make_reference.py), and the gradients against finite differences in double,
// independently of PyTorch.
//
// Tolerances (max|ours - ref| / max|ref| per tensor): gradients pass through the forward pass
// and then through each op's transpose, about twice the forward's chain of reductions, so we allow
// 10x the forward bounds: 1e-9 in double and 1e-4 in float. The trajectory is a chain of ten
// AdamW steps in double; the loss must stay within 1e-6 relative of PyTorch's.
#include <doctest/doctest.h>

#include "hf_gqa_tied.hpp"
#include "hf_mqa_untied.hpp"

#include <gemma3/model.hpp>
#include <gemma3/train/optimizer.hpp>
#include <gemma3/io/safetensors.hpp>
#include <gemma3/io/weights_io.hpp>

#include <filesystem>
#include <memory>
#include <random>
#include <set>
#include <string>

using namespace gemma3;

namespace {

const std::filesystem::path hf_dir = std::filesystem::path(GEMMA3_TEST_DATA_DIR) / "hf";

template <class T>
std::string type_name() {
    return std::is_same_v<T, double> ? "double" : "float";
}

template <class Config, class T>
void check_gradients_against_autograd(const std::string& name, double tolerance) {
    const auto dir = hf_dir / name;
    const SafetensorsFile ref(dir / "grads.safetensors");
    const auto shape = ref.find("input_ids")->shape;
    const Index batch = shape[0], seq = shape[1];
    const auto ids = ref.read_all<std::int32_t>("input_ids");
    const auto targets = ref.read_all<std::int32_t>("targets");

    auto model = std::make_unique<Model<Config, Cpu<T>>>();
    gemma3::load_weights(dir / "model.safetensors", model->parameters);
    Parameters<Config, T> grads;
    const double loss = model->forward_backward(ids, targets, batch, seq, grads);
    const double want_loss = ref.read_all<double>("loss").at(0);
    CHECK(std::abs(loss - want_loss) <= tolerance * std::abs(want_loss));

    double worst = 0;
    std::string worst_name;
    for (const auto& t : parameter_tensors<Config>()) {
        const auto want = ref.read_all<double>("grad." + t.name);
        REQUIRE(want.size() == t.numel());
        double max_diff = 0, max_ref = 0;
        for (std::size_t i = 0; i < want.size(); ++i) {
            max_diff = std::max(max_diff, std::abs(static_cast<double>(grads.data()[t.offset + i]) - want[i]));
            max_ref = std::max(max_ref, std::abs(want[i]));
        }
        const double err = max_diff / max_ref;
        CAPTURE(t.name);
        CHECK(err <= tolerance);
        if (err > worst) worst = err, worst_name = t.name;
    }
    MESSAGE(name << " " << type_name<T>() << ": loss " << loss << " (PyTorch " << want_loss
                 << "); worst gradient max|d|/max|ref| = " << worst << " (" << worst_name << ")");
}

}  // namespace

TEST_CASE_TEMPLATE("gradients equal PyTorch autograd: MQA, untied head, sliding window active", T, float, double) {
    check_gradients_against_autograd<fixtures::HF_mqa_untied, T>("mqa_untied", std::is_same_v<T, double> ? 1e-9 : 1e-4);
}

TEST_CASE_TEMPLATE("gradients equal PyTorch autograd: GQA, tied head (embedding gets both parts)", T, float, double) {
    check_gradients_against_autograd<fixtures::HF_gqa_tied, T>("gqa_tied", std::is_same_v<T, double> ? 1e-9 : 1e-4);
}

namespace {
// Small configs for finite differences: the window (3) is shorter than the sequence (8).
struct FiniteDifferenceGqa {
    static constexpr std::string_view name = "FiniteDifferenceGqa";
    static constexpr int vocab_size = 37, context_length = 64, emb_dim = 16, n_heads = 4, n_kv_groups = 2,
                         head_dim = 8, hidden_dim = 24, n_layers = 2, sliding_window = 3;
    static constexpr bool qk_norm = true, tie_word_embeddings = false;
    static constexpr double query_pre_attn_scalar = 8, rope_local_base = 10000, rope_base = 1000000,
                            rms_norm_eps = 1e-6;
    using layer_types = LayerPattern<SlidingAttention, FullAttention>;
};
struct FiniteDifferenceMqaTied : FiniteDifferenceGqa {
    static constexpr std::string_view name = "FiniteDifferenceMqaTied";
    static constexpr int n_kv_groups = 1;
    static constexpr bool tie_word_embeddings = true;
    using layer_types = LayerPattern<FullAttention, SlidingAttention>;
};

// Central differences of the mean loss at a few hundred random coordinates and at every norm
// weight. With h = 1e-5 the truncation error is ~h^2 |L'''| / 6 < 1e-9 and the rounding error
// ~eps |L| / h ~ 1e-10, so |numeric - analytic| <= 1e-7 + 1e-6 |analytic| is a safe bound.
template <class Config>
void check_finite_differences() {
    using M = Model<Config, Cpu<double>>;
    auto model = std::make_unique<M>();
    model->init(InitScheme::hf, 0.3, 7);
    std::mt19937_64 rng(11);
    auto* p = model->parameters.data();
    // Nonzero norm weights, so (1 + w) is exercised.
    for (const auto& t : parameter_tensors<Config>())
        if (t.role == TensorRole::norm)
            for (std::size_t i = 0; i < t.numel(); ++i) p[t.offset + i] = 0.3 * std::sin(1.7 * double(i) + double(t.offset));
    const Index batch = 2, seq = 8;
    std::vector<std::int32_t> ids(batch * seq), targets(batch * seq);
    std::uniform_int_distribution<int> token(0, Config::vocab_size - 1);
    for (auto& x : ids) x = token(rng);
    for (auto& x : targets) x = token(rng);

    Parameters<Config, double> grads;
    model->forward_backward(ids, targets, batch, seq, grads);

    std::set<std::size_t> coords;
    std::uniform_int_distribution<std::size_t> any(0, parameter_count<Config> - 1);
    while (coords.size() < 300) coords.insert(any(rng));
    for (const auto& t : parameter_tensors<Config>())
        if (t.role == TensorRole::norm)
            for (std::size_t i = 0; i < t.numel(); ++i) coords.insert(t.offset + i);

    const double h = 1e-5;
    int failures = 0;
    double worst = 0;
    for (std::size_t c : coords) {
        const double saved = p[c];
        p[c] = saved + h;
        const double plus = model->loss(ids, targets, batch, seq);
        p[c] = saved - h;
        const double minus = model->loss(ids, targets, batch, seq);
        p[c] = saved;
        const double numeric = (plus - minus) / (2 * h), analytic = grads.data()[c];
        const double err = std::abs(numeric - analytic);
        worst = std::max(worst, err);
        if (err > 1e-7 + 1e-6 * std::abs(analytic)) {
            ++failures;
            CAPTURE(c);
            CHECK(numeric == doctest::Approx(analytic));
        }
    }
    MESSAGE(config_name<Config>() << ": " << coords.size() << " coordinates, worst |numeric - analytic| = " << worst);
    CHECK(failures == 0);
}
}  // namespace

TEST_CASE("gradients equal central finite differences in double (GQA, untied)") {
    check_finite_differences<FiniteDifferenceGqa>();
}
TEST_CASE("gradients equal central finite differences in double (MQA, tied)") {
    check_finite_differences<FiniteDifferenceMqaTied>();
}

TEST_CASE("the learning-rate schedule equals PyTorch's SequentialLR(LinearLR, CosineAnnealingLR) per iteration") {
    const SafetensorsFile ref(hf_dir / "mqa_untied" / "trajectory.safetensors");
    const auto lr = ref.read_all<double>("lr");
    // The fixture's settings (tools/make_reference.py, TRAJECTORY): min_lr > learning_rate, as the seed.
    const LearningRateSchedule schedule{3e-3, 6e-3, 4, 20, 1.0 / 3.0};
    for (std::size_t e = 0; e < lr.size(); ++e) {
        CAPTURE(e);
        CHECK(schedule.at(static_cast<std::int64_t>(e)) == doctest::Approx(lr[e]).epsilon(1e-12));
    }
    // The seed's own values: warmup from 3.33e-5 to 1e-4 over 1000 iterations, then rising to 5e-4.
    const LearningRateSchedule seed{1e-4, 5e-4, 1000, 150000, 1.0 / 3.0};
    CHECK(seed.at(0) == doctest::Approx(1e-4 / 3));
    CHECK(seed.at(500) == doctest::Approx(6.6667e-5).epsilon(1e-4));
    CHECK(seed.at(1000) == doctest::Approx(1e-4));
    CHECK(seed.at(75500) == doctest::Approx(3e-4));
    CHECK(seed.at(149999) == doctest::Approx(5e-4).epsilon(1e-6));
}

TEST_CASE("ten AdamW steps with accumulation and clipping follow PyTorch's trajectory (double)") {
    using Config = fixtures::HF_mqa_untied;
    const auto dir = hf_dir / "mqa_untied";
    const SafetensorsFile ref(dir / "trajectory.safetensors");
    const auto xs = ref.read_all<std::int32_t>("x");
    const auto ys = ref.read_all<std::int32_t>("y");
    const auto want_loss = ref.read_all<double>("loss");
    const auto want_norm = ref.read_all<double>("grad_norm");
    const auto shape = ref.find("x")->shape;  // [iterations, batch, seq]
    const Index iterations = shape[0], batch = shape[1], seq = shape[2];
    const int accumulation = 2;
    const double clip = 0.5;
    const LearningRateSchedule schedule{3e-3, 6e-3, 4, 20, 1.0 / 3.0};

    auto model = std::make_unique<Model<Config, Cpu<double>>>();
    gemma3::load_weights(dir / "model.safetensors", model->parameters);
    Parameters<Config, double> grads;
    AdamW<double> adamw(grads.size(), AdamWSettings{0.9, 0.95, 1e-9, 0.1});
    std::size_t step = 0;
    double worst_loss = 0, worst_norm = 0;
    for (Index e = 0; e < iterations; ++e) {
        const auto offset = static_cast<std::size_t>(e * batch * seq);
        const std::span<const std::int32_t> x(xs.data() + offset, static_cast<std::size_t>(batch * seq));
        const std::span<const std::int32_t> y(ys.data() + offset, static_cast<std::size_t>(batch * seq));
        const double loss = model->forward_backward(x, y, batch, seq, grads, 1.0 / accumulation);
        const double err = std::abs(loss - want_loss[static_cast<std::size_t>(e)]) / want_loss[static_cast<std::size_t>(e)];
        worst_loss = std::max(worst_loss, err);
        CAPTURE(e);
        CHECK(err <= 1e-6);
        if ((e + 1) % accumulation == 0 || e + 1 == iterations) {
            const double norm = clip_grad_norm(grads.data(), grads.size(), clip);
            worst_norm = std::max(worst_norm, std::abs(norm - want_norm[step]) / want_norm[step]);
            CHECK(norm == doctest::Approx(want_norm[step]).epsilon(1e-6));
            adamw.step(model->parameters.data(), grads.data(), schedule.at(e));
            grads.set_zero();
            ++step;
        }
    }
    double worst_weight = 0;
    for (const auto& t : parameter_tensors<Config>()) {
        const auto want = ref.read_all<double>("final." + t.name);
        double max_diff = 0, max_ref = 0;
        for (std::size_t i = 0; i < want.size(); ++i) {
            max_diff = std::max(max_diff, std::abs(model->parameters.data()[t.offset + i] - want[i]));
            max_ref = std::max(max_ref, std::abs(want[i]));
        }
        worst_weight = std::max(worst_weight, max_diff / max_ref);
    }
    CHECK(worst_weight <= 1e-6);
    MESSAGE("trajectory: " << iterations << " iterations, " << step << " AdamW steps; worst relative error: loss "
                           << worst_loss << ", pre-clip gradient norm " << worst_norm << ", final weights "
                           << worst_weight);
}
