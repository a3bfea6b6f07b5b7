// gemma3-info's numbers: parameter counts against the table of docs/model.md §7 and the compiled layout,
// activation memory against the buffers a training step really allocates.
#include <doctest/doctest.h>

#include <gemma3/config_file.hpp>
#include <gemma3/footprint.hpp>
#include <gemma3/model.hpp>

#include <filesystem>
#include <memory>

using namespace gemma3;

namespace {
const std::filesystem::path config_dir = std::filesystem::path(GEMMA3_SOURCE_DIR) / "config";
}

TEST_CASE("the seed config has 164,654,976 parameters untied and 132,490,496 tied (docs/model.md §7)") {
    auto c = load_model_config(config_dir / "model_config.json");
    const auto p = count_parameters(c);
    CHECK(p.total == 164'654'976);
    CHECK(p.per_block == 5'573'632);
    CHECK(p.embedding == 32'164'480);
    CHECK(p.matrices == 132'434'560);
    c.tie_word_embeddings = true;
    CHECK(count_parameters(c).total == 132'490'496);
    CHECK(static_cast<std::int64_t>(parameter_count<configs::Gemma3_270M>) == 164'654'976);
    CHECK(static_cast<std::int64_t>(parameter_count<configs::Gemma3_270M_Tied>) == 132'490'496);
}

TEST_CASE("run-time parameter counts equal the compiled layouts") {
    CHECK(count_parameters(config_file_of<configs::Gemma3Tiny>()).total ==
          static_cast<std::int64_t>(parameter_count<configs::Gemma3Tiny>));
    CHECK(count_parameters(config_file_of<configs::Gemma3_270M_Tied>()).total ==
          static_cast<std::int64_t>(parameter_count<configs::Gemma3_270M_Tied>));
}

namespace {
template <class T>
std::int64_t elements(const Buffer<T>& b) {
    return static_cast<std::int64_t>(b.size());
}
}  // namespace

TEST_CASE("the activation estimate equals the buffers of a training step") {
    using C = configs::Gemma3Tiny;
    const Index batch = 3, seq = 20;
    auto model = std::make_unique<Model<C, Cpu<float>>>();
    model->init(InitScheme::hf, 0.02, 1);
    std::vector<std::int32_t> ids(batch * seq, 5), targets(batch * seq, 7);
    Parameters<C, float> grads;
    model->forward_backward(ids, targets, batch, seq, grads);

    // Sum of every buffer the step allocated (activations.hpp and backward.hpp), found through the
    // public activations and a scratch sized the same way.
    const auto& a = model->activations();
    std::int64_t total = elements(a.final_in) + elements(a.final_rstd) + elements(a.final_out);
    for (const auto& b : a.blocks) {
        for (const auto* buffer : {&b.input, &b.input_rstd, &b.attn_in, &b.qkv, &b.q_rstd, &b.k_rstd, &b.q_rot, &b.k_rot,
                                   &b.probs, &b.attn, &b.attn_proj, &b.attn_proj_rstd, &b.mid, &b.mid_rstd, &b.mlp_in,
                                   &b.gate_up, &b.act, &b.mlp_out, &b.mlp_out_rstd})
            total += elements(*buffer);
    }
    BackwardScratch<C, float> scratch;
    scratch.resize(batch * seq);
    for (const auto* buffer : {&scratch.d_x, &scratch.d_x_next, &scratch.d_mlp_out, &scratch.d_mlp_in,
                               &scratch.d_attn_proj, &scratch.d_attn_in, &scratch.d_act, &scratch.d_gate_up,
                               &scratch.d_attn, &scratch.d_q, &scratch.d_k, &scratch.d_qkv})
        total += elements(*buffer);
    total += std::min<std::int64_t>(256, batch * seq) * C::vocab_size;  // the classifier's logits chunk
    CHECK(activation_elements(config_file_of<C>(), batch, seq) == total);
}
