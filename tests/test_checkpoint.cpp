// Checkpoints: a round trip restores everything exactly; corrupted, incomplete or mismatched
// checkpoints are refused with a message that names the problem, and leave the model untouched.
#include <doctest/doctest.h>

#include <gemma3/io/checkpoint.hpp>
#include <gemma3/model.hpp>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>

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

// A batch sampler's state as BatchSampler::state() writes it.
std::string generator_state(std::uint64_t seed) {
    std::ostringstream out;
    out << std::mt19937_64(seed);
    return out.str();
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
    s.state.train_sampler = generator_state(1);
    s.state.eval_train_sampler = generator_state(2);
    s.state.eval_val_sampler = generator_state(3);
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

TEST_CASE("a load_weights that fails on a value leaves the model unchanged") {
    // Every tensor valid F64, but the last one read holds a value beyond float's range: the shape
    // and dtype checks pass, the conversion fails after the earlier tensors were read.
    const auto dir = fresh_dir("weights_f64");
    Parameters<Tiny, float> source;
    init_parameters(source, InitScheme::hf, 0.02, 3);
    std::vector<double> values(source.data(), source.data() + source.size());
    const auto tensors = parameter_tensors<Tiny>();
    values[tensors.back().offset + 5] = 1e306;
    std::vector<TensorToWrite> writes;
    for (const auto& t : tensors) {
        writes.push_back({t.name, t.shape, std::span<const double>(values.data() + t.offset, t.numel()), DType::F64});
    }
    write_safetensors(dir / "model.safetensors", writes);

    Parameters<Tiny, float> params;
    init_parameters(params, InitScheme::hf, 0.02, 4);
    const Parameters<Tiny, float> before = params;
    CHECK_THROWS_WITH_AS(load_weights(dir / "model.safetensors", params),
                         doctest::Contains("element 5 is 1e+306, which is out of the range of float"), SafetensorsError);
    CHECK(std::memcmp(params.data(), before.data(), params.size() * sizeof(float)) == 0);

    // The same file in double loads, and in float once the value fits.
    Parameters<Tiny, double> wide;
    CHECK_NOTHROW(load_weights(dir / "model.safetensors", wide));
    CHECK(wide.data()[tensors.back().offset + 5] == 1e306);
    values[tensors.back().offset + 5] = 0.5;
    write_safetensors(dir / "model.safetensors", writes);
    load_weights(dir / "model.safetensors", params);
    CHECK(std::memcmp(params.data(), source.data(), 16 * sizeof(float)) == 0);
    CHECK(params.data()[tensors.back().offset + 5] == 0.5f);
}

TEST_CASE("trainer state numbers must be whole and in range; the error names file, field and value") {
    Parameters<Tiny, float> params, grads;
    AdamW<float> adamw(params.size(), {});
    init_parameters(params, InitScheme::hf, 0.02, 99);
    const Parameters<Tiny, float> before = params;
    const auto s = save_one("state_numbers");
    const auto state_path = s.dir / "trainer_state.json";
    const auto good = nlohmann::json::parse(std::ifstream(state_path));
    // Issue 13, finding 4: get<int64_t>() of 1e300 was undefined behaviour, 7.9 became 7 and
    // 4294967297 ranks became 1 (get<int>()).
    struct Case {
        const char* pointer;
        nlohmann::json value;
        const char* message;
    };
    const Case cases[] = {
        {"/iteration", 1e300, "field \"iteration\": value 1e+300 is out of range; expected an integer >= 0"},
        {"/iteration", 7.9, "field \"iteration\": value 7.9 is not a whole number"},
        {"/iteration", "7", "field \"iteration\": value \"7\" is a string"},
        {"/iteration", -1, "field \"iteration\": value -1 is out of range"},
        {"/optimizer_steps", 1e300, "field \"optimizer_steps\": value 1e+300 is out of range"},
        {"/last_eval_iteration", 1e300, "field \"last_eval_iteration\": value 1e+300 is out of range"},
        {"/last_eval_iteration", -2, "field \"last_eval_iteration\": value -2 is out of range; expected an integer >= -1"},
        {"/data_parallel", {{"ranks", 4294967297LL}, {"batch_sampling", ""}, {"rank_train_samplers", nlohmann::json::array()}},
         "field \"data_parallel.ranks\": value 4294967297 is out of range; expected a positive integer"},
        {"/data_parallel", {{"ranks", 1e10}, {"batch_sampling", ""}, {"rank_train_samplers", nlohmann::json::array()}},
         "field \"data_parallel.ranks\": value 10000000000.0 is out of range"},
        {"/data_parallel", {{"ranks", 2}, {"batch_sampling", ""}, {"rank_train_samplers", {5}}},
         "field \"data_parallel.rank_train_samplers\": element 0 is a number; expected a string"},
        {"/best_val_loss", "low", "field \"best_val_loss\": value \"low\" is a string; expected a finite number"},
        {"/pending_gradients", 1, "field \"pending_gradients\": value 1 is a number; expected true or false"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.message);
        auto broken = good;
        broken[nlohmann::json::json_pointer(c.pointer)] = c.value;
        std::ofstream(state_path) << broken.dump();
        CHECK_THROWS_WITH_AS(load_checkpoint(s.dir, params, adamw, grads),
                             doctest::Contains((state_path.string() + ": " + c.message).c_str()), CheckpointError);
    }
    // The reproducers of the issue, as whole files.
    const fs::path reproducers = fs::path(GEMMA3_SOURCE_DIR) / "tests/fuzz/corpus/checkpoint";
    for (const char* name : {"checkpoint_state_iteration_1e300_ub.json", "checkpoint_state_iteration_string_unclear_message.json",
                             "checkpoint_state_lossy_iteration_7.9_ranks_2pow32p1.json", "checkpoint_state_ranks_1e10_ub.json"}) {
        CAPTURE(name);
        fs::copy_file(reproducers / name, state_path, fs::copy_options::overwrite_existing);
        CHECK_THROWS_WITH_AS(load_checkpoint(s.dir, params, adamw, grads), doctest::Contains("trainer_state.json: field"),
                             CheckpointError);
    }
    std::ofstream(state_path) << std::string(100000, '[') + std::string(100000, ']');
    CHECK_THROWS_WITH_AS(load_checkpoint(s.dir, params, adamw, grads), doctest::Contains("nested deeper than"),
                         CheckpointError);
    CHECK(std::memcmp(params.data(), before.data(), params.size() * sizeof(float)) == 0);
}

TEST_CASE("a checkpoint whose sampler states are malformed is refused before the model changes") {
    Parameters<Tiny, float> params, grads;
    AdamW<float> adamw(params.size(), {});
    init_parameters(params, InitScheme::hf, 0.02, 99);
    const Parameters<Tiny, float> before = params;
    const auto s = save_one("bad_sampler");
    auto state = nlohmann::json::parse(std::ifstream(s.dir / "trainer_state.json"));
    for (const char* field : {"train_sampler", "eval_train_sampler", "eval_val_sampler"}) {
        CAPTURE(field);
        auto broken = state;
        broken[field] = "1 2 3";
        std::ofstream(s.dir / "trainer_state.json") << broken.dump();
        CHECK_THROWS_WITH_AS(load_checkpoint(s.dir, params, adamw, grads),
                             doctest::Contains((std::string(field) + " is not a batch sampler state").c_str()), CheckpointError);
    }
    auto broken = state;
    broken["data_parallel"] = {{"ranks", 2}, {"batch_sampling", "per-rank"}, {"rank_train_samplers", {"7"}}};
    std::ofstream(s.dir / "trainer_state.json") << broken.dump();
    CHECK_THROWS_WITH_AS(load_checkpoint(s.dir, params, adamw, grads),
                         doctest::Contains("data_parallel.rank_train_samplers[0] is not a batch sampler state"),
                         CheckpointError);
    CHECK(std::memcmp(params.data(), before.data(), params.size() * sizeof(float)) == 0);
}

TEST_CASE("a checkpoint save past a file-size limit fails clearly and leaves the previous checkpoint intact") {
    const auto s = save_one("fsize");
    auto later = s.state;
    later.iteration = 9;
    // In a child process (the limit and the signal disposition are per process): RLIMIT_FSIZE
    // below the model file's size, and SIGXFSZ ignored so write() fails with EFBIG, as
    // gemma3-train arranges. The child sends its error message back through a pipe.
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::close(pipe_fds[0]);
        std::signal(SIGXFSZ, SIG_IGN);
        const rlimit limit{64 * 1024, 64 * 1024};
        std::string message = "saved without error";
        int code = 1;
        if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) {
            message = "setrlimit failed";
        } else {
            try {
                save_checkpoint(s.out, "latest", *s.params, s.adamw, later, config_file_of<Tiny>(),
                                parse_training_config(nlohmann::json{{"learning_rate", 1e-3}, {"warmup_steps", 1}, {"min_lr", 0.0},
                                                                     {"max_iters", 10}, {"eval_iters", 5}, {"batch_size", 2},
                                                                     {"block_size", 8}, {"gradient_accumulation_steps", 2},
                                                                     {"device", "cpu"}, {"dtype", "float32"},
                                                                     {"ptdtype", "float32"}},
                                                      "test"));
            } catch (const std::exception& e) {
                message = e.what();
                code = 0;
            }
        }
        [[maybe_unused]] const auto written = ::write(pipe_fds[1], message.data(), message.size());
        ::_exit(code);
    }
    ::close(pipe_fds[1]);
    std::string message;
    char buffer[4096];
    for (::ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof buffer)) > 0;) message.append(buffer, static_cast<std::size_t>(n));
    ::close(pipe_fds[0]);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    INFO(message);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(message.find("model.safetensors") != std::string::npos);
    CHECK(message.find("File too large") != std::string::npos);
    // `latest` still names the checkpoint at iteration 7, and it loads exactly.
    CHECK(fs::read_symlink(s.out / "latest") == fs::path("checkpoints/iter-00000007"));
    Parameters<Tiny, float> params, grads;
    AdamW<float> adamw(params.size(), {});
    const auto state = load_checkpoint(s.out / "latest", params, adamw, grads);
    CHECK(state.iteration == 7);
    CHECK(std::memcmp(params.data(), s.params->data(), params.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(grads.data(), s.grads->data(), grads.size() * sizeof(float)) == 0);
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
