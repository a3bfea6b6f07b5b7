// The execution engine of the CUDA emulator: runs a grid block by block, and the threads of a
// block as cooperative fibers.
//
// Model
//  - A block runs entirely on one OS thread; blocks of one launch may run on several OS threads at
//    once (OpenMP, one block per thread at a time) or one after another in block order
//    (set_worker_threads(1) or GEMMA3_CUDA_EMULATOR_THREADS=1: deterministic, for debugging).
//  - The threads of a block are Boost.Context fibers, each on its own mmap'ed stack with a guard
//    zone below it. A thread runs until it reaches a block barrier (__syncthreads and friends) or a
//    warp collective (__syncwarp, shuffles, votes), or returns. When no thread can run, the
//    scheduler resolves what can be resolved: warp collectives whose named lanes have all arrived,
//    then the block barrier once every live thread waits at it. Threads are resumed in increasing
//    linear index (x fastest, then y, then z); warps are consecutive groups of 32 of them. The
//    shuffled schedule (GEMMA3_CUDA_EMULATOR_SHUFFLE=<seed>, set_shuffle_seed(); see checker.hpp)
//    resumes them in a pseudo-random order instead, drawn anew for every round, and starts the
//    blocks of a launch in a pseudo-random order.
//  - Divergence is an error, never a hang: threads that exited while others wait at
//    __syncthreads(), threads waiting at different __syncthreads() calls (identified by source
//    location), a warp collective that names an exited lane, different intrinsics or masks in one
//    group, or any state in which no thread can proceed. The launch then fails with
//    cudaErrorLaunchFailure and a message naming the kernel, block, thread and call site.
//    This is stricter than hardware, which tolerates some of these patterns by accident.
//  - Shared memory: __shared__ is `static thread_local`. Since a block owns its OS thread until it
//    finishes, a block's static shared arrays are invisible to blocks running concurrently on other
//    threads. Their contents at block start are whatever the previous block on that OS thread left
//    (zero for the first): indeterminate but safe to read, as on the device; kernels and tests must
//    not rely on zero initialisation. Dynamic shared memory is allocated per block with exactly the
//    requested size (so AddressSanitizer sees overruns) and filled with 0xFF bytes (float NaN,
//    integer -1) to expose reads before writes. With the access checker built (checker.hpp), a
//    read of shared memory the block has not written, static or dynamic, fails the launch.
//  - A fiber stack overflow hits the guard zone; a SIGSEGV handler (installed by every launch that
//    finds it missing, running on an alternate signal stack and chaining to the handler it
//    replaced for other faults)
//    prints which emulated thread overflowed and how to raise the stack size, then lets the default
//    action end the process. Frames larger than the guard zone (64 KiB) can jump past it.
//  - AddressSanitizer: every switch is announced with __sanitizer_start_switch_fiber /
//    __sanitizer_finish_switch_fiber, and a reused stack is unpoisoned, so ASan knows which stack is
//    current (Boost 1.74's fcontext fibers do not do this themselves).
#pragma once

#include "checker.hpp"
#include "types.hpp"

#include <boost/context/fiber.hpp>

#include <cxxabi.h>
#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <source_location>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define GEMMA3_EMULATOR_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GEMMA3_EMULATOR_ASAN 1
#endif
#endif
#if defined(GEMMA3_EMULATOR_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace gemma3::cuda::emulator {

// --- Settings ----------------------------------------------------------------------------------
namespace detail {

// A non-negative integer from the environment, or `fallback` when the variable is unset or empty.
inline std::size_t read_environment_count(const char* name, std::size_t fallback) {
    const char* text = std::getenv(name);
    if (text == nullptr || *text == '\0') return fallback;
    std::size_t value = 0;
    const char* end = text + std::strlen(text);
    const auto [stop, error] = std::from_chars(text, end, value);
    if (error != std::errc() || stop != end)
        throw std::invalid_argument(std::string(name) + "=\"" + text + "\": expected a non-negative integer");
    return value;
}

#if defined(GEMMA3_EMULATOR_ASAN)
inline constexpr std::size_t default_stack_kib = 1024;  // ASan's redzones make frames several times larger
#else
inline constexpr std::size_t default_stack_kib = 256;
#endif
inline constexpr std::size_t minimum_stack_bytes = 16 * 1024;
inline constexpr std::size_t guard_bytes = 64 * 1024;

inline std::size_t page_size() noexcept {
    static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return size;
}

inline std::size_t round_stack_bytes(std::size_t bytes) noexcept {
    const std::size_t page = page_size();
    bytes = std::max(bytes, minimum_stack_bytes);
    return (bytes + page - 1) / page * page;
}

inline std::atomic<std::size_t>& stack_bytes_setting() {
    static std::atomic<std::size_t> bytes{
        round_stack_bytes(read_environment_count("GEMMA3_CUDA_EMULATOR_STACK_KIB", default_stack_kib) * 1024)};
    return bytes;
}

// GEMMA3_CUDA_EMULATOR_SHUFFLE=<seed>: the shuffled schedule (checker.hpp); unset or empty: off.
struct ShuffleSetting {
    std::atomic<bool> on{false};
    std::atomic<std::uint64_t> seed{0};
};
inline ShuffleSetting& shuffle_setting() {
    static ShuffleSetting* setting = [] {
        auto* made = new ShuffleSetting();  // never freed: read by launches until the process ends
        const char* text = std::getenv("GEMMA3_CUDA_EMULATOR_SHUFFLE");
        if (text != nullptr && *text != '\0') {
            made->seed.store(read_environment_count("GEMMA3_CUDA_EMULATOR_SHUFFLE", 0));
            made->on.store(true);
        }
        return made;
    }();
    return *setting;
}

inline std::atomic<int>& worker_threads_setting() {
    static std::atomic<int> threads{
        static_cast<int>(std::min<std::size_t>(read_environment_count("GEMMA3_CUDA_EMULATOR_THREADS", 0), 4096))};
    return threads;
}

}  // namespace detail

// Size of each emulated GPU thread's stack (default 256 KiB, 1 MiB under AddressSanitizer;
// GEMMA3_CUDA_EMULATOR_STACK_KIB overrides). Rounded up to whole pages, at least 16 KiB.
inline std::size_t stack_bytes() { return detail::stack_bytes_setting().load(); }
inline void set_stack_bytes(std::size_t bytes) { detail::stack_bytes_setting().store(detail::round_stack_bytes(bytes)); }

// OS threads that run blocks: 0 (the default) means OpenMP's thread count, 1 runs the blocks one
// after another in block order, which makes results (float atomics included) reproducible.
// GEMMA3_CUDA_EMULATOR_THREADS sets the initial value.
inline int worker_threads() { return detail::worker_threads_setting().load(); }
inline void set_worker_threads(int count) {
    if (count < 0) throw std::invalid_argument("set_worker_threads: " + std::to_string(count) + " is negative");
    detail::worker_threads_setting().store(count);
}

// The shuffled schedule (checker.hpp): the seed, or nothing when launches run blocks and threads
// in order. GEMMA3_CUDA_EMULATOR_SHUFFLE sets the initial value.
inline std::optional<std::uint64_t> shuffle_seed() {
    const detail::ShuffleSetting& setting = detail::shuffle_setting();
    if (!setting.on.load()) return std::nullopt;
    return setting.seed.load();
}
inline void set_shuffle_seed(std::optional<std::uint64_t> seed) {
    detail::ShuffleSetting& setting = detail::shuffle_setting();
    setting.seed.store(seed.value_or(0));
    setting.on.store(seed.has_value());
}

// Restores the emulator settings it found when it goes out of scope (for tests).
class ScopedSettings {
public:
    ScopedSettings()
        : stack_bytes_(stack_bytes()), worker_threads_(worker_threads()), shuffle_seed_(shuffle_seed()),
          access_checks_(access_checks()) {}
    ~ScopedSettings() {
        detail::stack_bytes_setting().store(stack_bytes_);
        detail::worker_threads_setting().store(worker_threads_);
        set_shuffle_seed(shuffle_seed_);
        set_access_checks(access_checks_);
    }
    ScopedSettings(const ScopedSettings&) = delete;
    ScopedSettings& operator=(const ScopedSettings&) = delete;

private:
    std::size_t stack_bytes_;
    int worker_threads_;
    std::optional<std::uint64_t> shuffle_seed_;
    bool access_checks_;
};

namespace detail {

using api::dim3;
using api::uint3;

// splitmix64: the pseudo-random numbers of the shuffled schedule.
inline std::uint64_t mix_bits(std::uint64_t value) noexcept {
    value += 0x9E37'79B9'7F4A'7C15ull;
    value = (value ^ (value >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    value = (value ^ (value >> 27)) * 0x94D0'49BB'1331'11EBull;
    return value ^ (value >> 31);
}

// A uniformly shuffled 0..count-1 (Fisher-Yates); `state` advances.
inline void shuffle_order(std::vector<unsigned>& order, std::size_t count, std::uint64_t& state) {
    order.resize(count);
    for (std::size_t i = 0; i < count; ++i) order[i] = static_cast<unsigned>(i);
    for (std::size_t i = count; i > 1; --i) {
        state = mix_bits(state);
        std::swap(order[i - 1], order[state % i]);
    }
}

// --- What a launch asks for ----------------------------------------------------------------------
struct KernelLaunch {
    std::optional<std::uint64_t> shuffle_seed;  // set by run_grid: the shuffled schedule of this launch
    const void* kernel_address = nullptr;
    void (*entry)(const void* closure) = nullptr;  // runs the kernel body for the current thread
    const void* closure = nullptr;
    dim3 grid;
    dim3 block;
    std::size_t dynamic_shared_bytes = 0;
};

// A fault of the kernel (divergence, deadlock, misuse of an intrinsic): fails the launch.
class KernelFault : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Thrown inside a fiber to unwind it when its block is abandoned. Deliberately not derived from
// std::exception, so kernel code cannot swallow it by accident.
struct BlockAbort {};

// The demangled name of the function at `address` (needs the symbol in the dynamic symbol table,
// e.g. an executable linked with -rdynamic), or "kernel at 0x..." otherwise. Cached: the strings
// live as long as the program.
inline const char* function_name(const void* address) {
    static std::mutex mutex;
    static auto* names = new std::map<const void*, std::string>();  // never freed: handed-out pointers stay valid
    const std::lock_guard lock(mutex);
    auto found = names->find(address);
    if (found != names->end()) return found->second.c_str();
    std::string name;
    Dl_info info{};
    if (::dladdr(address, &info) != 0 && info.dli_sname != nullptr && info.dli_saddr == address) {
        int status = 0;
        char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
        name = status == 0 && demangled != nullptr ? demangled : info.dli_sname;
        std::free(demangled);
    } else {
        char buffer[32];
        const auto written = std::to_chars(buffer, buffer + sizeof buffer, reinterpret_cast<std::uintptr_t>(address), 16);
        name = "kernel at 0x" + std::string(buffer, written.ptr);
    }
    return names->emplace(address, std::move(name)).first->second.c_str();
}

// Built by appending: GCC 12 gives a false -Wrestrict for "(" + std::string at -O3 (GCC bug 105651).
inline std::string format_dims(uint3 value) {
    std::string text(1, '(');
    text += std::to_string(value.x);
    text += ',';
    text += std::to_string(value.y);
    text += ',';
    text += std::to_string(value.z);
    text += ')';
    return text;
}

inline std::string format_site(const std::source_location& where) {
    return std::string(where.file_name()) + ":" + std::to_string(where.line());
}

inline std::string format_hex(std::uint32_t value) {
    char buffer[16];
    const auto written = std::to_chars(buffer, buffer + sizeof buffer, value, 16);
    return "0x" + std::string(buffer, written.ptr);
}

// --- Fiber stacks ----------------------------------------------------------------------------------
// One mapping: a PROT_NONE guard zone at the low end, then `usable` bytes of stack (stacks grow down).
struct StackMapping {
    char* base = nullptr;
    std::size_t usable = 0;
    char* bottom() const noexcept { return base + guard_bytes; }
    char* top() const noexcept { return bottom() + usable; }
};

// Stacks of finished fibers are kept for the next block on this OS thread.
class StackPool {
public:
    StackPool() = default;
    StackPool(const StackPool&) = delete;
    StackPool& operator=(const StackPool&) = delete;
    ~StackPool() {
        for (const StackMapping& stack : free_) unmap(stack);
    }

    StackMapping take(std::size_t usable) {
        while (!free_.empty()) {
            const StackMapping stack = free_.back();
            free_.pop_back();
            if (stack.usable == usable) {
#if defined(GEMMA3_EMULATOR_ASAN)
                // Frames of the previous fiber (which ended with a context switch, not a return)
                // may have left poisoned redzones behind.
                ASAN_UNPOISON_MEMORY_REGION(stack.bottom(), stack.usable);
#endif
                return stack;
            }
            unmap(stack);  // the stack size setting changed
        }
        const std::size_t total = guard_bytes + usable;
        void* memory = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                              -1, 0);
        if (memory == MAP_FAILED)
            throw std::system_error(errno, std::generic_category(),
                                    "CUDA emulator: cannot map a fiber stack of " + std::to_string(total) + " bytes");
        if (::mprotect(memory, guard_bytes, PROT_NONE) != 0) {
            const int error = errno;
            ::munmap(memory, total);
            throw std::system_error(error, std::generic_category(), "CUDA emulator: cannot protect a stack guard zone");
        }
        return StackMapping{static_cast<char*>(memory), usable};
    }

    void give_back(const StackMapping& stack) { free_.push_back(stack); }

private:
    static void unmap(const StackMapping& stack) noexcept { ::munmap(stack.base, guard_bytes + stack.usable); }
    std::vector<StackMapping> free_;
};

// --- AddressSanitizer fiber annotations -------------------------------------------------------------
inline void asan_start_switch([[maybe_unused]] void** fake_stack_save, [[maybe_unused]] const void* bottom,
                              [[maybe_unused]] std::size_t size) noexcept {
#if defined(GEMMA3_EMULATOR_ASAN)
    __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#endif
}
inline void asan_finish_switch([[maybe_unused]] void* fake_stack_save, [[maybe_unused]] const void** old_bottom,
                               [[maybe_unused]] std::size_t* old_size) noexcept {
#if defined(GEMMA3_EMULATOR_ASAN)
    __sanitizer_finish_switch_fiber(fake_stack_save, old_bottom, old_size);
#endif
}

// --- Emulated threads ----------------------------------------------------------------------------
enum class Wait : std::uint8_t { ready, barrier, warp, exited };
enum class BarrierKind : std::uint8_t { plain, count, all, any };
enum class WarpOp : std::uint8_t { syncwarp, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all };

inline const char* barrier_name(BarrierKind kind) noexcept {
    switch (kind) {
        case BarrierKind::plain: return "__syncthreads()";
        case BarrierKind::count: return "__syncthreads_count()";
        case BarrierKind::all: return "__syncthreads_and()";
        case BarrierKind::any: return "__syncthreads_or()";
    }
    return "?";
}

inline const char* warp_op_name(WarpOp op) noexcept {
    switch (op) {
        case WarpOp::syncwarp: return "__syncwarp";
        case WarpOp::shfl_idx: return "__shfl_sync";
        case WarpOp::shfl_up: return "__shfl_up_sync";
        case WarpOp::shfl_down: return "__shfl_down_sync";
        case WarpOp::shfl_xor: return "__shfl_xor_sync";
        case WarpOp::ballot: return "__ballot_sync";
        case WarpOp::any: return "__any_sync";
        case WarpOp::all: return "__all_sync";
    }
    return "?";
}

struct EmulatedThread {
    boost::context::fiber context;    // this thread, while suspended
    boost::context::fiber scheduler;  // the scheduler, while this thread runs
    uint3 index{};
    unsigned linear = 0;
    Wait wait = Wait::ready;
    bool abort = false;
    // At a block barrier or warp collective:
    std::source_location site{};
    BarrierKind barrier_kind = BarrierKind::plain;
    WarpOp warp_op = WarpOp::syncwarp;
    std::uint32_t mask = 0;
    int width = 32;
    int operand = 0;
    std::uint64_t value = 0;
    std::uint64_t result = 0;
    // Stack and AddressSanitizer bookkeeping:
    StackMapping stack{};
    void* fake_stack = nullptr;
    const void* scheduler_stack_bottom = nullptr;
    std::size_t scheduler_stack_size = 0;
};

// Boost.Context stack allocator drawing from this OS thread's pool and telling the thread where its
// stack is (for the guard-zone check and the ASan annotations).
struct FiberStackAllocator {
    StackPool* pool;
    EmulatedThread* owner;
    std::size_t usable;

    boost::context::stack_context allocate() {
        const StackMapping stack = pool->take(usable);
        owner->stack = stack;
        boost::context::stack_context context;
        context.size = stack.usable;
        context.sp = stack.top();
        return context;
    }
    void deallocate(boost::context::stack_context& context) noexcept {
        char* top = static_cast<char*>(context.sp);
        pool->give_back(StackMapping{top - context.size - guard_bytes, context.size});
    }
};

class BlockRun;

// Per-OS-thread state that the kernel's intrinsics and the SIGSEGV handler read.
inline thread_local EmulatedThread* tls_thread = nullptr;
inline thread_local BlockRun* tls_block = nullptr;
inline thread_local uint3 tls_thread_idx{};
inline thread_local uint3 tls_block_idx{};
inline thread_local dim3 tls_block_dim{};
inline thread_local dim3 tls_grid_dim{};
inline thread_local unsigned char* tls_dynamic_shared = nullptr;
inline thread_local const char* tls_guard_low = nullptr;
inline thread_local const char* tls_guard_high = nullptr;

inline const uint3& thread_idx() noexcept { return tls_thread_idx; }
inline const uint3& block_idx() noexcept { return tls_block_idx; }
inline const dim3& block_dim() noexcept { return tls_block_dim; }
inline const dim3& grid_dim() noexcept { return tls_grid_dim; }

// --- Stack overflow reporting --------------------------------------------------------------------
// Formats without allocating, for use inside the signal handler.
class SignalSafeMessage {
public:
    void text(const char* s) noexcept {
        while (*s != '\0' && length_ < sizeof buffer_) buffer_[length_++] = *s++;
    }
    void number(std::uint64_t value) noexcept {
        char digits[24];
        const auto written = std::to_chars(digits, digits + sizeof digits, value);
        *written.ptr = '\0';
        text(digits);
    }
    void dims(uint3 value) noexcept {
        text("(");
        number(value.x);
        text(",");
        number(value.y);
        text(",");
        number(value.z);
        text(")");
    }
    void write_to_stderr() const noexcept {
        std::size_t done = 0;
        while (done < length_) {
            const ssize_t written = ::write(STDERR_FILENO, buffer_ + done, length_ - done);
            if (written <= 0) return;
            done += static_cast<std::size_t>(written);
        }
    }

private:
    char buffer_[640];
    std::size_t length_ = 0;
};

inline struct sigaction& previous_segv_action() noexcept {
    static struct sigaction action{};
    return action;
}

inline void restore_default_segv_action() noexcept {
    struct sigaction action{};
    action.sa_handler = SIG_DFL;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGSEGV, &action, nullptr);
}

inline void on_segv(int signal_number, siginfo_t* info, void* context) {
    const char* address = static_cast<const char*>(info->si_addr);
    if (tls_guard_low != nullptr && address >= tls_guard_low && address < tls_guard_high) {
        SignalSafeMessage message;
        message.text("gemma3 CUDA emulator: stack overflow in an emulated GPU thread: thread ");
        message.dims(tls_thread_idx);
        message.text(" of block ");
        message.dims(tls_block_idx);
        message.text(" ran past the end of its ");
        message.number(tls_thread != nullptr ? tls_thread->stack.usable / 1024 : 0);
        message.text(" KiB fiber stack. Raise it with GEMMA3_CUDA_EMULATOR_STACK_KIB=<KiB> or "
                     "gemma3::cuda::emulator::set_stack_bytes().\n");
        message.write_to_stderr();
        restore_default_segv_action();  // the faulting access repeats and the default action ends the process
        return;
    }
    const struct sigaction& previous = previous_segv_action();
    if ((previous.sa_flags & SA_SIGINFO) != 0 && previous.sa_sigaction != nullptr) {
        previous.sa_sigaction(signal_number, info, context);
        return;
    }
    if ((previous.sa_flags & SA_SIGINFO) == 0 && previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(signal_number);
        return;
    }
    restore_default_segv_action();
}

// Checked at every launch, because other code may have replaced the handler since (doctest, for
// one, installs and restores its own around every test case).
inline void install_stack_overflow_handler() {
    static std::mutex mutex;
    const std::lock_guard lock(mutex);
    struct sigaction current{};
    if (::sigaction(SIGSEGV, nullptr, &current) != 0) return;
    if ((current.sa_flags & SA_SIGINFO) != 0 && current.sa_sigaction == &on_segv) return;
    struct sigaction action{};
    action.sa_sigaction = &on_segv;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    previous_segv_action() = current;
    ::sigaction(SIGSEGV, &action, nullptr);
}

// The SIGSEGV handler must not run on the overflowed fiber stack, so every OS thread that runs
// blocks needs an alternate signal stack: its own if it has one (AddressSanitizer and doctest
// install theirs), ours otherwise. Checked at every launch, since others may remove theirs.
class AlternateSignalStack {
public:
    AlternateSignalStack() = default;
    AlternateSignalStack(const AlternateSignalStack&) = delete;
    AlternateSignalStack& operator=(const AlternateSignalStack&) = delete;
    ~AlternateSignalStack() {
        stack_t current{};
        if (!memory_ || ::sigaltstack(nullptr, &current) != 0 || current.ss_sp != memory_.get()) return;
        stack_t disable{};
        disable.ss_flags = SS_DISABLE;
        ::sigaltstack(&disable, nullptr);
    }

    void ensure() {
        stack_t current{};
        if (::sigaltstack(nullptr, &current) == 0 && (current.ss_flags & SS_DISABLE) == 0) return;
        if (!memory_) memory_ = std::make_unique<char[]>(size);
        stack_t stack{};
        stack.ss_sp = memory_.get();
        stack.ss_size = size;
        stack.ss_flags = 0;
        ::sigaltstack(&stack, nullptr);
    }

private:
    static constexpr std::size_t size = 64 * 1024;
    std::unique_ptr<char[]> memory_;
};

// What one OS thread keeps between the blocks it runs.
struct Worker {
    AlternateSignalStack signal_stack;
    StackPool stacks;
    std::vector<EmulatedThread> threads;
    std::vector<unsigned> order;  // the resume order of a round (shuffled schedule)
};

inline Worker& this_worker() {
    thread_local Worker worker;
    return worker;
}

// Dynamic shared memory of one block: exactly the requested size, 256-byte aligned, poisoned.
class DynamicSharedMemory {
public:
    explicit DynamicSharedMemory(std::size_t bytes) : bytes_(bytes) {
        if (bytes_ == 0) return;
        memory_ = static_cast<unsigned char*>(::operator new(bytes_, std::align_val_t{256}));
        std::memset(memory_, 0xFF, bytes_);
    }
    ~DynamicSharedMemory() {
        if (memory_ != nullptr) ::operator delete(memory_, bytes_, std::align_val_t{256});
    }
    DynamicSharedMemory(const DynamicSharedMemory&) = delete;
    DynamicSharedMemory& operator=(const DynamicSharedMemory&) = delete;
    unsigned char* data() const noexcept { return memory_; }

private:
    std::size_t bytes_;
    unsigned char* memory_ = nullptr;
};

// --- One block -----------------------------------------------------------------------------------
class BlockRun {
public:
    BlockRun(const KernelLaunch& launch, uint3 block_index, Worker& worker)
        : launch_(launch), block_index_(block_index), worker_(worker), shared_(launch.dynamic_shared_bytes) {}

    BlockRun(const BlockRun&) = delete;
    BlockRun& operator=(const BlockRun&) = delete;

    ~BlockRun() {
        abort_all();  // only does something if run() left early through an unexpected exception
        clear_thread_state();
    }

    // Runs every thread of the block to completion; throws KernelFault on a fault.
    void run() {
        const dim3 block = launch_.block;
        const unsigned count = block.x * block.y * block.z;
        std::vector<EmulatedThread>& threads = worker_.threads;
        threads.clear();
        threads.resize(count);  // never resized again while fibers refer to the elements
        tls_block = this;
        tls_block_idx = block_index_;
        tls_block_dim = launch_.block;
        tls_grid_dim = launch_.grid;
        tls_dynamic_shared = shared_.data();
        check::block_begin(count, shared_.data(), launch_.dynamic_shared_bytes);
        const std::size_t usable = stack_bytes();
        for (unsigned i = 0; i < count; ++i) {
            EmulatedThread& thread = threads[i];
            thread.linear = i;
            thread.index = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
            thread.context = boost::context::fiber(
                std::allocator_arg, FiberStackAllocator{&worker_.stacks, &thread, usable},
                [this, &thread](boost::context::fiber&& scheduler) { return fiber_main(thread, std::move(scheduler)); });
        }
        std::uint64_t shuffle_state = 0;
        if (launch_.shuffle_seed)
            shuffle_state = mix_bits(*launch_.shuffle_seed ^
                                     mix_bits(block_index_.x + (std::uint64_t{block_index_.y} << 21) +
                                              (std::uint64_t{block_index_.z} << 42)));
        try {
            for (;;) {
                if (launch_.shuffle_seed) {
                    shuffle_order(worker_.order, count, shuffle_state);
                    for (const unsigned i : worker_.order) {
                        EmulatedThread& thread = threads[i];
                        if (thread.wait != Wait::ready) continue;
                        resume(thread);
                        if (fault_) throw KernelFault(*fault_);
                    }
                } else {
                    for (EmulatedThread& thread : threads) {
                        if (thread.wait != Wait::ready) continue;
                        resume(thread);
                        if (fault_) throw KernelFault(*fault_);
                    }
                }
                if (exited_ == count) break;
                if (resolve_warp_collectives()) continue;
                if (release_barrier()) continue;
                throw KernelFault(describe_deadlock());
            }
        } catch (...) {
            abort_all();
            throw;
        }
    }

    // "kernel NAME, block (..), thread (..)": where a fault happened.
    std::string describe(const EmulatedThread& thread) const {
        return std::string("kernel ") + function_name(launch_.kernel_address) + ", block " + format_dims(block_index_) +
               ", thread " + format_dims(thread.index) + " (warp " + std::to_string(thread.linear / 32) + ", lane " +
               std::to_string(thread.linear % 32) + ")";
    }

    unsigned thread_count() const noexcept { return static_cast<unsigned>(worker_.threads.size()); }

    // A fault found outside the kernel's own code (the access checker): fails the launch when the
    // running thread next yields.
    void report_fault(std::string message) { record_fault(std::move(message)); }

private:
    boost::context::fiber fiber_main(EmulatedThread& thread, boost::context::fiber&& scheduler) {
        asan_finish_switch(nullptr, &thread.scheduler_stack_bottom, &thread.scheduler_stack_size);
        thread.scheduler = std::move(scheduler);
        if (!thread.abort) {
            try {
                launch_.entry(launch_.closure);
            } catch (const boost::context::detail::forced_unwind&) {
                throw;  // Boost.Context unwinding a fiber that is being destroyed
            } catch (const BlockAbort&) {
                // the block was abandoned after a fault elsewhere
            } catch (const KernelFault& fault) {
                record_fault(fault.what());
            } catch (const std::exception& error) {
                record_fault(describe(thread) + ": " + error.what());
            } catch (...) {
                record_fault(describe(thread) + ": unknown exception");
            }
        }
        thread.wait = Wait::exited;
        ++exited_;
        asan_start_switch(nullptr, thread.scheduler_stack_bottom, thread.scheduler_stack_size);
        return std::move(thread.scheduler);
    }

    void resume(EmulatedThread& thread) {
        tls_thread = &thread;
        tls_thread_idx = thread.index;
        tls_guard_low = thread.stack.base;
        tls_guard_high = thread.stack.bottom();
        void* fake_stack = nullptr;
        asan_start_switch(&fake_stack, thread.stack.bottom(), thread.stack.usable);
        thread.context = std::move(thread.context).resume();
        asan_finish_switch(fake_stack, nullptr, nullptr);
        tls_thread = nullptr;
        tls_guard_low = nullptr;
        tls_guard_high = nullptr;
    }

    void record_fault(std::string message) {
        if (!fault_) fault_ = std::move(message);
    }

    // Resumes every unfinished fiber with `abort` set, so that it unwinds and returns.
    void abort_all() noexcept {
        for (EmulatedThread& thread : worker_.threads) {
            if (!thread.context) continue;
            thread.abort = true;
            resume(thread);
        }
    }

    void clear_thread_state() noexcept {
        check::block_end();
        tls_block = nullptr;
        tls_dynamic_shared = nullptr;
        tls_block_idx = {};
        tls_thread_idx = {};
    }

    // Completes every warp collective whose named lanes have all arrived with the same mask.
    bool resolve_warp_collectives() {
        std::vector<EmulatedThread>& threads = worker_.threads;
        const unsigned count = thread_count();
        bool progress = false;
        for (unsigned warp_base = 0; warp_base < count; warp_base += 32) {
            const unsigned lanes = std::min(32u, count - warp_base);
            for (unsigned lane = 0; lane < lanes; ++lane) {
                EmulatedThread& first = threads[warp_base + lane];
                if (first.wait != Wait::warp) continue;
                const std::uint32_t mask = first.mask;
                bool complete = true;
                for (unsigned j = 0; j < 32 && complete; ++j) {
                    if (((mask >> j) & 1u) == 0) continue;
                    const EmulatedThread& other = threads[warp_base + j];  // existence checked at the call
                    if (other.wait == Wait::exited)
                        throw KernelFault(describe(first) + ": " + warp_op_name(first.warp_op) + " at " +
                                          format_site(first.site) + " with mask " + format_hex(mask) + " names lane " +
                                          std::to_string(j) + ", which has already exited");
                    if (other.wait != Wait::warp || other.mask != mask) complete = false;
                }
                if (!complete) continue;
                for (unsigned j = 0; j < 32; ++j) {
                    if (((mask >> j) & 1u) == 0) continue;
                    const EmulatedThread& other = threads[warp_base + j];
                    if (other.warp_op != first.warp_op || other.width != first.width)
                        throw KernelFault(describe(first) + ": the lanes of mask " + format_hex(mask) +
                                          " called different warp intrinsics: " + warp_op_name(first.warp_op) +
                                          " (width " + std::to_string(first.width) + ") at " + format_site(first.site) +
                                          " and, in lane " + std::to_string(j) + ", " + warp_op_name(other.warp_op) +
                                          " (width " + std::to_string(other.width) + ") at " + format_site(other.site));
                }
                complete_warp_collective(warp_base, mask);
                progress = true;
            }
        }
        return progress;
    }

    void complete_warp_collective(unsigned warp_base, std::uint32_t mask) {
        std::vector<EmulatedThread>& threads = worker_.threads;
        std::uint32_t predicate_bits = 0;
        for (unsigned j = 0; j < 32; ++j)
            if (((mask >> j) & 1u) != 0 && threads[warp_base + j].value != 0) predicate_bits |= 1u << j;
        for (unsigned lane = 0; lane < 32; ++lane) {
            if (((mask >> lane) & 1u) == 0) continue;
            EmulatedThread& thread = threads[warp_base + lane];
            switch (thread.warp_op) {
                case WarpOp::syncwarp: thread.result = 0; break;
                case WarpOp::ballot: thread.result = predicate_bits; break;
                case WarpOp::any: thread.result = predicate_bits != 0 ? 1 : 0; break;
                case WarpOp::all: thread.result = predicate_bits == mask ? 1 : 0; break;
                default: {
                    const unsigned source = shuffle_source_lane(thread.warp_op, lane, thread.operand, thread.width);
                    if (((mask >> source) & 1u) == 0)
                        throw KernelFault(describe(thread) + ": " + warp_op_name(thread.warp_op) + " at " +
                                          format_site(thread.site) + " reads lane " + std::to_string(source) +
                                          ", which is not named in the mask " + format_hex(mask) +
                                          " (the value would be undefined on the device)");
                    thread.result = threads[warp_base + source].value;
                }
            }
        }
        for (unsigned lane = 0; lane < 32; ++lane)
            if (((mask >> lane) & 1u) != 0) threads[warp_base + lane].wait = Wait::ready;
        if (threads[warp_base + std::countr_zero(mask)].warp_op == WarpOp::syncwarp) check::warp_synchronized(warp_base / 32);
    }

    // The lane a shuffle reads, following the pseudo-code of PTX's shfl.sync: the operand's low five
    // bits are used; a source outside the caller's segment of `width` lanes (above it for down and
    // xor, below it for up) means the caller keeps its own value.
    static unsigned shuffle_source_lane(WarpOp op, unsigned lane, int operand, int width) noexcept {
        const unsigned b = static_cast<unsigned>(operand) & 31u;
        const unsigned segment_mask = static_cast<unsigned>(32 - width) & 31u;  // the bits that select a segment
        const unsigned min_lane = lane & segment_mask;
        const unsigned max_lane = min_lane | (31u & ~segment_mask);
        switch (op) {
            case WarpOp::shfl_up: {
                const int source = static_cast<int>(lane) - static_cast<int>(b);
                return source >= static_cast<int>(min_lane) ? static_cast<unsigned>(source) : lane;
            }
            case WarpOp::shfl_down: {
                const unsigned source = lane + b;
                return source <= max_lane ? source : lane;
            }
            case WarpOp::shfl_xor: {
                const unsigned source = lane ^ b;
                return source <= max_lane ? source : lane;
            }
            default: return min_lane | (b & ~segment_mask);  // shfl_idx
        }
    }

    // Releases the block barrier once every live thread waits at it; reports divergence.
    bool release_barrier() {
        std::vector<EmulatedThread>& threads = worker_.threads;
        const EmulatedThread* first = nullptr;
        const EmulatedThread* different = nullptr;
        const EmulatedThread* exited = nullptr;
        unsigned waiting = 0;
        for (const EmulatedThread& thread : threads) {
            if (thread.wait == Wait::warp) return false;  // stuck warp collective: a deadlock, reported by the caller
            if (thread.wait == Wait::exited) {
                if (exited == nullptr) exited = &thread;
                continue;
            }
            if (thread.wait != Wait::barrier) return false;
            ++waiting;
            if (first == nullptr) {
                first = &thread;
            } else if (different == nullptr &&
                       (thread.barrier_kind != first->barrier_kind || !same_site(thread.site, first->site))) {
                different = &thread;
            }
        }
        if (first == nullptr) return false;
        if (exited != nullptr)
            throw KernelFault(describe(*first) + ": divergent " + barrier_name(first->barrier_kind) + " at " +
                              format_site(first->site) + ": " + std::to_string(waiting) + " of " +
                              std::to_string(thread_count()) + " threads wait at the barrier, but " +
                              std::to_string(exited_) + " have already exited (e.g. thread " +
                              format_dims(exited->index) + "); every thread of the block must reach it");
        if (different != nullptr)
            throw KernelFault(describe(*first) + ": divergent barriers: threads wait at different barriers: " +
                              barrier_name(first->barrier_kind) + " at " + format_site(first->site) + " and, in thread " +
                              format_dims(different->index) + ", " + barrier_name(different->barrier_kind) + " at " +
                              format_site(different->site));
        int count = 0;
        for (const EmulatedThread& thread : threads) count += thread.value != 0 ? 1 : 0;
        const int total = static_cast<int>(threads.size());
        for (EmulatedThread& thread : threads) {
            switch (thread.barrier_kind) {
                case BarrierKind::plain: thread.result = 0; break;
                case BarrierKind::count: thread.result = static_cast<std::uint64_t>(count); break;
                case BarrierKind::all: thread.result = count == total ? 1 : 0; break;
                case BarrierKind::any: thread.result = count != 0 ? 1 : 0; break;
            }
            thread.wait = Wait::ready;
        }
        check::barrier();
        return true;
    }

    std::string describe_deadlock() const {
        const std::vector<EmulatedThread>& threads = worker_.threads;
        std::string message = std::string("kernel ") + function_name(launch_.kernel_address) + ", block " +
                              format_dims(block_index_) + ": deadlock: no thread can proceed.";
        unsigned at_barrier = 0;
        const EmulatedThread* barrier_example = nullptr;
        for (const EmulatedThread& thread : threads) {
            if (thread.wait != Wait::barrier) continue;
            ++at_barrier;
            if (barrier_example == nullptr) barrier_example = &thread;
        }
        if (barrier_example != nullptr)
            message += " " + std::to_string(at_barrier) + " threads wait at " + barrier_name(barrier_example->barrier_kind) +
                       " (e.g. thread " + format_dims(barrier_example->index) + " at " +
                       format_site(barrier_example->site) + ").";
        unsigned reported = 0;
        for (const EmulatedThread& thread : threads) {
            if (thread.wait != Wait::warp) continue;
            if (++reported > 8) {
                message += " ...";
                break;
            }
            message += " Thread " + format_dims(thread.index) + " (warp " + std::to_string(thread.linear / 32) +
                       ", lane " + std::to_string(thread.linear % 32) + ") waits at " + warp_op_name(thread.warp_op) +
                       " with mask " + format_hex(thread.mask) + " at " + format_site(thread.site) + ".";
        }
        if (exited_ > 0) message += " " + std::to_string(exited_) + " threads have exited.";
        return message;
    }

    static bool same_site(const std::source_location& a, const std::source_location& b) noexcept {
        return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
    }

    const KernelLaunch& launch_;
    uint3 block_index_;
    Worker& worker_;
    DynamicSharedMemory shared_;
    unsigned exited_ = 0;
    std::optional<std::string> fault_;
};

// --- Intrinsics' entry into the scheduler -----------------------------------------------------------
inline EmulatedThread& current_thread(const char* intrinsic, const std::source_location& where) {
    if (tls_thread == nullptr)
        throw std::logic_error(std::string(intrinsic) + " called outside an emulated kernel at " + format_site(where));
    return *tls_thread;
}

[[noreturn]] inline void kernel_fault(const EmulatedThread& thread, const char* intrinsic,
                                      const std::source_location& where, const std::string& problem) {
    throw KernelFault(tls_block->describe(thread) + ": " + intrinsic + " at " + format_site(where) + ": " + problem);
}

// Suspends the calling emulated thread until the scheduler resumes it.
inline void yield_to_scheduler(EmulatedThread& thread) {
    asan_start_switch(&thread.fake_stack, thread.scheduler_stack_bottom, thread.scheduler_stack_size);
    thread.scheduler = std::move(thread.scheduler).resume();
    asan_finish_switch(thread.fake_stack, &thread.scheduler_stack_bottom, &thread.scheduler_stack_size);
    if (thread.abort) throw BlockAbort{};
}

inline int block_barrier(BarrierKind kind, int predicate, const std::source_location& where) {
    EmulatedThread& thread = current_thread(barrier_name(kind), where);
    thread.barrier_kind = kind;
    thread.value = predicate != 0 ? 1 : 0;
    thread.site = where;
    thread.wait = Wait::barrier;
    yield_to_scheduler(thread);
    return static_cast<int>(thread.result);
}

inline std::uint64_t warp_collective(WarpOp op, std::uint32_t mask, std::uint64_t value, int operand, int width,
                                     const std::source_location& where) {
    EmulatedThread& thread = current_thread(warp_op_name(op), where);
    const unsigned lane = thread.linear % 32;
    const unsigned warp_base = thread.linear - lane;
    const unsigned lanes = std::min(32u, tls_block->thread_count() - warp_base);
    if (((mask >> lane) & 1u) == 0)
        kernel_fault(thread, warp_op_name(op), where, "the mask " + format_hex(mask) + " does not name the calling lane " + std::to_string(lane));
    if (lanes < 32 && (mask >> lanes) != 0)
        kernel_fault(thread, warp_op_name(op), where,
                     "the mask names lanes at or above " + std::to_string(lanes) + ", which do not exist (this warp has only " +
                         std::to_string(lanes) + " threads)");
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        kernel_fault(thread, warp_op_name(op), where, "width " + std::to_string(width) + " is not a power of two in [1, 32]");
    thread.warp_op = op;
    thread.mask = mask;
    thread.value = value;
    thread.operand = operand;
    thread.width = width;
    thread.site = where;
    thread.wait = Wait::warp;
    yield_to_scheduler(thread);
    return thread.result;
}

// --- A grid ---------------------------------------------------------------------------------------
// Runs every block; throws KernelFault with the fault of the lowest-numbered failing block among
// those that ran (after a fault, blocks not yet started are skipped).
inline void run_grid(const KernelLaunch& requested) {
    install_stack_overflow_handler();
    const std::uint64_t gx = requested.grid.x, gy = requested.grid.y, gz = requested.grid.z;
    const std::uint64_t blocks = gx * gy * gz;
    std::atomic<bool> failed{false};
    std::mutex failure_mutex;
    std::uint64_t failed_block = blocks;
    std::string failure;
    static std::atomic<std::uint64_t> launches{0};
    const std::uint64_t launch_serial = ++launches;
    KernelLaunch launch = requested;
    // Shuffled schedule: a seed per launch, and the blocks in a shuffled order.
    std::vector<unsigned> block_order;
    if (const std::optional<std::uint64_t> seed = shuffle_seed()) {
        launch.shuffle_seed = mix_bits(*seed ^ mix_bits(launch_serial));
        std::uint64_t state = *launch.shuffle_seed;
        if (blocks <= (std::uint64_t{1} << 24)) shuffle_order(block_order, static_cast<std::size_t>(blocks), state);
    }
    const auto run_block = [&](std::uint64_t position) {
        if (failed.load(std::memory_order_relaxed)) return;
        const std::uint64_t linear = block_order.empty() ? position : block_order[position];
        thread_local std::uint64_t checked_launch = 0;
        if (checked_launch != launch_serial) {
            this_worker().signal_stack.ensure();
            checked_launch = launch_serial;
        }
        const uint3 index{static_cast<unsigned>(linear % gx), static_cast<unsigned>(linear / gx % gy),
                          static_cast<unsigned>(linear / (gx * gy))};
        try {
            BlockRun block(launch, index, this_worker());
            block.run();
        } catch (const std::exception& error) {
            const std::lock_guard lock(failure_mutex);
            if (linear < failed_block) {
                failed_block = linear;
                failure = error.what();
            }
            failed.store(true);
        }
    };
    int workers = worker_threads();
#if defined(_OPENMP)
    if (workers == 0) workers = omp_get_max_threads();
#else
    workers = 1;
#endif
    if (workers <= 1 || blocks == 1) {
        for (std::uint64_t b = 0; b < blocks; ++b) run_block(b);
    } else {
        const auto block_count = static_cast<std::int64_t>(blocks);
#pragma omp parallel for schedule(dynamic, 1) num_threads(workers)
        for (std::int64_t b = 0; b < block_count; ++b) run_block(static_cast<std::uint64_t>(b));
    }
    if (failed.load()) throw KernelFault(failure);
}

}  // namespace detail
}  // namespace gemma3::cuda::emulator
