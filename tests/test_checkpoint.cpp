// Checkpoints: a round trip restores everything exactly; corrupted, incomplete or mismatched
// checkpoints are refused with a message that names the problem, and leave the model untouched.
#include <doctest/doctest.h>

#include <gemma3/checkpoint.hpp>
#include <gemma3/model.hpp>

#include <filesystem>
#include <fstream>
#include <memory>

using namespace gemma3;
namespace fs = std::filesystem;
using Tiny = configs::Gemma3Tiny;

namespace {

fs::path fresh_dir(const std::string& name) {
    const auto dir = fs::temp_directory_path() / ("gemma3_test_checkpoint_" + std::to_string(::getpid())) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

struct Saved {
    fs::path out, dir;
    std::unique_ptr<Parameters<Tiny, float>> params, grads;
    AdamW<float> adamw;
    TrainerState state;
};

// A checkpoint of a randomly initialised Tiny model with nonzero moments and pending gradients.
Saved save_one(const std::string& name) {
    Saved s;
    s.out = fresh_dir(name);
    s.params = std::make_unique<Parameters<Tiny, float>>();
    s.grads = std::make_unique<Parameters<Tiny, float>>();
    init_parameters(*s.params, InitScheme::hf, 0.02, 5);
    init_parameters(*s.grads, InitScheme::hf, 0.5, 6);
    s.adamw = AdamW<float>(s.params->size(), {});
    s.adamw.step(s.params->data(), s.grads->data(), 1e-3);
    s.state.iteration = 7;
    s.state.optimizer_steps = 1;
    s.state.best_val_loss = 3.25;
    s.state.train_sampler = s.state.eval_train_sampler = s.state.eval_val_sampler = "1 2 3";
    const auto model_config = config_file_of<Tiny>();
    const auto training = parse_training_config(
        nlohmann::json{{"learning_rate", 1e-3}, {"warmup_steps", 1}, {"min_lr", 0.0}, {"max_iters", 10},
                       {"eval_iters", 5}, {"batch_size", 2}, {"block_size", 8}, {"gradient_accumulation_steps", 2},
                       {"device", "cpu"}, {"dtype", "float32"}, {"ptdtype", "float32"}},
        "test");
    s.dir = save_checkpoint(s.out, "latest", *s.params, s.adamw, s.state, model_config, training, s.grads.get());
    return s;
}

void corrupt_byte(const fs::path& file, std::uintmax_t offset) {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(offset));
    f.put('\x7f');
}

}  // namespace

TEST_CASE("a checkpoint restores weights, moments, pending gradients and trainer state exactly") {
    const auto s = save_one("roundtrip");
    CHECK(fs::read_symlink(s.out / "latest") == fs::path("checkpoints/iter-00000007"));
    Parameters<Tiny, float> params, grads;
    AdamW<float> adamw(params.size(), {});
    const auto state = load_checkpoint(s.out / "latest", params, adamw, grads);
    CHECK(state.iteration == 7);
    CHECK(state.optimizer_steps == 1);
    CHECK(state.best_val_loss == 3.25);
    CHECK(state.pending_gradients);
    CHECK(adamw.steps() == 1);
    CHECK(std::memcmp(params.data(), s.params->data(), params.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(grads.data(), s.grads->data(), grads.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(adamw.first_moment().data(), s.adamw.first_moment().data(), params.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(adamw.second_moment().data(), s.adamw.second_moment().data(), params.size() * sizeof(float)) == 0);
}

TEST_CASE("corrupted, incomplete and mismatched checkpoints are refused without touching the model") {
    Parameters<Tiny, float> params, grads;
    AdamW<float> adamw(params.size(), {});
    init_parameters(params, InitScheme::hf, 0.02, 99);
    const Parameters<Tiny, float> before = params;
    const auto unchanged = [&] { return std::memcmp(params.data(), before.data(), params.size() * sizeof(float)) == 0; };

    SUBCASE("missing directory") {
        CHECK_THROWS_WITH_AS(load_checkpoint(fs::path("/nonexistent/ckpt"), params, adamw, grads),
                             doctest::Contains("no such checkpoint directory"), CheckpointError);
    }
    SUBCASE("model file truncated") {
        const auto s = save_one("truncated");
        fs::resize_file(s.dir / "model.safetensors", fs::file_size(s.dir / "model.safetensors") / 2);
        CHECK_THROWS_WITH_AS(load_checkpoint(s.dir, params, adamw, grads), doctest::Contains("model.safetensors"),
                             CheckpointError);
    }
    SUBCASE("safetensors header damaged") {
        const auto s = save_one("header");
        corrupt_byte(s.dir / "optimizer.safetensors", 8);  // the header JSON's opening brace
        CHECK_THROWS_WITH_AS(load_checkpoint(s.dir, params, adamw, grads), doctest::Contains("optimizer.safetensors"),
                             CheckpointError);
    }
    SUBCASE("optimizer file missing") {
        const auto s = save_one("no_optimizer");
        fs::remove(s.dir / "optimizer.safetensors");
        CHECK_THROWS_AS(load_checkpoint(s.dir, params, adamw, grads), CheckpointError);
    }
    SUBCASE("trainer state not JSON") {
        const auto s = save_one("state");
        std::ofstream(s.dir / "trainer_state.json") << "{ \"iteration\": ";
        CHECK_THROWS_WITH_AS(load_checkpoint(s.dir, params, adamw, grads), doctest::Contains("trainer_state.json"),
                             CheckpointError);
    }
    SUBCASE("model config nested deeper than a config file may be") {
        const auto s = save_one("deep_config");
        std::ofstream(s.dir / "gemma3_config.json") << "{\"vocab_size\":" << std::string(200000, '[')
                                                    << std::string(200000, ']') << "}";
        CHECK_THROWS_WITH_AS(load_checkpoint(s.dir, params, adamw, grads),
                             doctest::Contains("gemma3_config.json: is nested deeper than 64 levels"), CheckpointError);
    }
    SUBCASE("written for another architecture") {
        const auto s = save_one("mismatch");
        auto config = config_file_of<Tiny>();
        config.emb_dim = 128;
        std::ofstream(s.dir / "gemma3_config.json") << to_json(config).dump();
        CHECK_THROWS_WITH_AS(load_checkpoint(s.dir, params, adamw, grads),
                             doctest::Contains("written for a different model"), CheckpointError);
    }
    CHECK(unchanged());
}

TEST_CASE("the Hugging Face config.json of a checkpoint converts back to the same model config") {
    const auto original = config_file_of<configs::Gemma3_270M>();
    const auto round_trip = model_config_from_hf_json(hf_config_json(original), "config.json");
    CHECK_NOTHROW(require_matches<configs::Gemma3_270M>(round_trip));
    auto hf = hf_config_json(original);
    hf["final_logit_softcapping"] = 30.0;
    CHECK_THROWS_WITH_AS(model_config_from_hf_json(hf, "config.json"), doctest::Contains("final_logit_softcapping"),
                         ConfigError);
}

TEST_CASE("a checkpoint's config.json is read with the size and depth limits of a config file") {
    const auto dir = fresh_dir("hf_config_limits");
    // 200,000 levels of nesting: a stack overflow before the limits (fuzzing, finding 2).
    std::ofstream(dir / "config.json") << "{\"hidden_size\":" << std::string(200000, '[') << std::string(200000, ']')
                                       << "}";
    CHECK_THROWS_WITH_AS(checkpoint_model_config(dir), doctest::Contains("is nested deeper than 64 levels"), ConfigError);
    fs::resize_file(dir / "config.json", std::uintmax_t{64} << 20);
    CHECK_THROWS_WITH_AS(checkpoint_model_config(dir), doctest::Contains("is larger than 16777216 bytes"), ConfigError);
    // A config.json transformers could have written reads as the model.
    std::ofstream(dir / "config.json", std::ios::trunc) << hf_config_json(config_file_of<Tiny>()).dump(2);
    CHECK_NOTHROW(require_matches<Tiny>(checkpoint_model_config(dir)));
}
