// The trainer: token-file validation, exact resume, crash safety of checkpoints (the gemma3-train
// program killed mid-save), the non-finite guard, and the device check.
#include <doctest/doctest.h>

#include <gemma3/train/trainer.hpp>

#include "trainer_run.hpp"

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace gemma3;
namespace fs = std::filesystem;
using Tiny = configs::Gemma3Tiny;

namespace {

fs::path fresh_dir(const std::string& name) {
    const auto dir = fs::temp_directory_path() / ("gemma3_test_trainer_" + std::to_string(::getpid())) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

void write_tokens(const fs::path& path, const std::vector<std::uint16_t>& ids) {
    std::ofstream out(path, std::ios::binary);
    for (auto id : ids) {
        const unsigned char bytes[2] = {static_cast<unsigned char>(id & 0xFF), static_cast<unsigned char>(id >> 8)};
        out.write(reinterpret_cast<const char*>(bytes), 2);
    }
}

// Token files with some structure to learn (a noisy repeating pattern).
fs::path make_data(const std::string& name) {
    const auto dir = fresh_dir(name);
    std::mt19937 rng(5);
    for (const char* file : {"train.bin", "validation.bin"}) {
        std::vector<std::uint16_t> ids(4000);
        for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::uint16_t>((i * 7 + rng() % 3) % 512);
        write_tokens(dir / file, ids);
    }
    return dir;
}

TrainingConfig small_training_config() {
    return parse_training_config(nlohmann::json{{"learning_rate", 3e-3},
                                                {"warmup_steps", 3},
                                                {"min_lr", 3e-4},
                                                {"max_iters", 12},
                                                {"eval_iters", 4},
                                                {"eval_batches", 2},
                                                {"batch_size", 2},
                                                {"block_size", 16},
                                                {"gradient_accumulation_steps", 3},
                                                {"device", "cpu"},
                                                {"dtype", "float32"},
                                                {"ptdtype", "float32"},
                                                {"seed", 7}},
                                 "test training config");
}

ModelConfigFile tiny_model_config() {
    return load_model_config(fs::path(GEMMA3_SOURCE_DIR) / "config" / "tiny_model_config.json");
}

std::vector<std::string> read_lines(const fs::path& path) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

// The losses of a metrics file, with their iteration: "train 3 <loss>" / "eval 4 <train> <val>".
std::vector<std::string> losses(const fs::path& out_dir) {
    std::vector<std::string> result;
    for (const auto& line : read_lines(out_dir / "metrics.jsonl")) {
        const auto r = nlohmann::json::parse(line);
        std::ostringstream s;
        s.precision(17);
        if (r["type"] == "eval") {
            s << "eval " << r["iter"] << " " << r["train_loss"].get<double>() << " " << r["val_loss"].get<double>();
        } else {
            s << "train " << r["iter"] << " " << r["loss"].get<double>();
        }
        result.push_back(s.str());
    }
    return result;
}

std::string quiet_run(const fs::path& data, const fs::path& out, std::int64_t stop_after, bool resume,
                      TrainingConfig config = small_training_config()) {
    return gemma3::test::run_quietly<Trainer<Tiny, float>>(tiny_model_config(), config, data, out, stop_after, resume);
}

}  // namespace

TEST_CASE("token files are validated when opened") {
    const auto dir = fresh_dir("bad_data");
    CHECK_THROWS_WITH_AS(TokenFile(dir / "missing.bin", 512, 17), doctest::Contains("no such token file"), DataError);
    { std::ofstream(dir / "empty.bin"); }
    CHECK_THROWS_WITH_AS(TokenFile(dir / "empty.bin", 512, 17), doctest::Contains("empty"), DataError);
    { std::ofstream(dir / "odd.bin") << "abc"; }
    CHECK_THROWS_WITH_AS(TokenFile(dir / "odd.bin", 512, 17), doctest::Contains("not a multiple of 2"), DataError);
    write_tokens(dir / "short.bin", std::vector<std::uint16_t>(16, 3));
    CHECK_THROWS_WITH_AS(TokenFile(dir / "short.bin", 512, 17), doctest::Contains("fewer than the 17"), DataError);
    std::vector<std::uint16_t> ids(100, 3);
    ids[42] = 512;
    write_tokens(dir / "big_id.bin", ids);
    CHECK_THROWS_WITH_AS(TokenFile(dir / "big_id.bin", 512, 17), doctest::Contains("token 42 is 512"), DataError);
    ids[42] = 511;
    write_tokens(dir / "ok.bin", ids);
    const TokenFile ok(dir / "ok.bin", 512, 17);
    CHECK(ok.size() == 100);
    CHECK(ok[42] == 511);
    // A vocabulary above 65,536 ids uses uint32: 200 bytes are 50 tokens.
    std::vector<std::uint16_t> halves(100, 0);
    halves[2 * 7] = 0x1170;  // token 7 = 0x00011170 = 70000, low half first
    halves[2 * 7 + 1] = 0x0001;
    write_tokens(dir / "u32.bin", halves);
    const TokenFile wide(dir / "u32.bin", 70001, 17);
    CHECK(wide.size() == 50);
    CHECK(wide[7] == 0x11170);
    CHECK_THROWS_WITH_AS(TokenFile(dir / "u32.bin", 70000, 17), doctest::Contains("token 7 is 70000"), DataError);
}

TEST_CASE("uint32 token ids of 2^31 and more are out of the vocabulary, not negative") {
    const auto dir = fresh_dir("u32_sign");
    // Token 3 is 0x80000000 (little-endian halves 0x0000, 0x8000): it read as -2^31 before.
    std::vector<std::uint16_t> halves(40, 0);
    halves[2 * 3 + 1] = 0x8000;
    write_tokens(dir / "u32.bin", halves);
    CHECK_THROWS_WITH_AS(TokenFile(dir / "u32.bin", 70000, 1),
                         doctest::Contains("u32.bin: token 3 is 2147483648 (at byte offset 12), outside the vocabulary"),
                         DataError);
    halves[2 * 3] = 0xFFFF, halves[2 * 3 + 1] = 0xFFFF;
    write_tokens(dir / "u32.bin", halves);
    CHECK_THROWS_WITH_AS(TokenFile(dir / "u32.bin", 70000, 1), doctest::Contains("token 3 is 4294967295"), DataError);
    CHECK_THROWS_WITH_AS(TokenFile(dir / "u32.bin", 0, 1), doctest::Contains("vocabulary size 0"), DataError);
}

TEST_CASE("the batch sampler needs one window of block_size + 1 tokens and whole batches") {
    const auto dir = fresh_dir("sampler_sizes");
    std::vector<std::uint16_t> ids(16);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::uint16_t>(i);
    write_tokens(dir / "16.bin", ids);
    const TokenFile file(dir / "16.bin", 512, 1);
    // 16 tokens: block 16 would divide by zero (no start offset), block 20 underflow.
    for (const std::int64_t block : {16, 20}) {
        CHECK_THROWS_WITH_AS(BatchSampler(file, 2, block, 1), doctest::Contains("16.bin: holds 16 tokens, fewer than"),
                             DataError);
    }
    CHECK_THROWS_AS(BatchSampler(file, 0, 4, 1), DataError);
    CHECK_THROWS_AS(BatchSampler(file, 2, 0, 1), DataError);
    // Block 15 fits exactly once: every batch row is the whole file.
    BatchSampler sampler(file, 2, 15, 1);
    std::vector<std::int32_t> x(30), y(30);
    sampler.next(x, y);
    for (std::size_t i = 0; i < 30; ++i) {
        CHECK(x[i] == static_cast<std::int32_t>(i % 15));
        CHECK(y[i] == static_cast<std::int32_t>(i % 15 + 1));
    }
    std::vector<std::int32_t> short_y(29);
    CHECK_THROWS_AS(sampler.next(x, short_y), DataError);
}

TEST_CASE("restoring a malformed sampler state leaves the sampler as it was") {
    const auto dir = fresh_dir("sampler_restore");
    std::vector<std::uint16_t> ids(1000);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::uint16_t>(i % 512);
    write_tokens(dir / "t.bin", ids);
    const TokenFile file(dir / "t.bin", 512, 1);
    BatchSampler a(file, 2, 8, 11), b(file, 2, 8, 11);
    const std::string saved = a.state();
    // 300 of the 312 numbers, then garbage: the standard library would have overwritten 300 words.
    std::string partial;
    {
        std::istringstream in(saved);
        std::string word;
        for (int i = 0; i < 300 && in >> word; ++i) partial += "1 ";
    }
    for (const std::string& bad : {partial + "x", std::string("1 2 3"), std::string(""), saved + " 7"}) {
        CHECK_THROWS_AS(a.restore(bad), DataError);
        CHECK_FALSE(BatchSampler::is_valid_state(bad));
    }
    CHECK(a.state() == saved);
    std::vector<std::int32_t> xa(16), ya(16), xb(16), yb(16);
    a.next(xa, ya);
    b.next(xb, yb);
    CHECK(xa == xb);
    b.restore(saved);
    b.next(xb, yb);
    CHECK(xa == xb);
    CHECK(BatchSampler::is_valid_state(saved));
}

TEST_CASE("metrics lines the trainer did not write are skipped, never thrown on") {
    const auto eval = parse_metrics_line(R"({"type":"eval","iter":4,"train_loss":5.5,"val_loss":6.25})");
    REQUIRE(eval);
    CHECK(eval->eval);
    CHECK(eval->iter == 4);
    CHECK(eval->train_loss == 5.5);
    CHECK(eval->val_loss == 6.25);
    const auto train = parse_metrics_line(R"({"type":"train","iter":3,"loss":null,"lr":0.001})");
    REQUIRE(train);
    CHECK(train->iter == 3);
    CHECK(std::isnan(train->loss));
    for (const char* line : {"5", "[1,2]", "\"x\"", R"({"type":"train","iter":"3","loss":1})",
                             R"({"type":"train","iter":1e300,"loss":1})", R"({"type":"train","iter":7.9,"loss":1})",
                             R"({"type":"train","iter":18446744073709551615,"loss":1})", R"({"type":5,"iter":3})",
                             R"({"type":"eval","iter":-2})", R"({"iter":3})", R"({"type":"eval","iter":3)", "",
                             R"({"type":"train","iter":3,"loss":1e999})"}) {
        CAPTURE(line);
        std::optional<MetricsRecord> r;
        CHECK_NOTHROW(r = parse_metrics_line(line));
        CHECK_FALSE(r);
    }
}

TEST_CASE("stopping and resuming gives bit-identical losses and weights") {
    const auto data = make_data("resume_data");
    const auto straight = fresh_dir("straight"), pieces = fresh_dir("pieces");
    quiet_run(data, straight, -1, false);
    // Stop at iteration 5: between two optimizer steps (accumulation 3), after the evaluation at 4.
    const auto first = quiet_run(data, pieces, 5, false);
    CHECK(first.find("stopped at iteration 5") != std::string::npos);
    // Lines that are not the trainer's records (edited by hand, or damaged) are dropped on resume;
    // they used to throw nlohmann errors out of the resume.
    {
        std::ofstream metrics(pieces / "metrics.jsonl", std::ios::app);
        metrics << "5\n" << R"({"type":"train","iter":"x","loss":1})" << "\n" << R"({"type":"eval","iter":1e300})" << "\n";
    }
    const auto second = quiet_run(data, pieces, -1, true);
    CHECK(second.find("resumed from") != std::string::npos);
    CHECK(second.find("at iteration 5") != std::string::npos);

    const auto a = losses(straight), b = losses(pieces);
    CHECK(a.size() == 12 + 3);  // 12 iterations, evaluations at 4, 8 and 12
    CHECK(a == b);
    // The final weights are bit-identical too.
    const SafetensorsFile wa(straight / "latest" / "model.safetensors"), wb(pieces / "latest" / "model.safetensors");
    for (const auto& t : wa.tensors()) {
        const auto x = wa.read_all<float>(t.name), y = wb.read_all<float>(t.name);
        CHECK(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
    }
    // The training learned something: the last evaluation is below the first.
    const auto lines = read_lines(straight / "metrics.jsonl");
    CHECK(fs::is_symlink(straight / "best"));
}

namespace {
// Runs build/bin/gemma3-train with `arguments`; returns the wait status.
int run_train_program(const std::string& arguments, const std::string& environment = "") {
    // `exec`: the shell becomes the program, so a signal that kills it shows in the status.
    const std::string command = environment + " exec " GEMMA3_TRAIN_EXE " " + arguments + " > /dev/null 2>&1";
    return std::system(command.c_str());
}
}  // namespace

TEST_CASE("a kill at any phase of a checkpoint write leaves a checkpoint that resumes exactly") {
    const auto data = make_data("kill_data");
    const auto dir = fresh_dir("kill_configs");
    {
        std::ofstream(dir / "training.json") << to_json(small_training_config()).dump(2);
    }
    const std::string common = "--model-config " GEMMA3_SOURCE_DIR "/config/tiny_model_config.json --training-config " +
                               (dir / "training.json").string() + " --data-dir " + data.string();
    const auto reference = fresh_dir("kill_reference");
    REQUIRE(run_train_program(common + " --out-dir " + reference.string()) == 0);
    const auto want = losses(reference);
    CHECK(fs::exists(reference / "loss.svg"));  // drawn by gemma3-train after each checkpoint

    // The second checkpoint is written at iteration 8 (evaluations at 4 and 8); like the first, it
    // falls between two optimizer steps (accumulation 3), so it has a "gradients" phase too.
    for (const std::string phase : {"model", "optimizer", "gradients", "state", "directory", "link"}) {
        CAPTURE(phase);
        const auto out = fresh_dir("kill_" + phase);
        const int status = run_train_program(common + " --out-dir " + out.string(),
                                             "GEMMA3_KILL_AT_CHECKPOINT_PHASE=" + phase + ":2");
        REQUIRE(WIFSIGNALED(status));
        CHECK(WTERMSIG(status) == SIGKILL);
        // `latest` still names a complete checkpoint: the one at iteration 4.
        REQUIRE(fs::is_symlink(out / "latest"));
        CHECK(fs::read_symlink(out / "latest") == fs::path("checkpoints") / "iter-00000004");
        REQUIRE(run_train_program(common + " --out-dir " + out.string() + " --resume") == 0);
        CHECK(losses(out) == want);
    }
}

TEST_CASE("a non-finite loss stops training with the offending tensor named, without a poisoned checkpoint") {
    const auto data = make_data("nan_data");
    const auto out = fresh_dir("nan_out");
    auto config = small_training_config();
    config.learning_rate = 1e30;  // the first update overflows the weights
    config.warmup_start_factor = 1.0;
    config.grad_clip = 0;
    config.eval_interval = 100;  // no evaluation, so no checkpoint before the failure
    CHECK_THROWS_WITH_AS(quiet_run(data, out, -1, false, config), doctest::Contains("non-finite"), TrainingError);
    try {
        quiet_run(data, fresh_dir("nan_out2"), -1, false, config);
    } catch (const TrainingError& e) {
        const std::string message = e.what();
        CHECK(message.find("model.") != std::string::npos);  // names a tensor
        CHECK(message.find("no checkpoint was written") != std::string::npos);
    }
    CHECK_FALSE(fs::exists(out / "latest"));
}

TEST_CASE("gemma3-train refuses device cuda where there is none, and says how to train on the CPU") {
    const std::string output = (fs::temp_directory_path() / ("gemma3_cuda_" + std::to_string(::getpid()))).string();
    const std::string command = GEMMA3_TRAIN_EXE " --model-config " GEMMA3_SOURCE_DIR
                                "/config/tiny_model_config.json --training-config " GEMMA3_SOURCE_DIR
                                "/config/training_config.json > " +
                                output + " 2>&1";
    const int status = std::system(command.c_str());
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 2);
    std::ifstream in(output);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(text.find("--device cpu") != std::string::npos);
    CHECK(text.find("cuda") != std::string::npos);
    fs::remove(output);
}

namespace {
// Runs gemma3-train with `arguments`, its output into `log`; returns the wait status.
int run_train_program_logged(const std::string& arguments, const std::string& environment, const fs::path& log) {
    const std::string command =
        environment + " exec " GEMMA3_TRAIN_EXE " " + arguments + " > " + log.string() + " 2>&1";
    return std::system(command.c_str());
}

std::string read_text(const fs::path& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
}  // namespace

TEST_CASE("SIGINT or SIGTERM stops gemma3-train after the optimizer step under way, with a checkpoint that resumes "
          "exactly; a second signal stops it at once") {
    const auto data = make_data("signal_data");
    const auto dir = fresh_dir("signal_configs");
    {
        std::ofstream(dir / "training.json") << to_json(small_training_config()).dump(2);
    }
    const std::string common = "--model-config " GEMMA3_SOURCE_DIR "/config/tiny_model_config.json --training-config " +
                               (dir / "training.json").string() + " --data-dir " + data.string();
    const auto reference = fresh_dir("signal_reference");
    REQUIRE(run_train_program(common + " --out-dir " + reference.string()) == 0);
    const auto want = losses(reference);

    struct Case {
        std::string signal_at;  // GEMMA3_SIGNAL_AT_ITERATIONS
        int signal_number;
        const char* stopped_at;  // accumulation 3: optimizer steps end iterations 2, 5, 8, 11
    };
    for (const Case& c : {Case{"0:4:INT", SIGINT, "iter-00000006"}, Case{"0:7:TERM", SIGTERM, "iter-00000009"}}) {
        CAPTURE(c.signal_at);
        const auto out = fresh_dir("signal_" + std::to_string(c.signal_number));
        const auto log = dir / "log.txt";
        const int status = run_train_program_logged(common + " --out-dir " + out.string(),
                                                    "GEMMA3_SIGNAL_AT_ITERATIONS=" + c.signal_at, log);
        const std::string text = read_text(log);
        CAPTURE(text);
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 128 + c.signal_number);
        CHECK(text.find("stopping after the current optimizer step") != std::string::npos);
        CHECK(text.find("--resume") != std::string::npos);
        REQUIRE(fs::is_symlink(out / "latest"));
        CHECK(fs::read_symlink(out / "latest") == fs::path("checkpoints") / c.stopped_at);
        CHECK_FALSE(fs::exists(out / "latest" / "gradients.safetensors"));  // at an optimizer step: nothing pending
        REQUIRE(run_train_program(common + " --out-dir " + out.string() + " --resume") == 0);
        CHECK(losses(out) == want);
        const SafetensorsFile wa(reference / "latest" / "model.safetensors"), wb(out / "latest" / "model.safetensors");
        for (const auto& t : wa.tensors()) {
            const auto x = wa.read_all<float>(t.name), y = wb.read_all<float>(t.name);
            CHECK(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
        }
    }

    // A second signal before the step is done: the process ends by the signal, and `latest` still
    // names the last complete checkpoint (the evaluation's at iteration 4).
    const auto out = fresh_dir("signal_twice");
    const int status = run_train_program_logged(common + " --out-dir " + out.string(),
                                                "GEMMA3_SIGNAL_AT_ITERATIONS=0:4,5:INT", dir / "log.txt");
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGINT);
    CHECK(fs::read_symlink(out / "latest") == fs::path("checkpoints") / "iter-00000004");
}
