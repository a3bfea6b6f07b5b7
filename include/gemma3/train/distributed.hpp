// Collectives for data-parallel training: the few operations the trainer needs, over contiguous
// buffers, behind one narrow interface.
//
//   auto comm = gemma3::make_communicator(&argc, &argv);  // MPI under mpirun, else this process alone
//   comm->allreduce_sum(std::span<float>(grads, n));        // every rank gets the element-wise sum
//
// Implementations:
//   SingleProcessCommunicator  size 1; every collective is a no-op or a copy. No MPI is touched, so
//                              a program started without a launcher runs exactly as before.
//   MpiCommunicator            MPI (Open MPI, MPICH), compiled only with GEMMA3_HAVE_MPI (CMake
//                              defines it when find_package(MPI) succeeds). Calls come from the main
//                              thread only (MPI_THREAD_FUNNELED); OpenMP threads never call MPI.
//
// A CUDA back end adds its own implementation (NCCL on device buffers, the unique id broadcast with
// this MPI communicator's `broadcast`); the element type travels as a ScalarType so that bf16 can
// join float and double without new virtual functions.
//
// Errors: an MPI call that fails throws DistributedError naming the call, the rank and MPI's reason
// (the communicator's error handler is MPI_ERRORS_RETURN, so nothing fails silently or dies without
// a word). A rank that cannot go on must call abort(): the other ranks are waiting in a collective
// and only MPI_Abort stops them.
#pragma once

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef GEMMA3_HAVE_MPI
// MPI's C API only: the C++ bindings were removed from the standard and warn under -Wextra.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#endif

namespace gemma3 {

class DistributedError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Rank `rank`'s part of a flat buffer of n elements cut into `ranks` contiguous shards (ZeRO-1
// shards the optimizer this way): the first n % ranks shards hold one element more.
struct Shard {
    std::size_t begin = 0;
    std::size_t count = 0;
    std::size_t end() const { return begin + count; }
};

inline Shard shard_of(std::size_t n, int rank, int ranks) {
    const auto r = static_cast<std::size_t>(rank), size = static_cast<std::size_t>(ranks);
    const std::size_t base = n / size, extra = n % size;
    return {r * base + (r < extra ? r : extra), base + (r < extra ? 1 : 0)};
}

enum class ScalarType { f32, f64 };

template <class T>
constexpr ScalarType scalar_type_of() {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "collectives take float or double");
    return std::is_same_v<T, float> ? ScalarType::f32 : ScalarType::f64;
}

inline std::size_t scalar_bytes(ScalarType type) { return type == ScalarType::f32 ? 4 : 8; }

class Communicator {
public:
    virtual ~Communicator() = default;

    virtual int rank() const = 0;
    virtual int size() const = 0;
    virtual std::string_view name() const = 0;  // "single process", "MPI"

    // In place: every rank's `values` becomes the element-wise sum over all ranks.
    template <class T>
    void allreduce_sum(std::span<T> values) {
        allreduce_sum_raw(values.data(), values.size(), scalar_type_of<T>());
    }
    // In place: afterwards this rank's shard of `full` (shard_of(full.size(), rank(), size())) holds
    // the element-wise sum over all ranks of that shard; the rest of `full` is unspecified. (No
    // second buffer: ZeRO-1 updates the weights from the gradient buffer's own shard.)
    template <class T>
    void reduce_scatter_sum(std::span<T> full) {
        reduce_scatter_sum_raw(full.data(), full.size(), scalar_type_of<T>());
    }
    // In place: every rank contributes its shard of `full` (shard_of) and receives all of them.
    template <class T>
    void allgather(std::span<T> full) {
        allgather_raw(full.data(), full.size(), scalar_type_of<T>());
    }
    // Every rank's shard of an n-element buffer, assembled in `full_on_root` (n elements) on `root`;
    // other ranks pass an empty span there.
    template <class T>
    void gather(std::size_t n, std::span<const T> shard, std::span<T> full_on_root, int root) {
        check_shard(n, shard.size(), "gather");
        if (rank() == root && full_on_root.size() != n) {
            throw DistributedError("gather: the root's buffer holds " + std::to_string(full_on_root.size()) +
                                   " elements, expected " + std::to_string(n));
        }
        gather_raw(shard.data(), full_on_root.data(), n, scalar_type_of<T>(), root);
    }
    // `root`'s values to every rank (each passes a buffer of the same size).
    template <class T>
    void broadcast(std::span<T> values, int root) {
        static_assert(std::is_trivially_copyable_v<T>);
        broadcast_bytes(values.data(), values.size_bytes(), root);
    }
    // Every rank's text, in rank order, on `root` (an empty vector elsewhere).
    virtual std::vector<std::string> gather_text(const std::string& text, int root) = 0;
    virtual void barrier() = 0;
    // Ends every process of the job with `exit_code`, after printing `message` (prefixed with this
    // rank) to stderr. For a rank that cannot continue while the others wait in a collective.
    [[noreturn]] virtual void abort(const std::string& message, int exit_code) = 0;

protected:
    virtual void allreduce_sum_raw(void* values, std::size_t n, ScalarType type) = 0;
    virtual void reduce_scatter_sum_raw(void* full, std::size_t n, ScalarType type) = 0;
    virtual void allgather_raw(void* full, std::size_t n, ScalarType type) = 0;
    virtual void gather_raw(const void* shard, void* full_on_root, std::size_t n, ScalarType type, int root) = 0;
    virtual void broadcast_bytes(void* bytes, std::size_t n, int root) = 0;

private:
    void check_shard(std::size_t n, std::size_t shard, const char* what) const {
        const std::size_t expected = shard_of(n, rank(), size()).count;
        if (shard != expected) {
            throw DistributedError(std::string(what) + ": rank " + std::to_string(rank()) + "'s shard holds " +
                                   std::to_string(shard) + " elements, expected " + std::to_string(expected) +
                                   " (shard_of(" + std::to_string(n) + ", rank, " + std::to_string(size()) + "))");
        }
    }
};

// This process alone: rank 0 of 1.
class SingleProcessCommunicator final : public Communicator {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    std::string_view name() const override { return "single process"; }
    std::vector<std::string> gather_text(const std::string& text, int) override { return {text}; }
    void barrier() override {}
    [[noreturn]] void abort(const std::string& message, int exit_code) override {
        std::fprintf(stderr, "%s\n", message.c_str());
        std::fflush(stderr);
        std::exit(exit_code);
    }

protected:
    void allreduce_sum_raw(void*, std::size_t, ScalarType) override {}
    void reduce_scatter_sum_raw(void*, std::size_t, ScalarType) override {}
    void allgather_raw(void*, std::size_t, ScalarType) override {}
    void gather_raw(const void* shard, void* full, std::size_t n, ScalarType type, int) override {
        if (n > 0) std::memcpy(full, shard, n * scalar_bytes(type));
    }
    void broadcast_bytes(void*, std::size_t, int) override {}
};

// The number of processes an MPI launcher (mpirun/mpiexec of Open MPI, MPICH's Hydra, or a PMIx
// launcher such as srun) started, read from the environment it sets; 0 when none started us.
inline int launcher_process_count() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
        if (const char* value = std::getenv(name)) return std::atoi(value);
    }
    return std::getenv("PMIX_RANK") ? 1 : 0;  // PMIx without a size variable: at least this one
}

#ifdef GEMMA3_HAVE_MPI

// MPI_COMM_WORLD (a duplicate of it, so our traffic never mixes with a caller's). Initialises MPI
// unless the program already did, and finalises it on destruction if it initialised it.
class MpiCommunicator final : public Communicator {
public:
    MpiCommunicator(int* argc, char*** argv) {
        int initialized = 0;
        MPI_Initialized(&initialized);
        int provided = 0;
        if (!initialized) {
            if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
                throw DistributedError("MPI_Init_thread failed");
            }
            owns_mpi_ = true;
            MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);  // ours: errors as exceptions
        } else {
            MPI_Query_thread(&provided);  // the caller's MPI: leave its error handler alone
        }
        if (provided < MPI_THREAD_FUNNELED) {
            if (owns_mpi_) MPI_Finalize();
            throw DistributedError("MPI runs at a thread level below MPI_THREAD_FUNNELED (the trainer's OpenMP "
                                   "threads run beside the main thread, which makes every MPI call)");
        }
        check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
        check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
        check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
        check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    }
    MpiCommunicator(const MpiCommunicator&) = delete;
    MpiCommunicator& operator=(const MpiCommunicator&) = delete;
    ~MpiCommunicator() override {
        MPI_Comm_free(&comm_);
        if (owns_mpi_) MPI_Finalize();
    }

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string_view name() const override { return "MPI"; }
    MPI_Comm handle() const { return comm_; }

    std::vector<std::string> gather_text(const std::string& text, int root) override {
        const int length = checked_count(text.size(), "gather_text");
        std::vector<int> lengths(rank_ == root ? static_cast<std::size_t>(size_) : 0);
        check(MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, root, comm_), "MPI_Gather");
        std::vector<int> offsets(lengths.size());
        std::size_t total = 0;
        for (std::size_t r = 0; r < lengths.size(); ++r) {
            offsets[r] = checked_count(total, "gather_text");
            total += static_cast<std::size_t>(lengths[r]);
        }
        std::string all(total, '\0');
        check(MPI_Gatherv(text.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR, root,
                          comm_),
              "MPI_Gatherv");
        std::vector<std::string> texts;
        for (std::size_t r = 0; r < lengths.size(); ++r) {
            texts.push_back(all.substr(static_cast<std::size_t>(offsets[r]), static_cast<std::size_t>(lengths[r])));
        }
        return texts;
    }

    void barrier() override { check(MPI_Barrier(comm_), "MPI_Barrier"); }

    [[noreturn]] void abort(const std::string& message, int exit_code) override {
        std::fprintf(stderr, "[rank %d of %d] %s\n", rank_, size_, message.c_str());
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, exit_code);
        std::_Exit(exit_code);  // MPI_Abort does not return; if a broken MPI did, still stop
    }

protected:
    // Element counts are ints in MPI 3; larger buffers go in pieces where the operation allows.
    static constexpr std::size_t max_piece = std::size_t{1} << 30;

    void allreduce_sum_raw(void* values, std::size_t n, ScalarType type) override {
        auto* bytes = static_cast<std::byte*>(values);
        for (std::size_t done = 0; done < n; done += max_piece) {
            const std::size_t piece = std::min(max_piece, n - done);
            check(MPI_Allreduce(MPI_IN_PLACE, bytes + done * scalar_bytes(type), static_cast<int>(piece),
                                mpi_type(type), MPI_SUM, comm_),
                  "MPI_Allreduce");
        }
    }

    void reduce_scatter_sum_raw(void* full, std::size_t n, ScalarType type) override {
        const auto [counts, offsets] = shard_counts(n, "reduce_scatter_sum");
        check(MPI_Reduce_scatter(MPI_IN_PLACE, full, counts.data(), mpi_type(type), MPI_SUM, comm_), "MPI_Reduce_scatter");
        // MPI_IN_PLACE leaves the result at the start of the buffer; move it to the shard's place.
        const std::size_t bytes = scalar_bytes(type), mine = static_cast<std::size_t>(rank_);
        auto* base = static_cast<std::byte*>(full);
        std::memmove(base + static_cast<std::size_t>(offsets[mine]) * bytes, base, static_cast<std::size_t>(counts[mine]) * bytes);
    }

    void allgather_raw(void* full, std::size_t n, ScalarType type) override {
        const auto [counts, offsets] = shard_counts(n, "allgather");
        check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, full, counts.data(), offsets.data(), mpi_type(type),
                             comm_),
              "MPI_Allgatherv");
    }

    void gather_raw(const void* shard, void* full, std::size_t n, ScalarType type, int root) override {
        const auto [counts, offsets] = shard_counts(n, "gather");
        const int mine = counts[static_cast<std::size_t>(rank_)];
        if (rank_ == root) {
            // The root's own shard goes straight to its place (MPI_IN_PLACE needs it there already).
            const std::size_t bytes = scalar_bytes(type);
            std::memmove(static_cast<std::byte*>(full) + static_cast<std::size_t>(offsets[static_cast<std::size_t>(rank_)]) * bytes,
                         shard, static_cast<std::size_t>(mine) * bytes);
            check(MPI_Gatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, full, counts.data(), offsets.data(), mpi_type(type),
                              root, comm_),
                  "MPI_Gatherv");
        } else {
            check(MPI_Gatherv(shard, mine, mpi_type(type), nullptr, nullptr, nullptr, mpi_type(type), root, comm_),
                  "MPI_Gatherv");
        }
    }

    void broadcast_bytes(void* bytes, std::size_t n, int root) override {
        auto* p = static_cast<std::byte*>(bytes);
        for (std::size_t done = 0; done < n; done += max_piece) {
            const std::size_t piece = std::min(max_piece, n - done);
            check(MPI_Bcast(p + done, static_cast<int>(piece), MPI_BYTE, root, comm_), "MPI_Bcast");
        }
    }

private:
    static MPI_Datatype mpi_type(ScalarType type) { return type == ScalarType::f32 ? MPI_FLOAT : MPI_DOUBLE; }

    int checked_count(std::size_t n, const char* what) const {
        if (n > static_cast<std::size_t>(INT_MAX)) {
            throw DistributedError(std::string(what) + ": " + std::to_string(n) +
                                   " elements exceed MPI's int counts (at most " + std::to_string(INT_MAX) + ")");
        }
        return static_cast<int>(n);
    }

    // MPI's per-rank counts and displacements of shard_of(n, r, size).
    std::pair<std::vector<int>, std::vector<int>> shard_counts(std::size_t n, const char* what) const {
        checked_count(n, what);
        std::vector<int> counts(static_cast<std::size_t>(size_)), offsets(static_cast<std::size_t>(size_));
        for (int r = 0; r < size_; ++r) {
            const Shard s = shard_of(n, r, size_);
            counts[static_cast<std::size_t>(r)] = static_cast<int>(s.count);
            offsets[static_cast<std::size_t>(r)] = static_cast<int>(s.begin);
        }
        return {counts, offsets};
    }

    void check(int code, const char* call) const {
        if (code == MPI_SUCCESS) return;
        char reason[MPI_MAX_ERROR_STRING] = {};
        int length = 0;
        MPI_Error_string(code, reason, &length);
        throw DistributedError(std::string(call) + " failed on rank " + std::to_string(rank_) + " of " +
                               std::to_string(size_) + ": " + std::string(reason, static_cast<std::size_t>(length)));
    }

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
    bool owns_mpi_ = false;
};

#endif  // GEMMA3_HAVE_MPI

// MPI when an MPI launcher started this process (and MPI was compiled in), otherwise this process
// alone, without initialising MPI. A launcher that started several processes of a program built
// without MPI is an error: each would train alone and they would overwrite each other's output.
inline std::unique_ptr<Communicator> make_communicator([[maybe_unused]] int* argc, [[maybe_unused]] char*** argv) {
    const int launched = launcher_process_count();
#ifdef GEMMA3_HAVE_MPI
    if (launched > 0) return std::make_unique<MpiCommunicator>(argc, argv);
#else
    if (launched > 1) {
        throw DistributedError("started by an MPI launcher as one of " + std::to_string(launched) +
                               " processes, but this program was built without MPI (GEMMA3_MPI=OFF, or CMake did not find "
                               "MPI: install Debian's libopenmpi-dev and reconfigure). Run it without mpirun to train in "
                               "one process.");
    }
#endif
    return std::make_unique<SingleProcessCommunicator>();
}

}  // namespace gemma3
