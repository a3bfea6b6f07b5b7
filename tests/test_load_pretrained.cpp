// load_pretrained (checkpoint.hpp): a checkpoint directory in transformers' format (config.json as
// transformers' save_pretrained writes it: tests/data/hf/tiny_transformers_config, from
// tools/make_hf_config_fixture.py) or ours (gemma3_config.json) loads when its config is the
// compiled type's, and is refused with every differing field named when it is not, before any
// weight is read. A bare safetensors file still loads with Model::load.
#include <doctest/doctest.h>

#include <gemma3/io/checkpoint.hpp>
#include <gemma3/core/configs.hpp>
#include <gemma3/model.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

using namespace gemma3;
namespace fs = std::filesystem;
using Tiny = configs::Gemma3Tiny;
using TinyModel = Model<Tiny, Cpu<float>>;

namespace {

fs::path fresh_dir(const std::string& name) {
    const auto dir = fs::temp_directory_path() / ("gemma3_test_load_pretrained_" + std::to_string(::getpid())) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

// A transformers-format directory: its config.json and weights of a freshly initialised model.
fs::path transformers_directory(const std::string& name, const TinyModel& model) {
    const auto dir = fresh_dir(name);
    fs::copy_file(fs::path(GEMMA3_TEST_DATA_DIR) / "hf" / "tiny_transformers_config" / "config.json", dir / "config.json");
    std::vector<TensorToWrite> tensors;
    for (const auto& t : parameter_tensors<Tiny>()) {
        tensors.push_back({t.name, t.shape, std::span<const float>(model.parameters.data() + t.offset, t.numel()), DType::F32});
    }
    write_safetensors(dir / "model.safetensors", tensors);
    return dir;
}

bool same_weights(const TinyModel& a, const TinyModel& b) {
    return std::memcmp(a.parameters.data(), b.parameters.data(), a.parameters.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("load_pretrained loads a transformers directory whose config is the compiled type's") {
    auto saved = std::make_unique<TinyModel>();
    saved->init(InitScheme::hf, 0.02, 3);
    const auto dir = transformers_directory("match", *saved);
    auto loaded = std::make_unique<TinyModel>();
    load_pretrained(*loaded, dir);
    CHECK(same_weights(*saved, *loaded));
}

TEST_CASE("load_pretrained names every field where the config differs from the compiled type, and reads no weight") {
    auto saved = std::make_unique<TinyModel>();
    saved->init(InitScheme::hf, 0.02, 3);
    const auto dir = transformers_directory("mismatch", *saved);
    // Differences the tensor shapes cannot show: the window, a layer's attention kind, a RoPE base.
    auto config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
    config["sliding_window"] = 16;
    config["layer_types"][1] = "full_attention";
    config["rope_parameters"]["full_attention"]["rope_theta"] = 500000.0;
    std::ofstream(dir / "config.json") << config.dump(2);

    auto target = std::make_unique<TinyModel>();
    target->init(InitScheme::hf, 0.02, 4);
    const std::vector<float> before(target->parameters.data(), target->parameters.data() + target->parameters.size());
    try {
        load_pretrained(*target, dir);
        FAIL("a differing config was accepted");
    } catch (const CheckpointError& e) {
        const std::string message = e.what();
        CAPTURE(message);
        CHECK(message.find(dir.string()) != std::string::npos);
        CHECK(message.find("sliding_window") != std::string::npos);
        CHECK(message.find("layer_types[1]") != std::string::npos);
        CHECK(message.find("500000") != std::string::npos);
    }
    CHECK(std::memcmp(before.data(), target->parameters.data(), before.size() * sizeof(float)) == 0);  // untouched

    // The weights alone still load, unchecked, from the bare file.
    load_weights(dir / "model.safetensors", target->parameters);
    CHECK(same_weights(*saved, *target));
    CHECK_THROWS_WITH_AS(load_pretrained(*target, dir / "model.safetensors"), doctest::Contains("not a directory"),
                         CheckpointError);
}

TEST_CASE("load_pretrained prefers our gemma3_config.json and checks it the same way") {
    auto saved = std::make_unique<TinyModel>();
    saved->init(InitScheme::hf, 0.02, 3);
    const auto dir = transformers_directory("ours", *saved);
    auto ours = load_model_config(fs::path(GEMMA3_SOURCE_DIR) / "config" / "tiny_model_config.json");
    ours.rms_norm_eps = 1e-5;
    std::ofstream(dir / "gemma3_config.json") << to_json(ours).dump(2);
    auto target = std::make_unique<TinyModel>();
    CHECK_THROWS_WITH_AS(load_pretrained(*target, dir), doctest::Contains("rms_norm_eps"), CheckpointError);
}
