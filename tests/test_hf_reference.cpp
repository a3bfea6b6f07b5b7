// The CPU forward pass against Hugging Face transformers' Gemma3ForCausalLM (fixtures written by
// tools/make_reference.py; their config types are generated from each fixture's model_config.json).
//
// Metric: max|ours - ref| / max|ref| over the logits.
// Tolerances from the precision: a logit is the end of ~(2 + 7 L) chained reductions of length
// <= hidden_dim; the relative rounding error grows roughly like eps * sqrt(reduction length) per
// stage and a few stages in sequence. With L = 18 and hidden_dim = 2048 that is ~1e3 eps: ~2e-13 in
// double and ~1e-4 worst case in float, typically far less since errors of independent sums cancel.
// We require 1e-10 (double vs float64 HF) and 1e-5 (float vs float64 HF, and vs stock float32 HF).
#include <doctest/doctest.h>

#include "closed_form_weights.hpp"
#include "hf_gqa_tied.hpp"
#include "hf_mqa_untied.hpp"
#include "hf_seed_dims.hpp"

#include <gemma3/model.hpp>
#include <gemma3/io/safetensors.hpp>
#include <gemma3/io/weights_io.hpp>

#include <filesystem>
#include <string>
#include <vector>

using namespace gemma3;

namespace {

const std::filesystem::path hf_dir = std::filesystem::path(GEMMA3_TEST_DATA_DIR) / "hf";

double relative_error(ConstMatrixView<float> got, const std::vector<double>& want) {
    double max_diff = 0, max_ref = 0;
    for (Index i = 0; i < got.size(); ++i) {
        max_diff = std::max(max_diff, std::abs(static_cast<double>(got.data()[i]) - want[static_cast<std::size_t>(i)]));
        max_ref = std::max(max_ref, std::abs(want[static_cast<std::size_t>(i)]));
    }
    return max_diff / max_ref;
}
double relative_error(ConstMatrixView<double> got, const std::vector<double>& want) {
    double max_diff = 0, max_ref = 0;
    for (Index i = 0; i < got.size(); ++i) {
        max_diff = std::max(max_diff, std::abs(got.data()[i] - want[static_cast<std::size_t>(i)]));
        max_ref = std::max(max_ref, std::abs(want[static_cast<std::size_t>(i)]));
    }
    return max_diff / max_ref;
}

template <class T>
std::string type_name() {
    return std::is_same_v<T, double> ? "double" : "float";
}

template <class T>
constexpr double tolerance() {
    return std::is_same_v<T, double> ? 1e-10 : 1e-5;
}

template <class Config, class T>
void check_small_case(const std::string& name) {
    const auto dir = hf_dir / name;
    const SafetensorsFile reference(dir / "reference.safetensors");
    const TensorInfo* ids_info = reference.find("input_ids");
    REQUIRE(ids_info != nullptr);
    const Index batch = ids_info->shape[0], seq = ids_info->shape[1];
    const auto ids = reference.read_all<std::int32_t>("input_ids");

    Model<Config, Cpu<T>> model;
    gemma3::load_weights(dir / "model.safetensors", model.parameters);
    const auto logits = model.forward(ids, batch, seq);

    const double vs_f64 = relative_error(logits, reference.read_all<double>("logits_f64"));
    MESSAGE(name << " " << type_name<T>() << ": max|d|/max|ref| vs HF float64 = "
                 << vs_f64);
    CHECK(vs_f64 <= tolerance<T>());
    if constexpr (std::is_same_v<T, float>) {
        const double vs_stock_f32 = relative_error(logits, reference.read_all<double>("logits_hf_f32"));
        MESSAGE(name << " float: max|d|/max|ref| vs stock HF float32 = " << vs_stock_f32);
        CHECK(vs_stock_f32 <= 1e-5);
    }
}

}  // namespace

TEST_CASE_TEMPLATE("forward pass equals HF on an MQA model with untied head and an active sliding window", T, float,
                   double) {
    check_small_case<fixtures::HF_mqa_untied, T>("mqa_untied");
}

TEST_CASE_TEMPLATE("forward pass equals HF on a GQA model with tied head", T, float, double) {
    check_small_case<fixtures::HF_gqa_tied, T>("gqa_tied");
}

TEST_CASE_TEMPLATE("forward pass equals HF at the seed's full dimensions (closed-form weights)", T, float, double) {
    using Config = fixtures::HF_seed_dims;
    static_assert(parameter_count<Config> == 164'654'976);
    const SafetensorsFile reference(hf_dir / "seed_dims" / "reference.safetensors");
    const auto ids = reference.read_all<std::int32_t>("input_ids");
    const Index seq = static_cast<Index>(ids.size());
    const Index vocab = Config::vocab_size;
    const auto stride = reference.read_all<std::int32_t>("column_stride").at(0);

    auto model = std::make_unique<Model<Config, Cpu<T>>>();
    testing::fill_closed_form(model->parameters);
    const auto logits = model->forward(ids, 1, seq);

    // Every `stride`-th column at every position.
    const auto want_cols = reference.read_all<double>("logits_f64_cols");
    const Index cols = (vocab + stride - 1) / stride;
    REQUIRE(static_cast<Index>(want_cols.size()) == seq * cols);
    RowMatrix<T> got_cols(seq, cols);
    for (Index t = 0; t < seq; ++t)
        for (Index c = 0; c < cols; ++c) got_cols(t, c) = logits(t, c * stride);
    const double err_cols = relative_error(const_view(got_cols.data(), seq, cols), want_cols);

    // Every column at the last position.
    const auto want_last = reference.read_all<double>("logits_f64_last");
    RowMatrix<T> got_last = logits.row(seq - 1);
    const double err_last = relative_error(const_view(got_last.data(), 1, vocab), want_last);

    // log-sum-exp over the whole vocabulary at every position (sensitive to every column).
    const auto want_lse = reference.read_all<double>("logsumexp_f64");
    double err_lse = 0, max_lse = 0;
    for (Index t = 0; t < seq; ++t) {
        const double m = static_cast<double>(logits.row(t).maxCoeff());
        const double lse = m + std::log((logits.row(t).template cast<double>().array() - m).exp().sum());
        err_lse = std::max(err_lse, std::abs(lse - want_lse[static_cast<std::size_t>(t)]));
        max_lse = std::max(max_lse, std::abs(want_lse[static_cast<std::size_t>(t)]));
    }
    err_lse /= max_lse;

    MESSAGE("seed_dims " << type_name<T>() << ": max|d|/max|ref| vs HF float64: strided columns " << err_cols
                         << ", last position " << err_last << ", logsumexp " << err_lse);
    CHECK(err_cols <= tolerance<T>());
    CHECK(err_last <= tolerance<T>());
    CHECK(err_lse <= tolerance<T>());
    if constexpr (std::is_same_v<T, float>) {
        const double vs_stock = relative_error(const_view(got_cols.data(), seq, cols),
                                               reference.read_all<double>("logits_hf_f32_cols"));
        MESSAGE("seed_dims float: strided columns vs stock HF float32 = " << vs_stock);
        CHECK(vs_stock <= 1e-5);
    }
}
