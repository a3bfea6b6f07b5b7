// Hugging Face config.json to and from our model config (include/gemma3/io/hf_config.hpp), and the
// config loaders' answers to the inputs fuzzing found (tests/data/configs/fuzz_findings). Expected
// values come from files transformers wrote and from the hand-written types in configs.hpp.
#include <doctest/doctest.h>

#include <gemma3/core/configs.hpp>
#include <gemma3/io/config_header.hpp>
#include <gemma3/io/hf_config.hpp>

#include "config_test_support.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <type_traits>
#include <vector>

// Written at configure time by gemma3_generate_config() (tests/CMakeLists.txt).
#include "generated_from_hf.hpp"
#include "generated_seed_legacy.hpp"
#include "hf_mqa_untied.hpp"

using namespace gemma3;
using gemma3::test::config_error_of;
using gemma3::test::contains;
using gemma3::test::printable_ascii;
using nlohmann::json;

namespace {

const std::string data_dir = std::string(GEMMA3_TEST_DATA_DIR) + "/configs";
const std::string findings_dir = data_dir + "/fuzz_findings";

std::filesystem::path temp_file(const std::string& name, const std::string& contents) {
    const auto path = std::filesystem::temp_directory_path() / ("gemma3_test_hf_config_" + std::to_string(::getpid()) + "_" + name);
    std::ofstream(path, std::ios::binary) << contents;
    return path;
}

template <class T>
T with_source_and_format_of(T value, const T& other) {
    value.source = other.source;
    value.format = other.format;
    value.warnings = other.warnings;
    return value;
}

// The problem lines of a ConfigError about an HF file must name the user's fields, carry no
// nlohmann prefix and no raw bytes.
void check_clean(const ConfigError& e) {
    const std::string message = e.what();
    INFO(message);
    CHECK_FALSE(contains(message, "[json.exception"));
    CHECK(printable_ascii(message));
    CHECK(message.size() < 4000);
}

}  // namespace

TEST_CASE("a config.json written by transformers reads as the model it describes") {
    const auto hf = load_hf_model_config(data_dir + "/hf/mqa_untied_config.json");
    const auto ours = load_model_config(std::string(GEMMA3_TEST_DATA_DIR) + "/hf/mqa_untied/model_config.json");
    CHECK(hf.format == ConfigFormat::hugging_face);
    CHECK(hf.source == data_dir + "/hf/mqa_untied_config.json");  // the path alone: usable in advice
    CHECK(hf.dtype == "float32");
    CHECK(hf.initializer_range == 0.02);
    auto expected = ours;
    expected.dtype = "float32";  // a run-time setting: the fixture's float64 is not in config.json
    CHECK(with_source_and_format_of(hf, expected) == expected);
}

TEST_CASE("the older layout (rope_theta, sliding_window_pattern) inside text_config reads as the seed's model") {
    const auto hf = load_hf_model_config(data_dir + "/hf/seed_legacy_config.json");
    CHECK_NOTHROW(require_matches<configs::Gemma3_270M>(hf));
    const auto any = load_model_config_any_format(data_dir + "/hf/seed_legacy_config.json");
    CHECK(any == hf);
    // Our own format is told apart.
    const auto seed = load_model_config_any_format(std::string(GEMMA3_SOURCE_DIR) + "/config/model_config.json");
    CHECK(seed.format == ConfigFormat::gemma3);
    CHECK(seed.dtype == "bfloat16");
}

TEST_CASE("hf_config_json writes every field so that it reads back equal") {
    for (auto c : {config_file_of<configs::Gemma3_270M>(), config_file_of<configs::Gemma3_270M_Tied>(),
                   config_file_of<configs::Gemma3Tiny>()}) {
        c.initializer_range = 0.01;
        c.rms_norm_eps = 1e-5;
        const json hf = hf_config_json(c);
        CHECK(hf.at("max_position_embeddings") == c.context_length);
        CHECK(hf.at("rope_parameters").at("full_attention").at("rope_theta") == c.rope_base);
        CHECK(hf.at("rope_local_base_freq") == c.rope_local_base);
        CHECK(hf.at("query_pre_attn_scalar").is_number_integer());  // transformers declares it an int
        const auto back = model_config_from_hf_json(hf, "config.json");
        CHECK(with_source_and_format_of(back, c) == c);
    }
}

TEST_CASE("finding 5: query_pre_attn_scalar 1e300 is written as a number, not cast to an integer") {
    const auto c = load_model_config(findings_dir + "/config_model_qpas_1e300_hf_config_json_ub.json");
    const json hf = hf_config_json(c);
    CHECK(hf.at("query_pre_attn_scalar").is_number_float());
    CHECK(hf.at("query_pre_attn_scalar").get<double>() == 1e300);
    CHECK(model_config_from_hf_json(hf, "config.json").query_pre_attn_scalar == 1e300);
    auto fraction = c;
    fraction.query_pre_attn_scalar = 64.5;
    CHECK(hf_config_json(fraction).at("query_pre_attn_scalar") == 64.5);
}

TEST_CASE("finding 1: a sliding_window_pattern that is zero, fractional or too large is a config error") {
    for (const char* name : {"zero", "2pow32", "huge", "half"}) {
        const std::string path = findings_dir + "/config_hf_sliding_window_pattern_" + name + ".json";
        INFO(path);
        const auto e = config_error_of([&] { (void)load_hf_model_config(path); });
        check_clean(e);
        CHECK(contains(e.what(), path + ": field \"sliding_window_pattern\": value "));
        CHECK(contains(e.what(), "expected a positive integer"));
    }
    const auto zero = config_error_of([&] { (void)load_hf_model_config(findings_dir + "/config_hf_sliding_window_pattern_zero.json"); });
    CHECK(contains(zero.what(), "\"sliding_window_pattern\": value 0 is out of range"));
    const auto half = config_error_of([&] { (void)load_hf_model_config(findings_dir + "/config_hf_sliding_window_pattern_half.json"); });
    CHECK(contains(half.what(), "\"sliding_window_pattern\": value 0.5 is not a whole number"));
}

TEST_CASE("finding 3: num_hidden_layers 2e9 without layer_types is refused without building the pattern") {
    const std::string path = findings_dir + "/config_hf_huge_layer_count.json";
    const auto e = config_error_of([&] { (void)load_hf_model_config(path); });
    check_clean(e);
    CHECK(contains(e.what(), path + ": field \"num_hidden_layers\": value 2000000000 is more than 65536 layers"));
}

TEST_CASE("finding 6: mistyped RoPE fields are config errors naming the field, not nlohmann exceptions") {
    const std::string theta = findings_dir + "/config_hf_rope_theta_string.json";
    auto e = config_error_of([&] { (void)load_hf_model_config(theta); });
    check_clean(e);
    CHECK(contains(e.what(), theta + ": field \"rope_theta\": value \"x\" is a string; expected a number greater than 1"));

    const std::string entry = findings_dir + "/config_hf_rope_parameters_not_object.json";
    e = config_error_of([&] { (void)load_hf_model_config(entry); });
    check_clean(e);
    CHECK(contains(e.what(), entry + ": field \"rope_parameters.full_attention\": value 5 is a number; expected an object"));

    // The same through the json entry point.
    CHECK_THROWS_AS(model_config_from_hf_json(json::parse(R"({"rope_theta":"x"})"), "c.json"), ConfigError);
    CHECK_THROWS_AS(model_config_from_hf_json(json::parse(R"({"rope_parameters":{"full_attention":5}})"), "c.json"),
                    ConfigError);
    CHECK_THROWS_AS(model_config_from_hf_json(json::parse(R"({"rope_parameters":[1]})"), "c.json"), ConfigError);
    CHECK_THROWS_AS(model_config_from_hf_json(json::parse(R"({"rope_parameters":{"full_attention":{"rope_type":7}}})"),
                                              "c.json"),
                    ConfigError);
    CHECK_THROWS_AS(model_config_from_hf_json(json::parse(R"({"text_config":"x"})"), "c.json"), ConfigError);
    CHECK_THROWS_AS(model_config_from_hf_json(json::parse(R"([1, 2])"), "c.json"), ConfigError);
    CHECK_THROWS_AS(model_config_from_hf_json(json::parse(R"({"use_bidirectional_attention":"yes"})"), "c.json"),
                    ConfigError);
}

TEST_CASE("finding 10: errors about a config.json name its own fields, quote short prefixes and no raw bytes") {
    json hf = hf_config_json(config_file_of<configs::Gemma3Tiny>());
    hf["max_position_embeddings"] = "1024";
    hf["num_key_value_heads"] = 3;  // 4 heads are not a multiple of 3
    hf["sliding_window"] = 4096;    // not smaller than the context (1024 once fixed)
    hf["final_logit_softcapping"] = std::string(1 << 20, 'x');
    hf["rope_parameters"]["sliding_attention"]["rope_type"] = "linear\xff";
    auto e = config_error_of([&] { (void)model_config_from_hf_json(hf, "config.json"); });
    check_clean(e);
    const std::string message = e.what();
    INFO(message);
    CHECK(contains(message, "config.json: field \"max_position_embeddings\": value \"1024\" is a string; expected a positive integer"));
    CHECK(contains(message, "config.json: field \"num_attention_heads\": value 4 is not a multiple of num_key_value_heads (3)"));
    CHECK(contains(message, "config.json: field \"final_logit_softcapping\": is set (\"xxxx"));
    CHECK(contains(message, "field \"rope_parameters.sliding_attention.rope_type\": value \"linear\\ufffd\" is not implemented"));
    CHECK_FALSE(contains(message, "context_length"));
    CHECK_FALSE(contains(message, "n_kv_groups"));

    hf = hf_config_json(config_file_of<configs::Gemma3Tiny>());
    hf["sliding_window"] = 4096;
    hf.erase("hidden_size");
    e = config_error_of([&] { (void)model_config_from_hf_json(hf, "config.json"); });
    CHECK(e.problems() == std::vector<std::string>{
                              "config.json: field \"hidden_size\": missing; expected a positive integer",
                              "config.json: field \"sliding_window\": value 4096 is not smaller than "
                              "max_position_embeddings (1024)"});

    // Inside text_config the names carry the prefix.
    json nested = {{"model_type", "gemma3"}, {"text_config", hf_config_json(config_file_of<configs::Gemma3Tiny>())}};
    nested["text_config"]["head_dim"] = 15;
    e = config_error_of([&] { (void)model_config_from_hf_json(nested, "config.json"); });
    CHECK(e.problems() == std::vector<std::string>{"config.json: field \"text_config.head_dim\": value 15 is odd; "
                                                   "expected an even number (RoPE rotates pairs of dimensions)"});
}

TEST_CASE("require_matches names a config.json's own fields and advice that works on it") {
    const std::string path = data_dir + "/hf/mqa_untied_config.json";
    const auto hf = load_hf_model_config(path);
    const auto e = config_error_of([&] { require_matches<configs::Gemma3Tiny>(hf); });
    const std::string message = e.what();
    INFO(message);
    CHECK(contains(message, path + ": field \"max_position_embeddings\": the file has 64, the compiled type "
                                   "gemma3::configs::Gemma3Tiny has 1024"));
    CHECK(contains(message, path + ": field \"intermediate_size\": the file has 128"));
    CHECK_FALSE(contains(message, "\"hidden_size\""));  // 64 in both
    CHECK(contains(message, "gemma3_generate_config(NAME MyConfig JSON " + path + " OUTPUT"));
    CHECK_FALSE(contains(message, "converted"));
    CHECK(contains(message, "lib/cmake/gemma3/gemma3GenerateConfig.cmake under the install prefix"));
}

TEST_CASE("finding 2: deeply nested JSON and oversized files are config errors, not stack overflows") {
    const std::string deep = "{\"vocab_size\":" + std::string(200000, '[') + std::string(200000, ']') + "}";
    const auto ours = temp_file("deep_model.json", deep);
    auto e = config_error_of([&] { (void)load_model_config(ours); });
    CHECK(std::string(e.what()) == ours.string() + ": is nested deeper than 64 levels, too deep for this JSON file");
    const auto hf = temp_file("deep_hf.json", "{\"hidden_size\":" + deep + "}");
    e = config_error_of([&] { (void)load_hf_model_config(hf); });
    CHECK(contains(e.what(), "is nested deeper than 64 levels"));
    e = config_error_of([&] { (void)load_model_config_any_format(hf); });
    CHECK(contains(e.what(), "is nested deeper than 64 levels"));
    std::filesystem::remove(ours);
    std::filesystem::remove(hf);

    // A nested value within the limit is quoted briefly.
    json shallow = hf_config_json(config_file_of<configs::Gemma3Tiny>());
    json value = 1;
    for (int i = 0; i < 60; ++i) value = json::array({value});
    shallow["vocab_size"] = value;
    e = config_error_of([&] { (void)model_config_from_hf_json(shallow, "config.json"); });
    CHECK(e.problems() == std::vector<std::string>{"config.json: field \"vocab_size\": value " + std::string(60, '[') +
                                                   "... is an array; expected a positive integer"});

    // Hugging Face's reader has the same size cap as ours.
    const auto huge = temp_file("huge_hf.json", "");
    std::filesystem::resize_file(huge, std::uintmax_t{64} << 20);
    e = config_error_of([&] { (void)load_hf_model_config(huge); });
    std::filesystem::remove(huge);
    CHECK(std::string(e.what()) ==
          huge.string() + ": is larger than 16777216 bytes, too large for a Hugging Face config JSON file");
}

// --- gemma3_generate_config from Hugging Face's format (tests/CMakeLists.txt) --------------------


TEST_CASE("gemma3_generate_config builds the same types from a config.json as from our model config") {
    static_assert(std::is_same_v<fixtures::GeneratedFromHf::layer_types, fixtures::HF_mqa_untied::layer_types>);
    static_assert(std::is_same_v<configs::GeneratedSeedLegacy::layer_types, configs::Gemma3_270M::layer_types>);
    CHECK(config_name<fixtures::GeneratedFromHf>() == "gemma3::fixtures::GeneratedFromHf");
    const auto from_hf = config_file_of<fixtures::GeneratedFromHf>();
    const auto from_ours = config_file_of<fixtures::HF_mqa_untied>();
    CHECK(with_source_and_format_of(from_hf, from_ours) == from_ours);
    const auto legacy = config_file_of<configs::GeneratedSeedLegacy>();
    const auto seed = config_file_of<configs::Gemma3_270M>();
    CHECK(with_source_and_format_of(legacy, seed) == seed);
    CHECK_NOTHROW(require_matches<fixtures::GeneratedFromHf>(load_hf_model_config(data_dir + "/hf/mqa_untied_config.json")));
}

TEST_CASE("the generated header spells every architecture field of the table") {
    const std::string header = config_type_header(config_file_of<configs::Gemma3Tiny>(), "T", "a::b", "x.json");
#define GEMMA3_TEST_SPELLED(type, name, ...) CHECK(contains(header, " " #name " = "));
    GEMMA3_MODEL_ARCHITECTURE_FIELDS(GEMMA3_TEST_SPELLED)
#undef GEMMA3_TEST_SPELLED
    CHECK(contains(header, "    static constexpr double rms_norm_eps = 1e-06;\n"));
    CHECK(contains(header, "    static constexpr int vocab_size = 512;\n"));
    CHECK(contains(header, "namespace a::b {"));
    CHECK_THROWS_AS(config_type_header(config_file_of<configs::Gemma3Tiny>(), "1T", "a", "x"), ConfigError);
    CHECK_THROWS_AS(config_type_header(config_file_of<configs::Gemma3Tiny>(), "T", "a::", "x"), ConfigError);
    CHECK_THROWS_AS(config_type_header(config_file_of<configs::Gemma3Tiny>(), "T", "a; int x", "x"), ConfigError);
}

TEST_CASE("finding 10: an unknown key of our own format is quoted briefly and without raw bytes") {
    json j = to_json(config_file_of<configs::Gemma3Tiny>());
    j[std::string(1 << 20, 'k')] = 1;
    j["bad\xff\x01key"] = 2;
    const auto e = config_error_of([&] { (void)parse_model_config(j, "m.json"); });
    check_clean(e);
    REQUIRE(e.problems().size() == 2);
    CHECK(e.problems()[0] == "m.json: field \"bad\\ufffd\\u0001key\": unknown field; the known fields are " +
                                 detail::quoted_list(model_config_fields, " and "));
    CHECK(e.problems()[1] == "m.json: field \"" + std::string(59, 'k') + "...\": unknown field");
}
