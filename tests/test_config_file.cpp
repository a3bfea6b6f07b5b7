// Run-time config files: loading, validation messages, comparison with the compiled types, and
// the CMake generator. Expected values come from the seed's documented configs (the seed README and
// docs/model.md §2.2, §8) and from the hand-written types in configs.hpp, never from the code under test.
#include <doctest/doctest.h>

#include <gemma3/io/config_file.hpp>
#include <gemma3/core/configs.hpp>

#include "config_test_support.hpp"

#include <filesystem>
#include <fstream>
#include <string>
#include <type_traits>
#include <vector>

// Written at configure time by gemma3_generate_config() (tests/CMakeLists.txt).
#include "generated_seed.hpp"
#include "generated_tiny.hpp"

using namespace gemma3;
using gemma3::test::config_error_of;
using gemma3::test::contains;
using nlohmann::json;

namespace {

const std::string source_dir = GEMMA3_SOURCE_DIR;
const std::string data_dir = std::string(GEMMA3_TEST_DATA_DIR) + "/configs";

void check_every_line_names(const ConfigError& e, const std::string& file) {
    for (const auto& line : e.problems()) {
        INFO(line);
        CHECK(line.starts_with(file + ": "));
    }
}

std::vector<AttentionKind> repeating(int layers, int period) {
    std::vector<AttentionKind> kinds;
    for (int i = 0; i < layers; ++i) {
        kinds.push_back((i + 1) % period == 0 ? AttentionKind::full : AttentionKind::sliding);
    }
    return kinds;
}

template <class T>
T with_source_and_warnings_of(T value, const T& other) {
    value.source = other.source;
    value.warnings = other.warnings;
    return value;
}

}  // namespace

TEST_CASE("the shipped model_config.json loads with the seed's values") {
    const auto m = load_model_config(source_dir + "/config/model_config.json");
    CHECK(m.vocab_size == 50257);
    CHECK(m.context_length == 32768);
    CHECK(m.emb_dim == 640);
    CHECK(m.n_heads == 4);
    CHECK(m.n_layers == 18);
    CHECK(m.hidden_dim == 2048);
    CHECK(m.head_dim == 256);
    CHECK(m.qk_norm);
    CHECK(m.n_kv_groups == 1);
    CHECK(m.query_pre_attn_scalar == 256.0);
    CHECK(m.rope_local_base == 10000.0);
    CHECK(m.rope_base == 1000000.0);
    CHECK(m.sliding_window == 512);
    CHECK(m.layer_types == repeating(18, 6));  // full at layers 6, 12 and 18
    CHECK(m.dtype == "bfloat16");
    // Defaults of the fields the seed's file does not have.
    CHECK_FALSE(m.tie_word_embeddings);
    CHECK(m.rms_norm_eps == 1e-6);
    CHECK(m.initializer_range == 0.02);
    CHECK(m.init == "seed");
    CHECK(m.source == source_dir + "/config/model_config.json");
    CHECK(m.warnings.empty());
}

TEST_CASE("the shipped training_config.json loads with the seed's values and defaults") {
    const auto t = load_training_config(source_dir + "/config/training_config.json");
    CHECK(t.learning_rate == 1e-4);
    CHECK(t.warmup_steps == 1000);
    CHECK(t.min_lr == 5e-4);
    CHECK(t.max_iters == 150000);
    CHECK(t.eval_iters == 500);
    CHECK(t.batch_size == 32);
    CHECK(t.block_size == 128);
    CHECK(t.gradient_accumulation_steps == 32);
    CHECK(t.device == "cuda");
    CHECK(t.dtype == "bfloat16");
    CHECK(t.ptdtype == "float32");
    // The seed's AdamW(betas=(0.9, 0.95), eps=1e-9, weight_decay=0.1), clip 0.5, LinearLR default
    // start factor 1/3, eval_iters as both interval and batch count, torch.manual_seed(42).
    CHECK(t.beta1 == 0.9);
    CHECK(t.beta2 == 0.95);
    CHECK(t.adam_eps == 1e-9);
    CHECK(t.weight_decay == 0.1);
    CHECK(t.grad_clip == 0.5);
    CHECK(t.warmup_start_factor == 1.0 / 3.0);
    CHECK(t.eval_interval == 500);
    CHECK(t.eval_batches == 500);
    CHECK(t.seed == 42);
    CHECK(t.log_interval == 1);
}

TEST_CASE("the seed's min_lr above learning_rate gives a warning that the cosine phase rises") {
    const auto t = load_training_config(source_dir + "/config/training_config.json");
    REQUIRE(t.warnings.size() == 1);
    const std::string& w = t.warnings[0];
    INFO(w);
    CHECK(w.starts_with(source_dir + "/config/training_config.json: field \"min_lr\""));
    CHECK(contains(w, "0.0005 is greater than learning_rate (0.0001)"));
    CHECK(contains(w, "raises the learning rate from 0.0001 to 0.0005"));
    CHECK(contains(w, "remaining 149000 iterations"));  // 150000 - 1000 warmup (docs/model.md §8.5)

    // A decaying schedule gets no warning.
    const auto sane = load_training_config(data_dir + "/training_all_fields.json");
    CHECK(sane.warnings.empty());
}

TEST_CASE("the shipped tiny_model_config.json loads with the values of configs::Gemma3Tiny") {
    const auto m = load_model_config(source_dir + "/config/tiny_model_config.json");
    CHECK(m.vocab_size == 512);
    CHECK(m.context_length == 1024);
    CHECK(m.emb_dim == 64);
    CHECK(m.n_heads == 4);
    CHECK(m.n_layers == 6);
    CHECK(m.hidden_dim == 192);
    CHECK(m.head_dim == 16);
    CHECK(m.qk_norm);
    CHECK(m.n_kv_groups == 1);
    CHECK(m.query_pre_attn_scalar == 16.0);
    CHECK(m.rope_local_base == 10000.0);
    CHECK(m.rope_base == 1000000.0);
    CHECK(m.sliding_window == 8);
    CHECK(m.layer_types == repeating(6, 3));
    CHECK(m.dtype == "float32");
    CHECK(m.warnings.empty());
}

TEST_CASE("the shipped model files match their compiled config types") {
    const auto seed = load_model_config(source_dir + "/config/model_config.json");
    const auto tiny = load_model_config(source_dir + "/config/tiny_model_config.json");
    CHECK_NOTHROW(require_matches<configs::Gemma3_270M>(seed));
    CHECK_NOTHROW(require_matches<configs::Gemma3Tiny>(tiny));
}

TEST_CASE("model_config.json against configs::Gemma3Tiny lists every differing field and how to build a match") {
    const std::string file = source_dir + "/config/model_config.json";
    const auto seed = load_model_config(file);
    const auto e = config_error_of([&] { require_matches<configs::Gemma3Tiny>(seed); });
    // Differences worked out by hand from the two configs: n_heads, qk_norm, n_kv_groups, the RoPE
    // bases, tie_word_embeddings and rms_norm_eps agree; the first six layer kinds differ only at
    // index 2 (sliding in the seed, full in the tiny model's period-3 pattern).
    const std::string type = "the compiled type gemma3::configs::Gemma3Tiny has ";
    const std::vector<std::string> expected{
        file + ": field \"vocab_size\": the file has 50257, " + type + "512",
        file + ": field \"context_length\": the file has 32768, " + type + "1024",
        file + ": field \"emb_dim\": the file has 640, " + type + "64",
        file + ": field \"n_layers\": the file has 18, " + type + "6",
        file + ": field \"hidden_dim\": the file has 2048, " + type + "192",
        file + ": field \"head_dim\": the file has 256, " + type + "16",
        file + ": field \"query_pre_attn_scalar\": the file has 256.0, " + type + "16.0",
        file + ": field \"sliding_window\": the file has 512, " + type + "8",
        file + ": field \"layer_types\": the file has 18 entries, " + type + "6 entries",
        file + ": field \"layer_types[2]\": the file has \"sliding_attention\", " + type + "\"full_attention\"",
    };
    CHECK(e.problems() == expected);
    const std::string message = e.what();
    for (const auto& line : expected) CHECK(contains(message, line));
    CHECK(contains(message, "gemma3_generate_config(NAME MyConfig JSON " + file + " OUTPUT"));
    CHECK(contains(message, "cmake/gemma3GenerateConfig.cmake"));
    CHECK(contains(message, "include/gemma3/core/configs.hpp"));
}

TEST_CASE("require_matches sees tie_word_embeddings and ignores the run-time settings") {
    const auto seed = load_model_config(source_dir + "/config/model_config.json");
    const auto e = config_error_of([&] { require_matches<configs::Gemma3_270M_Tied>(seed); });
    CHECK(e.problems() ==
          std::vector<std::string>{seed.source + ": field \"tie_word_embeddings\": the file has false, the compiled "
                                                 "type gemma3::configs::Gemma3_270M_Tied has true"});

    auto tiny = load_model_config(source_dir + "/config/tiny_model_config.json");
    tiny.dtype = "float64";
    tiny.init = "hf";
    tiny.initializer_range = 0.5;
    CHECK_NOTHROW(require_matches<configs::Gemma3Tiny>(tiny));
    tiny.rms_norm_eps = 1e-5;
    CHECK_THROWS_AS(require_matches<configs::Gemma3Tiny>(tiny), ConfigError);
}

TEST_CASE("config_file_of gives the compiled values with dtype float32 and init seed") {
    const auto c = config_file_of<configs::Gemma3_270M>();
    CHECK(c.vocab_size == 50257);
    CHECK(c.emb_dim == 640);
    CHECK(c.head_dim == 256);
    CHECK(c.layer_types == repeating(18, 6));
    CHECK(c.dtype == "float32");
    CHECK(c.init == "seed");
    CHECK(c.source == "gemma3::configs::Gemma3_270M");
    // The shipped file differs only in dtype (bfloat16) and source.
    auto file = load_model_config(source_dir + "/config/model_config.json");
    file.dtype = "float32";
    CHECK(with_source_and_warnings_of(file, c) == c);
}

// --- Generated config types -------------------------------------------------------------------

// Every constant and the layer_types type list of two config types, one static_assert each so a
// failure names the field.
#define GEMMA3_SAME_CONFIG(A, B)                                                      \
    static_assert(A::vocab_size == B::vocab_size);                                    \
    static_assert(A::context_length == B::context_length);                            \
    static_assert(A::emb_dim == B::emb_dim);                                          \
    static_assert(A::n_heads == B::n_heads);                                          \
    static_assert(A::n_layers == B::n_layers);                                        \
    static_assert(A::hidden_dim == B::hidden_dim);                                    \
    static_assert(A::head_dim == B::head_dim);                                        \
    static_assert(A::qk_norm == B::qk_norm);                                          \
    static_assert(A::n_kv_groups == B::n_kv_groups);                                  \
    static_assert(A::query_pre_attn_scalar == B::query_pre_attn_scalar);              \
    static_assert(A::rope_local_base == B::rope_local_base);                          \
    static_assert(A::rope_base == B::rope_base);                                      \
    static_assert(A::sliding_window == B::sliding_window);                            \
    static_assert(A::tie_word_embeddings == B::tie_word_embeddings);                  \
    static_assert(A::rms_norm_eps == B::rms_norm_eps);                                \
    static_assert(std::is_same_v<typename A::layer_types, typename B::layer_types>)

GEMMA3_SAME_CONFIG(configs::GeneratedTiny, configs::Gemma3Tiny);
GEMMA3_SAME_CONFIG(configs::GeneratedSeed, configs::Gemma3_270M);

TEST_CASE("gemma3_generate_config writes the types of configs.hpp from the shipped JSON files") {
    CHECK(config_name<configs::GeneratedTiny>() == "gemma3::configs::GeneratedTiny");
    CHECK(config_name<configs::GeneratedSeed>() == "gemma3::configs::GeneratedSeed");

    const auto generated_tiny = config_file_of<configs::GeneratedTiny>();
    const auto tiny = config_file_of<configs::Gemma3Tiny>();
    CHECK(with_source_and_warnings_of(generated_tiny, tiny) == tiny);
    const auto generated_seed = config_file_of<configs::GeneratedSeed>();
    const auto seed = config_file_of<configs::Gemma3_270M>();
    CHECK(with_source_and_warnings_of(generated_seed, seed) == seed);

    CHECK_NOTHROW(require_matches<configs::GeneratedTiny>(load_model_config(source_dir + "/config/tiny_model_config.json")));
    CHECK_NOTHROW(require_matches<configs::GeneratedSeed>(load_model_config(source_dir + "/config/model_config.json")));
}

// --- Bad files ----------------------------------------------------------------------------------

struct BadFile {
    const char* name;
    std::size_t problem_count;
    std::vector<std::string> phrases;  // each must appear in the message
};

TEST_CASE("bad model files are rejected with every problem named") {
    const std::vector<BadFile> cases{
        {"model_missing_emb_dim.json", 1, {"field \"emb_dim\": missing; expected a positive integer"}},
        {"model_heads_not_multiple.json", 1, {"field \"n_heads\": value 6 is not a multiple of n_kv_groups (4)"}},
        {"model_layer_types_short.json", 1, {"field \"layer_types\": has 5 entries; expected exactly n_layers (6)"}},
        {"model_layer_kind_unknown.json", 1,
         {"field \"layer_types[2]\": value \"global_attention\" is not a layer kind; expected "
          "\"sliding_attention\" or \"full_attention\""}},
        {"model_layer_types_not_array.json", 1,
         {"field \"layer_types\": value \"sliding_attention\" is a string; expected an array of"}},
        {"model_window_not_smaller.json", 1,
         {"field \"sliding_window\": value 1024 is not smaller than context_length (1024)"}},
        {"model_string_integer.json", 1, {"field \"emb_dim\": value \"64\" is a string; expected a positive integer"}},
        {"model_fractional_integer.json", 1,
         {"field \"n_layers\": value 6.5 is not a whole number; expected a positive integer"}},
        {"model_bool_integer.json", 1, {"field \"vocab_size\": value true is a boolean; expected a positive integer"}},
        {"model_negative_integer.json", 1,
         {"field \"hidden_dim\": value -192 is out of range; expected a positive integer"}},
        {"model_integer_too_large.json", 1,
         {"field \"context_length\": value 10000000000.0 is out of range; expected a positive integer"}},
        {"model_qk_norm_string.json", 1, {"field \"qk_norm\": value \"true\" is a string; expected true or false"}},
        {"model_odd_head_dim.json", 1, {"field \"head_dim\": value 15 is odd; expected an even number"}},
        {"model_head_dim_indivisible.json", 1,
         {"field \"head_dim\": not set, so it would be emb_dim / n_heads, but emb_dim (66) is not a multiple of "
          "n_heads (4)"}},
        {"model_head_dim_default_odd.json", 1,
         {"field \"head_dim\": not set, so it is emb_dim / n_heads = 60 / 4 = 15, which is odd"}},
        {"model_bad_dtype.json", 1,
         {"field \"dtype\": value \"bf16\" is not allowed; expected one of \"bfloat16\", \"float32\", "
          "\"float16\" or \"float64\""}},
        {"model_rope_base_one.json", 1,
         {"field \"rope_base\": value 1 is out of range; expected a number greater than 1"}},
        {"model_zero_eps.json", 1, {"field \"rms_norm_eps\": value 0.0 is out of range; expected a positive number"}},
        {"model_bad_init.json", 1, {"field \"init\": value \"xavier\" is not allowed; expected one of \"seed\" or \"hf\""}},
        {"model_misspelt_optional_field.json", 1,
         {"field \"rms_norm_epsilon\": unknown field; did you mean \"rms_norm_eps\"?"}},
        {"model_hugging_face_name.json", 2,
         {"field \"hidden_size\": unknown field; this format calls it \"emb_dim\"", "field \"emb_dim\": missing"}},
        {"model_duplicate_field.json", 1, {"field \"n_heads\": appears more than once"}},
        {"model_not_object.json", 1, {"expected a JSON object with the model fields at the top level, found an array"}},
        {"model_empty.json", 1, {"not valid JSON", "line 1, column 1"}},
        // The missing comma after "emb_dim": 64 is noticed at the end of the next key, "n_heads"
        // (line 5, columns 3 to 11).
        {"model_syntax_error.json", 1, {"not valid JSON: parse error at line 5, column 11"}},
        {"model_number_overflow.json", 1, {"not valid JSON", "1e400"}},
        {"model_many_problems.json",
         11,
         {"field \"vocab_size\": missing",
          "field \"emb_dim\": value \"64\" is a string",
          "field \"n_heads\": value 6 is not a multiple of n_kv_groups (4)",
          "field \"head_dim\": value 15 is odd",
          "field \"qk_norm\": value 1 is a number; expected true or false",
          "field \"rope_base\": value 0.5 is out of range",
          "field \"sliding_window\": value 2048 is not smaller than context_length (1024)",
          "field \"layer_types[1]\": value \"local_attention\" is not a layer kind",
          "field \"layer_types\": has 5 entries; expected exactly n_layers (6)",
          "field \"dtype\": value \"bf16\" is not allowed",
          "field \"n_layer\": unknown field; did you mean \"n_layers\"?"}},
    };
    for (const auto& c : cases) {
        const std::string path = data_dir + "/" + c.name;
        const auto e = config_error_of([&] { (void)load_model_config(path); });
        const std::string message = e.what();
        INFO(c.name, "\n", message);
        CHECK(e.problems().size() == c.problem_count);
        check_every_line_names(e, path);
        for (const auto& phrase : c.phrases) CHECK(contains(message, phrase));
    }
}

TEST_CASE("bad training files are rejected with every problem named") {
    const std::vector<BadFile> cases{
        {"training_warmup_exceeds_max_iters.json", 1,
         {"field \"warmup_steps\": value 200000 is larger than max_iters (150000)"}},
        {"training_beta2_one.json", 1, {"field \"beta2\": value 1.0 is out of range; expected a number in [0, 1)"}},
        {"training_bad_device.json", 1,
         {"field \"device\": value \"gpu\" is not allowed; expected one of \"cpu\" or \"cuda\""}},
        {"training_zero_learning_rate.json", 1,
         {"field \"learning_rate\": value 0 is out of range; expected a positive number"}},
        {"training_string_learning_rate.json", 1,
         {"field \"learning_rate\": value \"1e-4\" is a string; expected a positive number"}},
        {"training_missing_batch_size.json", 1, {"field \"batch_size\": missing; expected a positive integer"}},
        {"training_bad_ptdtype.json", 1,
         {"field \"ptdtype\": value \"float64\" is not allowed; expected one of \"float32\", \"bfloat16\" or "
          "\"float16\""}},
        {"training_misspelt_optional_field.json", 1,
         {"field \"grad_clipping\": unknown field; did you mean \"grad_clip\"?"}},
        {"training_start_factor_zero.json", 1,
         {"field \"warmup_start_factor\": value 0 is out of range; expected a number in (0, 1]"}},
        {"training_many_problems.json",
         10,
         {"field \"learning_rate\": value -0.0001 is out of range",
          "field \"warmup_steps\": value 3.5 is not a whole number",
          "field \"min_lr\": value -1 is out of range",
          "field \"max_iters\": value 0 is out of range",
          "field \"batch_size\": value \"32\" is a string",
          "field \"device\": value \"tpu\" is not allowed",
          "field \"beta1\": value 1.5 is out of range",
          "field \"grad_clip\": value -0.5 is out of range",
          "field \"eval_interval\": value 0 is out of range",
          "field \"lr\": unknown field; this format calls it \"learning_rate\""}},
    };
    for (const auto& c : cases) {
        const std::string path = data_dir + "/" + c.name;
        const auto e = config_error_of([&] { (void)load_training_config(path); });
        const std::string message = e.what();
        INFO(c.name, "\n", message);
        CHECK(e.problems().size() == c.problem_count);
        check_every_line_names(e, path);
        for (const auto& phrase : c.phrases) CHECK(contains(message, phrase));
    }
}

TEST_CASE("a missing file, a directory, a huge file and an endless stream are refused with the path") {
    const std::string missing = data_dir + "/does_not_exist.json";
    auto e = config_error_of([&] { (void)load_model_config(missing); });
    CHECK(std::string(e.what()) == missing + ": no such file (expected a model config JSON file)");

    e = config_error_of([&] { (void)load_training_config(data_dir); });
    CHECK(std::string(e.what()) == data_dir + ": is a directory (expected a training config JSON file)");

    // A wrong path to, say, train.bin must not be read into memory. A sparse file costs nothing.
    const auto huge = std::filesystem::temp_directory_path() / "gemma3_test_config_file_huge.json";
    { std::ofstream create(huge); }
    std::filesystem::resize_file(huge, std::uintmax_t{64} << 20);
    e = config_error_of([&] { (void)load_model_config(huge); });
    std::filesystem::remove(huge);
    CHECK(std::string(e.what()) == huge.string() + ": is larger than 16777216 bytes, too large for a model config JSON file");

    // An endless stream must not hang or fill memory either.
    e = config_error_of([&] { (void)load_model_config("/dev/zero"); });
    CHECK(std::string(e.what()) == "/dev/zero: is larger than 16777216 bytes, too large for a model config JSON file");
}

TEST_CASE("whole numbers written with an exponent or a fraction part are accepted as integers") {
    const auto m = load_model_config(data_dir + "/model_integral_exponents.json");
    CHECK(m.vocab_size == 512);       // 5.12e2
    CHECK(m.n_layers == 6);           // 6.0
    CHECK(m.context_length == 1024);  // 1024E0
}

TEST_CASE("an omitted head_dim is emb_dim / n_heads") {
    const auto m = load_model_config(data_dir + "/model_head_dim_omitted.json");
    CHECK(m.head_dim == 64 / 4);
}

TEST_CASE("a sliding window above half the context is a warning, not an error") {
    const std::string path = data_dir + "/model_wide_window.json";
    const auto m = load_model_config(path);
    CHECK(m.sliding_window == 600);
    REQUIRE(m.warnings.size() == 1);
    CHECK(m.warnings[0].starts_with(path + ": field \"sliding_window\": value 600 is more than half of "
                                           "context_length (1024)"));
}

TEST_CASE("the optional fields are read when present") {
    const auto m = load_model_config(data_dir + "/model_all_optional_fields.json");
    CHECK(m.tie_word_embeddings);
    CHECK(m.rms_norm_eps == 1e-5);
    CHECK(m.initializer_range == 0.01);
    CHECK(m.init == "hf");

    const auto t = load_training_config(data_dir + "/training_all_fields.json");
    CHECK(t.learning_rate == 1e-3);
    CHECK(t.min_lr == 1e-4);
    CHECK(t.device == "cpu");
    CHECK(t.beta1 == 0.85);
    CHECK(t.beta2 == 0.99);
    CHECK(t.adam_eps == 1e-8);
    CHECK(t.weight_decay == 0.0);
    CHECK(t.grad_clip == 0.0);
    CHECK(t.warmup_start_factor == 0.1);
    CHECK(t.eval_interval == 200);
    CHECK(t.eval_batches == 20);
    CHECK(t.seed == 7);
    CHECK(t.log_interval == 10);
}

TEST_CASE("parse_model_config reports problems under the given source name") {
    json j = json::parse(R"({"vocab_size": 512})");
    const auto e = config_error_of([&] { (void)parse_model_config(j, "inline config"); });
    check_every_line_names(e, "inline config");
    CHECK(e.problems().size() == 13);  // the 13 other required fields are missing

    // A long run of bad layer kinds is summarised after the first eight.
    j = to_json(config_file_of<configs::Gemma3Tiny>());
    j["n_layers"] = 20;
    j["layer_types"] = json::array();
    for (int i = 0; i < 20; ++i) j["layer_types"].push_back("local");
    const auto many = config_error_of([&] { (void)parse_model_config(j, "inline"); });
    CHECK(many.problems().size() == 9);
    CHECK(many.problems().back() == "inline: field \"layer_types\": 12 more entries are not layer kinds");

    // Values that JSON text cannot hold but a json object built in code can.
    j = to_json(config_file_of<configs::Gemma3Tiny>());
    j["rope_base"] = std::numeric_limits<double>::infinity();
    const auto inf = config_error_of([&] { (void)parse_model_config(j, "inline"); });
    CHECK(inf.problems() == std::vector<std::string>{
                                "inline: field \"rope_base\": value inf is not a finite number; expected a number "
                                "greater than 1"});
}

TEST_CASE("to_json writes the seed's field names and parses back to the same config") {
    const auto seed = load_model_config(source_dir + "/config/model_config.json");
    const json j = to_json(seed);
    for (std::string_view field : model_config_fields) CHECK(j.contains(std::string(field)));
    CHECK(j.size() == model_config_fields.size());
    CHECK(with_source_and_warnings_of(parse_model_config(j, "round trip"), seed) == seed);

    const auto all = load_model_config(data_dir + "/model_all_optional_fields.json");
    CHECK(with_source_and_warnings_of(parse_model_config(to_json(all), "round trip"), all) == all);

    for (const std::string& file : {source_dir + "/config/training_config.json", data_dir + "/training_all_fields.json"}) {
        INFO(file);
        const auto t = load_training_config(file);
        const json tj = to_json(t);
        CHECK(tj.size() == training_config_fields.size());
        CHECK(with_source_and_warnings_of(parse_training_config(tj, "round trip"), t) == t);
    }
}

TEST_CASE("check_compatible refuses a block_size beyond the model's context") {
    const auto tiny = load_model_config(source_dir + "/config/tiny_model_config.json");
    auto training = load_training_config(source_dir + "/config/training_config.json");
    CHECK_NOTHROW(check_compatible(tiny, training));
    training.block_size = 2048;
    const auto e = config_error_of([&] { check_compatible(tiny, training); });
    CHECK(e.problems() == std::vector<std::string>{training.source +
                                                   ": field \"block_size\": value 2048 is larger than "
                                                   "context_length (1024) of " + tiny.source});
    training.block_size = 1024;  // exactly the context is fine
    CHECK_NOTHROW(check_compatible(tiny, training));
}

TEST_CASE("training shorter than the sliding window is noted (docs/model.md §10.5)") {
    const auto seed = load_model_config(source_dir + "/config/model_config.json");
    const auto tiny = load_model_config(source_dir + "/config/tiny_model_config.json");
    const auto training = load_training_config(source_dir + "/config/training_config.json");
    const auto notes = compatibility_warnings(seed, training);  // block 128 <= window 512
    REQUIRE(notes.size() == 1);
    CHECK(contains(notes[0], "value 128 is not larger than sliding_window (512)"));
    CHECK(compatibility_warnings(tiny, training).empty());  // window 8
}
