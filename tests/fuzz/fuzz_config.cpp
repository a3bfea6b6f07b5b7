// Fuzz harness: the config loaders. Each input is tried as a model_config.json
// (load_model_config), a training_config.json (load_training_config) and a Hugging Face
// config.json (checkpoint_model_config of a directory holding only it).
// Promises checked:
//   - each loader either succeeds or throws its documented error (ConfigError; CheckpointError too
//     for the checkpoint directory); anything else escapes and ends the run;
//   - what loads round-trips: to_json and back gives the same config;
//   - a loaded model config with q/k norms survives Hugging Face's format: hf_config_json and
//     model_config_from_hf_json give back the same architecture (issue 13, finding 5).
#include "fuzz_support.hpp"

#include <gemma3/io/checkpoint.hpp>
#include <gemma3/io/config_file.hpp>

namespace {

using namespace gemma3;

// The fields that define the architecture (dtype and init do not travel through HF's format).
nlohmann::json architecture(const ModelConfigFile& c) {
    nlohmann::json j = to_json(c);
    j.erase("dtype");
    j.erase("init");
    return j;
}

void check_model_round_trips(const ModelConfigFile& c) {
    const nlohmann::json j = to_json(c);
    const ModelConfigFile again = parse_model_config(j, "round trip");
    fuzz::check(to_json(again) == j, "model config changed through to_json: " + j.dump());
    if (!c.qk_norm) return;  // Hugging Face's Gemma 3 always has q/k norms; no HF config is written
    const ModelConfigFile from_hf = model_config_from_hf_json(hf_config_json(c), "hf round trip");
    fuzz::check(architecture(from_hf) == architecture(c),
                "model config changed through Hugging Face's config.json: " + j.dump() + " became " +
                    to_json(from_hf).dump());
}

}  // namespace

std::vector<std::pair<std::string, std::string>> gemma3::fuzz::generated_seeds() {
    // Issue 13, finding 2: nesting deep enough to overflow a recursive dump() (400 KB).
    const std::string deep = "{\"vocab_size\":" + std::string(200000, '[') + std::string(200000, ']') + "}";
    // The same in an HF config field.
    const std::string deep_hf = "{\"num_hidden_layers\":2,\"rope_parameters\":" + std::string(100000, '[') +
                                std::string(100000, ']') + "}";
    // Issue 13, finding 10: a 1 MB value must not become a 1 MB message.
    const std::string long_string = "{\"final_logit_softcapping\":\"" + std::string(1 << 20, 'x') + "\"}";
    return {{"deep_nesting_model_config.json", deep},
            {"deep_nesting_hf_config.json", deep_hf},
            {"config_hf_final_logit_softcapping_1mb_string.json", long_string}};
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace gemma3;
    const std::string_view text = fuzz::as_text(data, size);
    const auto path = fuzz::input_file("config.json", text);
    try {
        check_model_round_trips(load_model_config(path));
    } catch (const ConfigError& e) {
        fuzz::check(std::string_view(e.what()).size() < 64 * 1024, "a model config error message is huge");
    }
    try {
        const TrainingConfig t = load_training_config(path);
        const nlohmann::json j = to_json(t);
        fuzz::check(to_json(parse_training_config(j, "round trip")) == j, "training config changed through to_json");
    } catch (const ConfigError& e) {
        fuzz::check(std::string_view(e.what()).size() < 64 * 1024, "a training config error message is huge");
    }
    const auto dir = fuzz::scratch_dir() / "hf";
    std::filesystem::create_directories(dir);
    fuzz::write_file(dir / "config.json", text);
    try {
        check_model_round_trips(checkpoint_model_config(dir));
    } catch (const ConfigError& e) {
        fuzz::check(std::string_view(e.what()).size() < 64 * 1024, "an HF config error message is huge");
    } catch (const CheckpointError& e) {
        fuzz::check(std::string_view(e.what()).size() < 64 * 1024, "an HF config error message is huge");
    }
    return 0;
}
