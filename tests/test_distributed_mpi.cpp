// MpiCommunicator's collectives, run by CTest under mpirun with 1, 2 and 3 ranks (3 gives shards
// of unequal size). Every rank fills its buffers with values that depend on its rank, so each
// expected result is a closed-form sum over ranks. Every rank runs the same test cases in the same
// order, which keeps their collectives matched.
#include <doctest/doctest.h>

#include <gemma3/train/distributed.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

using namespace gemma3;

namespace {

MpiCommunicator& world() {
    static int argc = 0;
    static char** argv = nullptr;
    static MpiCommunicator comm(&argc, &argv);
    return comm;
}

// Value i of rank r: exact in float (small integers and halves).
double value(int r, std::size_t i) { return static_cast<double>((i % 97) + 1) * (r + 1) + 0.5 * static_cast<double>(i % 3); }

// The sum of value(r, i) over all ranks.
double sum_over_ranks(std::size_t i, int ranks) {
    double s = 0;
    for (int r = 0; r < ranks; ++r) s += value(r, i);
    return s;
}

}  // namespace

TEST_CASE("the MPI communicator sees every launched process") {
    auto& comm = world();
    REQUIRE(comm.size() == launcher_process_count());
    CHECK(comm.rank() >= 0);
    CHECK(comm.rank() < comm.size());
    CHECK(comm.name() == "MPI");
}

TEST_CASE_TEMPLATE("allreduce_sum gives every rank the element-wise sum", T, float, double) {
    auto& comm = world();
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1000}, std::size_t{100003}}) {
        CAPTURE(n);
        std::vector<T> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<T>(value(comm.rank(), i));
        comm.allreduce_sum(std::span<T>(v));
        std::size_t wrong = 0;
        for (std::size_t i = 0; i < n; ++i) wrong += v[i] != static_cast<T>(sum_over_ranks(i, comm.size()));
        CHECK(wrong == 0);
    }
}

TEST_CASE_TEMPLATE("reduce_scatter_sum leaves each rank its shard of the sum, allgather reassembles it", T, float, double) {
    auto& comm = world();
    for (std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{1000}, std::size_t{100003}}) {
        CAPTURE(n);
        std::vector<T> full(n);
        for (std::size_t i = 0; i < n; ++i) full[i] = static_cast<T>(value(comm.rank(), i));
        const Shard mine = shard_of(n, comm.rank(), comm.size());
        comm.reduce_scatter_sum(std::span<T>(full));
        std::size_t wrong = 0;
        for (std::size_t i = mine.begin; i < mine.end(); ++i) wrong += full[i] != static_cast<T>(sum_over_ranks(i, comm.size()));
        CHECK(wrong == 0);

        // allgather: each rank's shard is in place; everything else is garbage before the call.
        for (std::size_t i = 0; i < n; ++i) {
            if (i < mine.begin || i >= mine.end()) full[i] = T(-1);
        }
        comm.allgather(std::span<T>(full));
        wrong = 0;
        for (std::size_t i = 0; i < n; ++i) wrong += full[i] != static_cast<T>(sum_over_ranks(i, comm.size()));
        CHECK(wrong == 0);
    }
}

TEST_CASE("gather assembles every rank's shard on the root only") {
    auto& comm = world();
    const std::size_t n = 10007;
    for (int root = 0; root < comm.size(); ++root) {
        CAPTURE(root);
        const Shard mine = shard_of(n, comm.rank(), comm.size());
        std::vector<double> shard(mine.count);
        for (std::size_t i = 0; i < mine.count; ++i) shard[i] = value(comm.rank(), mine.begin + i);
        std::vector<double> full(comm.rank() == root ? n : 0);
        comm.gather(n, std::span<const double>(shard), std::span<double>(full), root);
        if (comm.rank() != root) continue;
        std::size_t wrong = 0;
        for (int r = 0; r < comm.size(); ++r) {
            const Shard s = shard_of(n, r, comm.size());
            for (std::size_t i = s.begin; i < s.end(); ++i) wrong += full[i] != value(r, i);
        }
        CHECK(wrong == 0);
    }
}

TEST_CASE("a shard of the wrong size is refused before any communication") {
    auto& comm = world();
    const std::vector<float> shard(shard_of(100, comm.rank(), comm.size()).count + 1);
    std::vector<float> full(comm.rank() == 0 ? 100 : 0);
    CHECK_THROWS_WITH_AS(comm.gather(100, std::span<const float>(shard), std::span<float>(full), 0),
                         doctest::Contains("expected"), DistributedError);
}

TEST_CASE("broadcast copies the root's bytes; gather_text collects every rank's text in rank order") {
    auto& comm = world();
    const int root = comm.size() - 1;
    std::vector<std::uint64_t> v(3, comm.rank() == root ? 0x0123456789abcdefull : 0);
    comm.broadcast(std::span<std::uint64_t>(v), root);
    CHECK(v == std::vector<std::uint64_t>(3, 0x0123456789abcdefull));

    // Texts of different lengths, one empty.
    const std::string mine = comm.rank() == 1 ? "" : std::string(static_cast<std::size_t>(comm.rank() * 1000 + 3), 'a' + static_cast<char>(comm.rank()));
    const auto texts = comm.gather_text(mine, 0);
    if (comm.rank() == 0) {
        REQUIRE(texts.size() == static_cast<std::size_t>(comm.size()));
        for (int r = 0; r < comm.size(); ++r) {
            const std::string expected =
                r == 1 ? "" : std::string(static_cast<std::size_t>(r * 1000 + 3), 'a' + static_cast<char>(r));
            CHECK(texts[static_cast<std::size_t>(r)] == expected);
        }
    } else {
        CHECK(texts.empty());
    }
    comm.barrier();
}
