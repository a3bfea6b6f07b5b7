// gemma3-info's numbers: parameter counts against the table of docs/model.md §7 and the compiled layout,
// activation memory against the buffers a training step really allocates.
#include <doctest/doctest.h>

#include <gemma3/io/config_file.hpp>
#include <gemma3/core/footprint.hpp>
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
                                   &b.lse, &b.attn, &b.attn_proj, &b.attn_proj_rstd, &b.mid, &b.mid_rstd, &b.mlp_in,
                                   &b.gate_up, &b.act, &b.mlp_out, &b.mlp_out_rstd})
            total += elements(*buffer);
    }
    BackwardScratch<C, float> scratch;
    scratch.resize(batch * seq);
    for (const auto* buffer : {&scratch.d_x, &scratch.d_x_next, &scratch.d_mlp_out, &scratch.d_mlp_in,
                               &scratch.d_attn_proj, &scratch.d_attn_in, &scratch.d_act, &scratch.d_gate_up,
                               &scratch.d_attn, &scratch.d_q, &scratch.d_k, &scratch.d_qkv})
        total += elements(*buffer);
    total += batch * seq * C::n_heads;  // flash_attention_backward's row terms (delta), allocated inside it
    total += std::min<std::int64_t>(256, batch * seq) * C::vocab_size;  // the classifier's logits chunk
    CHECK(activation_elements(config_file_of<C>(), batch, seq) == total);
}

// Bytes in use on the heap, as the allocator counts them: glibc's main arena and its mmapped
// chunks, or AddressSanitizer's allocator in a sanitizer build (where mallinfo2 reports nothing).
#if defined(__SANITIZE_ADDRESS__)
#define GEMMA3_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GEMMA3_TEST_ASAN 1
#endif
#endif
#ifdef GEMMA3_TEST_ASAN
// From the sanitizer runtime (declared here: GCC installs no sanitizer/allocator_interface.h).
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();
#else
#include <malloc.h>
#endif

namespace {
double heap_bytes_in_use() {
#ifdef GEMMA3_TEST_ASAN
    return static_cast<double>(__sanitizer_get_current_allocated_bytes());
#else
    const auto info = mallinfo2();
    return static_cast<double>(info.uordblks + info.hblkhd);
#endif
}

// Heap bytes a fresh model holds after one training step of 1 x seq tokens: its activations and
// backward scratch (the weights and gradients exist before, and are not counted).
template <ModelConfig C>
double bytes_held_by_a_training_step(Index seq) {
    auto model = std::make_unique<Model<C, Cpu<float>>>();
    model->init(InitScheme::hf, 0.02, 1);
    auto grads = std::make_unique<Parameters<C, float>>();
    std::vector<std::int32_t> ids(static_cast<std::size_t>(seq), 5), targets(static_cast<std::size_t>(seq), 7);
    const double before = heap_bytes_in_use();
    model->forward_backward(ids, targets, 1, seq, *grads);
    return heap_bytes_in_use() - before;
}
}  // namespace

// The tiny model has 4 sliding layers (window 8) and 2 full ones. Storing [heads, T, T]
// probabilities, as the exact attention did, makes 8x the tokens hold ~20x the bytes (~24x with
// full layers); with the tiled attention every buffer is linear in T, so at most 8x. The bound
// 1.5 x 8 sits between the two.
TEST_CASE("a training step's memory grows linearly with the sequence length") {
    using C = configs::Gemma3Tiny;
    bytes_held_by_a_training_step<C>(16);  // first use of the thread pool and BLAS: their allocations stay
    const double short_run = bytes_held_by_a_training_step<C>(128), long_run = bytes_held_by_a_training_step<C>(1024);
    CAPTURE(short_run);
    CAPTURE(long_run);
    CHECK(short_run > 0);
    CHECK(long_run / short_run < 1.5 * 8);
}
