// Data-parallel training (gemma3/train/distributed.hpp, the trainer's collectives, gemma3-train under
// mpirun): shard arithmetic and the single-process communicator here; with MPI, runs of
// gemma3-train under mpirun compared with one-process runs (equivalence, resume across rank
// counts, failures). Every mpirun has a time limit, so a hang fails the test instead of blocking.
#include <doctest/doctest.h>

#include <gemma3/train/distributed.hpp>
#include <gemma3/io/safetensors.hpp>

#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

using namespace gemma3;
namespace fs = std::filesystem;

TEST_CASE("shards cover a buffer exactly, in rank order, sizes differing by at most one") {
    for (std::size_t n : {0, 1, 2, 7, 100, 100003}) {
        for (int ranks : {1, 2, 3, 8}) {
            CAPTURE(n);
            CAPTURE(ranks);
            std::size_t next = 0, smallest = n, largest = 0;
            for (int r = 0; r < ranks; ++r) {
                const Shard s = shard_of(n, r, ranks);
                CHECK(s.begin == next);
                next = s.end();
                smallest = std::min(smallest, s.count);
                largest = std::max(largest, s.count);
            }
            CHECK(next == n);
            CHECK(largest - smallest <= 1);
        }
    }
    // 10 elements over 3 ranks: 4, 3, 3.
    CHECK(shard_of(10, 0, 3).count == 4);
    CHECK(shard_of(10, 1, 3).begin == 4);
    CHECK(shard_of(10, 2, 3).begin == 7);
}

TEST_CASE("the single-process communicator is rank 0 of 1 and its collectives change nothing") {
    SingleProcessCommunicator comm;
    CHECK(comm.rank() == 0);
    CHECK(comm.size() == 1);
    std::vector<double> v = {1.5, -2, 3};
    comm.allreduce_sum(std::span<double>(v));
    CHECK(v == std::vector<double>{1.5, -2, 3});
    comm.reduce_scatter_sum(std::span<double>(v));
    comm.allgather(std::span<double>(v));
    CHECK(v == std::vector<double>{1.5, -2, 3});
    std::vector<double> full(3);
    comm.gather(3, std::span<const double>(v), std::span<double>(full), 0);
    CHECK(full == v);
    CHECK(comm.gather_text("state", 0) == std::vector<std::string>{"state"});
}

TEST_CASE("without an MPI launcher the program runs alone and never initialises MPI") {
    // CTest does not start this test under mpirun (it may itself run under one: then skip).
    if (launcher_process_count() > 0) return;
    int argc = 0;
    char** argv = nullptr;
    const auto comm = make_communicator(&argc, &argv);
    CHECK(comm->size() == 1);
    CHECK(comm->name() == "single process");
}

#if defined(GEMMA3_MPIEXEC) && defined(GEMMA3_TRAIN_EXE)

namespace {

fs::path fresh_dir(const std::string& name) {
    const auto dir = fs::temp_directory_path() / ("gemma3_test_distributed_" + std::to_string(::getpid())) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

// Token files with some structure to learn (as in test_trainer.cpp).
fs::path make_data() {
    static const fs::path dir = [] {
        const auto d = fresh_dir("data");
        std::mt19937 rng(5);
        for (const char* file : {"train.bin", "validation.bin"}) {
            std::ofstream out(d / file, std::ios::binary);
            for (std::uint32_t i = 0; i < 4000; ++i) {
                const auto id = static_cast<std::uint16_t>((i * 7 + rng() % 3) % 512);
                const char bytes[2] = {static_cast<char>(id & 0xFF), static_cast<char>(id >> 8)};
                out.write(bytes, 2);
            }
        }
        return d;
    }();
    return dir;
}

struct Outcome {
    int exit_code = -1;  // 124: killed by the time limit
    std::string output;
    double seconds = 0;
};

// Runs a shell command with a time limit of `limit` seconds; stdout and stderr are captured.
Outcome run(const std::string& command, int limit = 60) {
    static int count = 0;
    const auto log = fs::temp_directory_path() /
                     ("gemma3_test_distributed_" + std::to_string(::getpid()) + "_" + std::to_string(count++) + ".log");
    // One thread per rank: the tests start up to two ranks on a machine that may have two cores.
    const std::string full = "OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none timeout -k 10 " +
                             std::to_string(limit) + " " + command + " > " + log.string() + " 2>&1";
    const auto start = std::chrono::steady_clock::now();
    const int status = std::system(full.c_str());
    Outcome outcome;
    outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::ifstream in(log);
    outcome.output.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    fs::remove(log);
    return outcome;
}

const std::string mpirun = GEMMA3_MPIEXEC " --allow-run-as-root --oversubscribe --bind-to none";

std::string train_arguments(const fs::path& out, const std::string& extra = "", const fs::path& data = make_data()) {
    return " --model-config " GEMMA3_SOURCE_DIR "/config/tiny_model_config.json --training-config " GEMMA3_SOURCE_DIR
           "/tests/distributed/tiny_float64_training.json --data-dir " +
           data.string() + " --out-dir " + out.string() + " " + extra;
}

// gemma3-train on `ranks` processes under mpirun (0: without mpirun). Requires success.
void train(int ranks, const fs::path& out, const std::string& extra = "") {
    const std::string command = (ranks == 0 ? std::string() : mpirun + " -np " + std::to_string(ranks) + " ") +
                                GEMMA3_TRAIN_EXE + train_arguments(out, extra);
    const Outcome outcome = run(command);
    INFO(command, "\n", outcome.output);
    REQUIRE(outcome.exit_code == 0);
}

struct Record {
    std::string type;
    std::int64_t iter;
    double loss, val_loss, grad_norm;
};

std::vector<Record> metrics(const fs::path& out) {
    std::ifstream in(out / "metrics.jsonl");
    std::vector<Record> records;
    for (std::string line; std::getline(in, line);) {
        const auto r = nlohmann::json::parse(line);
        const bool eval = r["type"] == "eval";
        records.push_back({r["type"], r["iter"], eval ? r["train_loss"].get<double>() : r["loss"].get<double>(),
                           r.value("val_loss", 0.0), r.value("grad_norm", 0.0)});
    }
    return records;
}

double relative(double a, double b) { return std::abs(a - b) / std::max(std::abs(a), 1e-300); }

// The largest relative difference between two runs' loss and gradient-norm records; the records
// must be the same sequence of (type, iteration).
double metrics_difference(const fs::path& a, const fs::path& b) {
    const auto x = metrics(a), y = metrics(b);
    REQUIRE(x.size() == y.size());
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        REQUIRE(x[i].type == y[i].type);
        REQUIRE(x[i].iter == y[i].iter);
        worst = std::max({worst, relative(x[i].loss, y[i].loss), relative(x[i].val_loss, y[i].val_loss),
                          relative(x[i].grad_norm, y[i].grad_norm)});
    }
    return worst;
}

// max over tensors of max|a - b| / max|a| for the final weights (float64 checkpoints).
double weight_difference(const fs::path& a, const fs::path& b) {
    const SafetensorsFile wa(a / "latest" / "model.safetensors"), wb(b / "latest" / "model.safetensors");
    double worst = 0;
    for (const auto& t : wa.tensors()) {
        const auto x = wa.read_all<double>(t.name), y = wb.read_all<double>(t.name);
        double diff = 0, scale = 0;
        for (std::size_t i = 0; i < x.size(); ++i) {
            diff = std::max(diff, std::abs(x[i] - y[i]));
            scale = std::max(scale, std::abs(x[i]));
        }
        worst = std::max(worst, diff / std::max(scale, 1e-300));
    }
    return worst;
}

bool same_files(const fs::path& a, const fs::path& b) {
    std::ifstream x(a, std::ios::binary), y(b, std::ios::binary);
    const std::string p((std::istreambuf_iterator<char>(x)), std::istreambuf_iterator<char>());
    const std::string q((std::istreambuf_iterator<char>(y)), std::istreambuf_iterator<char>());
    return !p.empty() && p == q;
}

// Bit-identical runs: the same metrics (apart from timings) and the same weight bytes.
void check_identical(const fs::path& a, const fs::path& b) {
    CHECK(metrics_difference(a, b) == 0.0);
    CHECK(same_files(a / "latest" / "model.safetensors", b / "latest" / "model.safetensors"));
}

// Tolerance for runs that differ only in the order of floating-point sums (float64). Splitting the
// batch across ranks regroups the sums over tokens inside the weight gradients and adds one sum
// over ranks: each gradient element changes by a few ulps of the sum of its terms' magnitudes,
// |dg| <~ 1e-16 * 1e-2 here. AdamW's update m/(sqrt(v) + eps) moves by at most lr * |dg| / eps
// (eps = 1e-9, lr <= 3e-3): <~ 3e-12 per step and tensor element, times 6 steps, against weights
// of magnitude ~0.1: 2e-10 relative in the worst case. Losses and gradient norms are sums over
// many terms, relative changes ~1e-15. A real error (a micro-batch lost or counted twice, a wrong
// scale) moves the gradient norms and losses by more than 1e-3 and the weights by ~lr.
constexpr double weight_tolerance = 2e-10;
constexpr double metrics_tolerance = 1e-12;

// Run `b` is the training of run `a`, up to summation order.
void check_equivalent(const fs::path& a, const fs::path& b, const std::string& what) {
    const double metrics_error = metrics_difference(a, b), weight_error = weight_difference(a, b);
    MESSAGE(what, ": metrics ", metrics_error, ", weights ", weight_error);
    CHECK(metrics_error < metrics_tolerance);
    CHECK(weight_error < weight_tolerance);
}

}  // namespace

TEST_CASE("under mpirun with one rank, training is bit-identical to a run without mpirun") {
    const auto alone = fresh_dir("alone"), one_rank = fresh_dir("one_rank");
    train(0, alone);
    train(1, one_rank);
    check_identical(alone, one_rank);
}

TEST_CASE("2 ranks x half the batch give the weights of 1 rank x the full batch") {
    const auto reference = fresh_dir("equivalence_reference");
    train(0, reference);  // batch_size 4, accumulation 2: 6 optimizer steps of 8 sequences

    SUBCASE("replicated optimizer: all-reduce of the gradients") {
        const auto split = fresh_dir("equivalence_split");
        train(2, split, "--batch-size 2 --batch-sampling shared");
        check_equivalent(reference, split, "2 ranks x 2 sequences vs 1 x 4");
    }
    SUBCASE("ZeRO-1: reduce-scatter, sharded AdamW, all-gather") {
        const auto zero = fresh_dir("equivalence_zero1");
        train(2, zero, "--batch-size 2 --batch-sampling shared --zero1");
        check_equivalent(reference, zero, "ZeRO-1, 2 ranks x 2 sequences vs 1 x 4");
    }
    SUBCASE("--keep-global-batch: the accumulation steps divided between the ranks") {
        const auto kept = fresh_dir("equivalence_keep_global");
        train(2, kept, "--keep-global-batch --batch-sampling shared");
        check_equivalent(reference, kept, "--keep-global-batch, 2 ranks x 1 micro-batch vs 1 x 2");
    }
}

TEST_CASE("a 2-rank checkpoint resumes on 1 rank and a 1-rank checkpoint on 2 ranks, continuing identically") {
    // "Identically": with shared batch sampling a run on 2 ranks x 2 sequences is the training of
    // 1 rank x 4 sequences, so a run that changes its rank count at a checkpoint must end where an
    // uninterrupted one-process run ends, up to summation order. The stop at iteration 5 falls
    // between two optimizer steps, so the checkpoint carries summed partial gradients.
    const auto reference = fresh_dir("resume_reference");
    train(0, reference);

    SUBCASE("2 ranks with ZeRO-1, then 1 rank") {
        const auto out = fresh_dir("resume_2_to_1");
        train(2, out, "--batch-size 2 --batch-sampling shared --zero1 --stop-after 5");
        CHECK(fs::read_symlink(out / "latest") == fs::path("checkpoints") / "iter-00000005");
        train(0, out, "--resume");
        check_equivalent(reference, out, "2 ranks (ZeRO-1) -> 1 rank");
    }
    SUBCASE("1 rank, then 2 ranks") {
        const auto out = fresh_dir("resume_1_to_2");
        train(0, out, "--stop-after 5");
        train(2, out, "--batch-size 2 --batch-sampling shared --resume");
        check_equivalent(reference, out, "1 rank -> 2 ranks");
    }
}

TEST_CASE("on the same rank count, stopping and resuming is bit-identical (per-rank streams, ZeRO-1)") {
    // Rank 1's own batch stream and the ZeRO-1 moment shards must survive the checkpoint exactly.
    const auto straight = fresh_dir("same_count_straight"), pieces = fresh_dir("same_count_pieces");
    train(2, straight, "--zero1");
    train(2, pieces, "--zero1 --stop-after 6");
    train(2, pieces, "--zero1 --resume");
    check_identical(straight, pieces);
    // Rank 1's stream is in the checkpoint.
    const auto state = nlohmann::json::parse(std::ifstream(straight / "latest" / "trainer_state.json"));
    CHECK(state["data_parallel"]["ranks"] == 2);
    CHECK(state["data_parallel"]["rank_train_samplers"].size() == 1);
    CHECK(state["data_parallel"]["rank_train_samplers"][0] != state["train_sampler"]);
}

TEST_CASE("a rank that cannot open its data stops every rank with a message naming it; latest stays intact") {
    const auto straight = fresh_dir("missing_straight"), out = fresh_dir("missing_data");
    train(2, straight);
    train(2, out, "--stop-after 6");
    REQUIRE(fs::read_symlink(out / "latest") == fs::path("checkpoints") / "iter-00000006");
    // Rank 0 gets the data, rank 1 a directory without it (mpirun's MPMD syntax: one program
    // line per rank).
    const std::string good = GEMMA3_TRAIN_EXE + train_arguments(out, "--resume");
    const std::string bad = GEMMA3_TRAIN_EXE + train_arguments(out, "--resume", fresh_dir("no_data"));
    const Outcome outcome = run(mpirun + " -np 1 " + good + " : -np 1 " + bad);
    INFO(outcome.output);
    MESSAGE("a rank without data: every rank ended after ", outcome.seconds, " s with exit code ", outcome.exit_code);
    CHECK(outcome.exit_code != 0);
    CHECK(outcome.exit_code != 124);  // not the time limit: nothing hung
    CHECK(outcome.output.find("rank 1 of 2") != std::string::npos);
    CHECK(outcome.output.find("no such token file") != std::string::npos);
    CHECK(fs::read_symlink(out / "latest") == fs::path("checkpoints") / "iter-00000006");
    train(2, out, "--resume");
    check_identical(straight, out);
}

TEST_CASE("a rank killed mid-run stops every rank; latest stays a complete checkpoint that resumes exactly") {
    const auto straight = fresh_dir("kill_straight");
    train(2, straight);

    SUBCASE("rank 1 killed by SIGKILL during training") {
        const auto out = fresh_dir("kill_rank1");
        // Iteration 9 starts after rank 0 finished the checkpoint at 8 (the pass at 8 needs it).
        const Outcome outcome = run("env GEMMA3_KILL_AT_ITERATION=1:9 " + mpirun + " -np 2 " GEMMA3_TRAIN_EXE + train_arguments(out));
        INFO(outcome.output);
        MESSAGE("rank 1 killed: every rank ended after ", outcome.seconds, " s with exit code ", outcome.exit_code);
        CHECK(outcome.exit_code != 0);
        CHECK(outcome.exit_code != 124);
        CHECK(outcome.output.find("signal 9") != std::string::npos);  // mpirun names the killed rank
        CHECK(fs::read_symlink(out / "latest") == fs::path("checkpoints") / "iter-00000008");
        train(2, out, "--resume");
        check_identical(straight, out);
    }
    SUBCASE("rank 0 killed while writing a checkpoint") {
        const auto out = fresh_dir("kill_rank0_saving");
        const Outcome outcome =
            run("env GEMMA3_KILL_AT_CHECKPOINT_PHASE=optimizer:2 " + mpirun + " -np 2 " GEMMA3_TRAIN_EXE + train_arguments(out));
        INFO(outcome.output);
        MESSAGE("rank 0 killed mid-save: every rank ended after ", outcome.seconds, " s with exit code ", outcome.exit_code);
        CHECK(outcome.exit_code != 0);
        CHECK(outcome.exit_code != 124);
        CHECK(fs::read_symlink(out / "latest") == fs::path("checkpoints") / "iter-00000004");
        train(2, out, "--resume");
        check_identical(straight, out);
    }
}

TEST_CASE("ranks that disagree on settings, or a global batch that cannot be divided, are refused clearly") {
    SUBCASE("a different learning rate on rank 1") {
        const auto out = fresh_dir("disagree");
        const std::string rank0 = GEMMA3_TRAIN_EXE + train_arguments(out);
        const std::string rank1 = GEMMA3_TRAIN_EXE + train_arguments(out, "--learning-rate 1e-3");
        const Outcome outcome = run(mpirun + " -np 1 " + rank0 + " : -np 1 " + rank1);
        INFO(outcome.output);
        CHECK(outcome.exit_code != 0);
        CHECK(outcome.exit_code != 124);
        CHECK(outcome.output.find("rank 1 runs with other settings than rank 0") != std::string::npos);
        CHECK_FALSE(fs::exists(out / "latest"));
    }
    SUBCASE("--keep-global-batch with 3 accumulation steps on 2 ranks") {
        const auto out = fresh_dir("indivisible");
        const Outcome outcome = run(mpirun + " -np 2 " GEMMA3_TRAIN_EXE +
                                    train_arguments(out, "--keep-global-batch --gradient-accumulation-steps 3"));
        INFO(outcome.output);
        CHECK(outcome.exit_code != 0);
        CHECK(outcome.exit_code != 124);
        CHECK(outcome.output.find("gradient_accumulation_steps 3 is not divisible by the 2 ranks") != std::string::npos);
    }
}

TEST_CASE("a signal to one rank stops every rank after the same optimizer step; the checkpoint resumes exactly") {
    const auto straight = fresh_dir("signal_straight"), out = fresh_dir("signal_one_rank");
    train(2, straight);
    // Rank 1 alone gets SIGINT as iteration 4 starts; the update in progress ends after iteration 5
    // (accumulation 2), and both ranks must stop there, rank 0 told through the all-reduce.
    const Outcome outcome =
        run("env GEMMA3_SIGNAL_AT_ITERATIONS=1:4:INT " + mpirun + " -np 2 " GEMMA3_TRAIN_EXE + train_arguments(out));
    INFO(outcome.output);
    CHECK(outcome.exit_code == 128 + SIGINT);
    CHECK(outcome.output.find("stopped by signal 2") != std::string::npos);  // rank 0's report
    CHECK(fs::read_symlink(out / "latest") == fs::path("checkpoints") / "iter-00000006");
    train(2, out, "--resume");
    check_identical(straight, out);
}

#endif  // GEMMA3_MPIEXEC && GEMMA3_TRAIN_EXE
