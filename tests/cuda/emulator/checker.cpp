// The shared-memory access checker of the CUDA emulator (racecheck, initcheck): see checker.hpp.
// Compiled once per test executable, WITHOUT the access instrumentation (cmake/gemma3Cuda.cmake),
// since it implements the entry points that the instrumented kernel sources call.
#if !defined(GEMMA3_CUDA_EMULATOR_CHECK)
#error "checker.cpp is built only with GEMMA3_CUDA_EMULATOR_CHECK defined"
#endif

#include "scheduler.hpp"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

// The anchor that locates the executable's TLS block on each OS thread: its address minus its
// offset in the TLS segment (from the symbol table) is the block's start.
extern "C" {
thread_local unsigned char gemma3_cuda_emulator_tls_anchor = 0;
}

namespace gemma3::cuda::emulator {
namespace {

std::atomic<bool>& enabled_setting() {
    static std::atomic<bool> enabled{detail::read_environment_count("GEMMA3_CUDA_EMULATOR_CHECK", 1) != 0};
    return enabled;
}

// --- Static __shared__ variables, from the executable's symbol table -----------------------------
struct SharedVariable {
    std::uintptr_t offset = 0;  // in the TLS segment
    std::size_t size = 0;
    std::string name;  // demangled: "<function>::<variable>"
};

struct SharedVariables {
    bool found_anchor = false;
    std::uintptr_t anchor_offset = 0;
    std::uintptr_t low = 0, high = 0;  // offsets spanning every variable
    std::vector<SharedVariable> variables;  // sorted by offset
    std::vector<unsigned char> mask;        // per offset in [low, high): 1 inside a variable
};

std::string demangle(const char* name) {
    int status = 0;
    char* text = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    std::string result = status == 0 && text != nullptr ? text : name;
    std::free(text);
    return result;
}

SharedVariables read_shared_variables() {
    SharedVariables table;
    const int file = ::open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (file < 0) return table;
    struct stat info{};
    if (::fstat(file, &info) != 0 || info.st_size < static_cast<off_t>(sizeof(Elf64_Ehdr))) {
        ::close(file);
        return table;
    }
    const auto bytes = static_cast<std::size_t>(info.st_size);
    void* mapped = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, file, 0);
    ::close(file);
    if (mapped == MAP_FAILED) return table;
    const auto* image = static_cast<const unsigned char*>(mapped);
    const auto* header = reinterpret_cast<const Elf64_Ehdr*>(image);
    const bool valid = std::memcmp(header->e_ident, ELFMAG, SELFMAG) == 0 && header->e_ident[EI_CLASS] == ELFCLASS64 &&
                       header->e_shoff != 0 && header->e_shentsize == sizeof(Elf64_Shdr) &&
                       header->e_shoff + std::size_t{header->e_shnum} * sizeof(Elf64_Shdr) <= bytes;
    if (valid) {
        const auto* sections = reinterpret_cast<const Elf64_Shdr*>(image + header->e_shoff);
        for (unsigned s = 0; s < header->e_shnum; ++s) {
            if (sections[s].sh_type != SHT_SYMTAB || sections[s].sh_link >= header->e_shnum) continue;
            const Elf64_Shdr& symbols = sections[s];
            const Elf64_Shdr& strings = sections[symbols.sh_link];
            if (symbols.sh_offset + symbols.sh_size > bytes || strings.sh_offset + strings.sh_size > bytes) continue;
            const auto* first = reinterpret_cast<const Elf64_Sym*>(image + symbols.sh_offset);
            const std::size_t count = symbols.sh_size / sizeof(Elf64_Sym);
            const char* names = reinterpret_cast<const char*>(image + strings.sh_offset);
            for (std::size_t i = 0; i < count; ++i) {
                const Elf64_Sym& symbol = first[i];
                if (ELF64_ST_TYPE(symbol.st_info) != STT_TLS || symbol.st_shndx == SHN_UNDEF) continue;
                if (symbol.st_name >= strings.sh_size) continue;
                const std::string_view name(names + symbol.st_name);
                if (name == "gemma3_cuda_emulator_tls_anchor") {
                    table.found_anchor = true;
                    table.anchor_offset = symbol.st_value;
                    continue;
                }
                // A function's static thread_local (a __shared__ array), not the emulator's own.
                if (symbol.st_size == 0 || !name.starts_with("_ZZ") || name.starts_with("_ZZN6gemma34cuda8emulator")) continue;
                table.variables.push_back(SharedVariable{symbol.st_value, symbol.st_size, demangle(names + symbol.st_name)});
            }
        }
    }
    ::munmap(mapped, bytes);
    std::sort(table.variables.begin(), table.variables.end(),
              [](const SharedVariable& a, const SharedVariable& b) { return a.offset < b.offset; });
    table.variables.erase(std::unique(table.variables.begin(), table.variables.end(),
                                      [](const SharedVariable& a, const SharedVariable& b) { return a.offset == b.offset; }),
                          table.variables.end());
    if (!table.found_anchor) table.variables.clear();
    if (!table.variables.empty()) {
        table.low = table.variables.front().offset;
        for (const SharedVariable& variable : table.variables) table.high = std::max(table.high, variable.offset + variable.size);
        table.mask.assign(table.high - table.low, 0);
        for (const SharedVariable& variable : table.variables)
            std::fill_n(table.mask.begin() + static_cast<std::ptrdiff_t>(variable.offset - table.low), variable.size, 1);
    }
    return table;
}

const SharedVariables& shared_variables() {
    static const SharedVariables* table = new SharedVariables(read_shared_variables());  // never freed
    return *table;
}

// --- Per-byte state ----------------------------------------------------------------------------------
// Epochs count block starts and barriers on one OS thread; a cell whose write_epoch precedes the
// block's first epoch has not been written by this block.
struct Cell {
    std::uint32_t write_epoch = 0;
    std::uint32_t read_epoch = 0;
    std::uint32_t write_warp_syncs = 0;  // the writer's warp's __syncwarp count at the write
    std::uint32_t read_warp_syncs = 0;   // the readers' warp's __syncwarp count at the latest read
    std::uint16_t writer = 0;
    std::uint16_t reader = 0;        // the first reader in read_epoch
    std::uint16_t other_reader = 0;  // a reader other than `reader`, when several_readers
    std::uint16_t read_warp = 0;     // the readers' warp, or mixed_warps
    bool several_readers = false;
    const void* write_code = nullptr;
};
constexpr std::uint16_t mixed_warps = 0xFFFF;

struct WorkerState;

// What the entry points read on every access: constant-initialised (no TLS wrapper call).
struct Hot {
    bool active = false;
    bool busy = false;       // inside the slow path (re-entry through instrumented library code)
    bool reported = false;   // one finding per block
    std::uintptr_t dynamic_low = 0;
    std::size_t dynamic_bytes = 0;
    std::uintptr_t static_low = 0;
    std::size_t static_bytes = 0;
    Cell* dynamic_cells = nullptr;
    Cell* static_cells = nullptr;
    const unsigned char* static_mask = nullptr;
    WorkerState* state = nullptr;
};
thread_local constinit Hot hot{};

struct WorkerState {
    std::vector<Cell> static_cells;
    std::vector<Cell> dynamic_cells;
    std::vector<std::uint32_t> warp_syncs;
    std::uint32_t epoch = 0;
    std::uint32_t first_epoch = 0;
    std::uintptr_t static_base = 0;  // where this thread's TLS block puts offset shared_variables().low
};

WorkerState& worker() {
    thread_local WorkerState state;
    return state;
}

std::string format_code(const void* code) {
    if (code == nullptr) return "?";
    char buffer[32];
    // Built by appending: GCC 12 gives a false -Wrestrict for "0x" + std::string (GCC bug 105651).
    const auto hex = [&buffer](std::uintptr_t value) {
        const auto written = std::to_chars(buffer, buffer + sizeof buffer, value, 16);
        std::string text("0x");
        text.append(buffer, written.ptr);
        return text;
    };
    Dl_info info{};
    if (::dladdr(code, &info) == 0) return hex(reinterpret_cast<std::uintptr_t>(code));
    std::string text;
    if (info.dli_sname != nullptr) {
        text += demangle(info.dli_sname);
        text += '+';
        text += hex(reinterpret_cast<std::uintptr_t>(code) - reinterpret_cast<std::uintptr_t>(info.dli_saddr));
        text += ' ';
    }
    text += '(';
    text += info.dli_fname != nullptr ? info.dli_fname : "?";
    text += '+';
    text += hex(reinterpret_cast<std::uintptr_t>(code) - reinterpret_cast<std::uintptr_t>(info.dli_fbase));
    text += ')';
    return text;
}

std::string describe_other_thread(unsigned linear) {
    const detail::dim3 block = detail::tls_block_dim;
    const detail::uint3 index{linear % block.x, (linear / block.x) % block.y, linear / (block.x * block.y)};
    return "thread " + detail::format_dims(index) + " (warp " + std::to_string(linear / 32) + ", lane " +
           std::to_string(linear % 32) + ")";
}

// "`<variable>` + <offset>" for static shared memory, "dynamic shared memory + <offset>".
std::string describe_location(bool dynamic, std::uintptr_t address) {
    if (dynamic) return "dynamic shared memory + " + std::to_string(address - hot.dynamic_low);
    const SharedVariables& table = shared_variables();
    const std::uintptr_t offset = address - worker().static_base + table.low;
    auto after = std::upper_bound(table.variables.begin(), table.variables.end(), offset,
                                  [](std::uintptr_t value, const SharedVariable& variable) { return value < variable.offset; });
    if (after == table.variables.begin()) return "static shared memory";
    const SharedVariable& variable = *(after - 1);
    return "__shared__ `" + variable.name + "` + " + std::to_string(offset - variable.offset);
}

void report(const std::string& problem) {
    hot.reported = true;
    if (detail::tls_block == nullptr || detail::tls_thread == nullptr) return;
    detail::tls_block->report_fault(detail::tls_block->describe(*detail::tls_thread) + ": " + problem);
}

std::string access_text(bool write, std::size_t size, bool dynamic, std::uintptr_t address) {
    return std::string(write ? "a write of " : "a read of ") + std::to_string(size) + (size == 1 ? " byte" : " bytes") +
           " at " + describe_location(dynamic, address);
}

// Checks and records one access of [address, address + size) inside one region.
void check_access(bool dynamic, std::uintptr_t address, std::size_t size, bool write, const void* code) {
    const detail::EmulatedThread* running = detail::tls_thread;
    if (running == nullptr) return;  // the scheduler, not a kernel thread
    WorkerState& state = *hot.state;
    const std::uintptr_t low = dynamic ? hot.dynamic_low : hot.static_low;
    Cell* cells = dynamic ? hot.dynamic_cells : hot.static_cells;
    // Only bytes of __shared__ variables: the span between them holds other thread-locals.
    if (!dynamic && hot.static_mask[address - low] == 0) return;
    const auto thread = static_cast<std::uint16_t>(running->linear);
    const auto warp = static_cast<std::uint16_t>(running->linear / 32);
    const std::uint32_t epoch = state.epoch;
    const std::uint32_t syncs = state.warp_syncs[warp];
    // Whether `other` (of warp other / 32) and this thread are ordered by a __syncwarp of this warp.
    const auto warp_ordered = [&](std::uint16_t other_warp, std::uint32_t other_syncs) {
        return other_warp == warp && other_syncs != syncs;
    };
    for (std::size_t i = 0; i < size; ++i) {
        Cell& cell = cells[address - low + i];
        if (!write) {
            if (cell.write_epoch < state.first_epoch) {
                report("uninitialised shared memory (initcheck): " + access_text(false, size, dynamic, address) +
                       ", whose byte " + std::to_string(i) + " no thread of this block has written; read at " +
                       format_code(code));
                return;
            }
            if (cell.write_epoch == epoch && cell.writer != thread &&
                !warp_ordered(static_cast<std::uint16_t>(cell.writer / 32), cell.write_warp_syncs)) {
                report("shared-memory race (racecheck, read after write): " + access_text(false, size, dynamic, address) +
                       " reads what " + describe_other_thread(cell.writer) +
                       " wrote with no __syncthreads() between them; read at " + format_code(code) + ", written at " +
                       format_code(cell.write_code));
                return;
            }
            if (cell.read_epoch != epoch) {
                cell.read_epoch = epoch;
                cell.reader = thread;
                cell.several_readers = false;
                cell.read_warp = warp;
            } else if (cell.reader != thread) {
                cell.several_readers = true;
                cell.other_reader = thread;
                if (cell.read_warp != warp) cell.read_warp = mixed_warps;
            }
            cell.read_warp_syncs = syncs;
        } else {
            if (cell.write_epoch == epoch && cell.writer != thread &&
                !warp_ordered(static_cast<std::uint16_t>(cell.writer / 32), cell.write_warp_syncs)) {
                report("shared-memory race (racecheck, write after write): " + access_text(true, size, dynamic, address) +
                       " overwrites what " + describe_other_thread(cell.writer) +
                       " wrote with no __syncthreads() between them; written at " + format_code(code) + " and at " +
                       format_code(cell.write_code));
                return;
            }
            if (cell.read_epoch == epoch) {
                const bool other = cell.reader != thread || cell.several_readers;
                if (other && !warp_ordered(cell.read_warp, cell.read_warp_syncs)) {
                    const std::uint16_t reader = cell.reader != thread ? cell.reader : cell.other_reader;
                    report("shared-memory race (racecheck, write after read): " + access_text(true, size, dynamic, address) +
                           " overwrites what " + describe_other_thread(reader) +
                           " read with no __syncthreads() between them; written at " + format_code(code));
                    return;
                }
            }
            cell.write_epoch = epoch;
            cell.writer = thread;
            cell.write_warp_syncs = syncs;
            cell.write_code = code;
        }
    }
}

inline void on_access(std::uintptr_t address, std::size_t size, bool write, const void* code) {
    Hot& state = hot;
    if (!state.active || state.busy || state.reported) return;
    bool dynamic;
    std::uintptr_t low;
    std::size_t bytes;
    if (address - state.dynamic_low < state.dynamic_bytes) {
        dynamic = true;
        low = state.dynamic_low;
        bytes = state.dynamic_bytes;
    } else if (address - state.static_low < state.static_bytes) {
        dynamic = false;
        low = state.static_low;
        bytes = state.static_bytes;
    } else if (address < state.dynamic_low && address + size > state.dynamic_low && state.dynamic_bytes != 0) {
        size -= state.dynamic_low - address;  // starts just before the region: check the part inside
        address = state.dynamic_low;
        dynamic = true;
        low = state.dynamic_low;
        bytes = state.dynamic_bytes;
    } else {
        return;
    }
    size = std::min(size, low + bytes - address);
    state.busy = true;
    check_access(dynamic, address, size, write, code);
    state.busy = false;
}

}  // namespace

bool access_checks() { return enabled_setting().load(); }
void set_access_checks(bool enabled) { enabled_setting().store(enabled); }

namespace check {

void block_begin(unsigned threads, const void* dynamic_shared, std::size_t dynamic_shared_bytes) {
    hot = Hot{};
    if (!access_checks()) return;
    WorkerState& state = worker();
    state.first_epoch = ++state.epoch;
    state.warp_syncs.assign((threads + 31) / 32, 0);
    const SharedVariables& table = shared_variables();
    if (!table.variables.empty()) {
        if (state.static_base == 0)
            state.static_base = reinterpret_cast<std::uintptr_t>(&gemma3_cuda_emulator_tls_anchor) - table.anchor_offset + table.low;
        if (state.static_cells.size() < table.high - table.low) state.static_cells.resize(table.high - table.low);
        hot.static_low = state.static_base;
        hot.static_bytes = table.high - table.low;
        hot.static_cells = state.static_cells.data();
        hot.static_mask = table.mask.data();
    }
    if (dynamic_shared != nullptr && dynamic_shared_bytes != 0) {
        if (state.dynamic_cells.size() < dynamic_shared_bytes) state.dynamic_cells.resize(dynamic_shared_bytes);
        hot.dynamic_low = reinterpret_cast<std::uintptr_t>(dynamic_shared);
        hot.dynamic_bytes = dynamic_shared_bytes;
        hot.dynamic_cells = state.dynamic_cells.data();
    }
    hot.state = &state;
    hot.active = true;
}

void block_end() noexcept { hot = Hot{}; }

void barrier() noexcept {
    if (hot.active) ++hot.state->epoch;
}

void warp_synchronized(unsigned warp) noexcept {
    if (hot.active) ++hot.state->warp_syncs[warp];
}

}  // namespace check
}  // namespace gemma3::cuda::emulator

// --- The entry points of GCC's ThreadSanitizer instrumentation ---------------------------------------
// With -fsanitize=thread (and --param=tsan-instrument-func-entry-exit=0), every load and store of an
// instrumented translation unit calls __tsan_{read,write}<N>(address), and every atomic operation
// calls __tsan_atomic<bits>_<operation>. There is no TSan runtime in these executables: these
// definitions are the whole of it. Atomics are performed (sequentially consistent, whatever order
// was asked for) and not checked, as racecheck does not check them either.
#define GEMMA3_CHECKER_ACCESS(name, size, write)                                                        \
    extern "C" __attribute__((visibility("default"))) void name(void* address) {                        \
        ::gemma3::cuda::emulator::on_access(reinterpret_cast<std::uintptr_t>(address), size, write,     \
                                            __builtin_return_address(0));                               \
    }
#define GEMMA3_CHECKER_ACCESSES(size)                                   \
    GEMMA3_CHECKER_ACCESS(__tsan_read##size, size, false)               \
    GEMMA3_CHECKER_ACCESS(__tsan_write##size, size, true)               \
    GEMMA3_CHECKER_ACCESS(__tsan_unaligned_read##size, size, false)     \
    GEMMA3_CHECKER_ACCESS(__tsan_unaligned_write##size, size, true)     \
    GEMMA3_CHECKER_ACCESS(__tsan_volatile_read##size, size, false)      \
    GEMMA3_CHECKER_ACCESS(__tsan_volatile_write##size, size, true)      \
    GEMMA3_CHECKER_ACCESS(__tsan_unaligned_volatile_read##size, size, false) \
    GEMMA3_CHECKER_ACCESS(__tsan_unaligned_volatile_write##size, size, true)
GEMMA3_CHECKER_ACCESSES(1)
GEMMA3_CHECKER_ACCESSES(2)
GEMMA3_CHECKER_ACCESSES(4)
GEMMA3_CHECKER_ACCESSES(8)
GEMMA3_CHECKER_ACCESSES(16)
#undef GEMMA3_CHECKER_ACCESSES
#undef GEMMA3_CHECKER_ACCESS

#define GEMMA3_CHECKER_ATOMICS(bits, type)                                                                         \
    extern "C" __attribute__((visibility("default"))) type __tsan_atomic##bits##_load(const volatile type* a, int) {  \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                                \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) void __tsan_atomic##bits##_store(volatile type* a, type v, int) { \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                                   \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) type __tsan_atomic##bits##_exchange(volatile type* a, type v, int) { \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                         \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) type __tsan_atomic##bits##_fetch_add(volatile type* a, type v, int) { \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) type __tsan_atomic##bits##_fetch_sub(volatile type* a, type v, int) { \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) type __tsan_atomic##bits##_fetch_and(volatile type* a, type v, int) { \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) type __tsan_atomic##bits##_fetch_or(volatile type* a, type v, int) { \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                           \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) type __tsan_atomic##bits##_fetch_xor(volatile type* a, type v, int) { \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) type __tsan_atomic##bits##_fetch_nand(volatile type* a, type v, int) { \
        return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                         \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) int __tsan_atomic##bits##_compare_exchange_strong(          \
        volatile type* a, type* expected, type v, int, int) {                                                       \
        return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST) ? 1 : 0;     \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) int __tsan_atomic##bits##_compare_exchange_weak(            \
        volatile type* a, type* expected, type v, int, int) {                                                       \
        return __atomic_compare_exchange_n(a, expected, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST) ? 1 : 0;      \
    }                                                                                                               \
    extern "C" __attribute__((visibility("default"))) type __tsan_atomic##bits##_compare_exchange_val(            \
        volatile type* a, type expected, type v, int, int) {                                                        \
        __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                   \
        return expected;                                                                                            \
    }
GEMMA3_CHECKER_ATOMICS(8, char)
GEMMA3_CHECKER_ATOMICS(16, short)
GEMMA3_CHECKER_ATOMICS(32, int)
GEMMA3_CHECKER_ATOMICS(64, long)
#undef GEMMA3_CHECKER_ATOMICS

extern "C" {
__attribute__((visibility("default"))) void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
__attribute__((visibility("default"))) void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
__attribute__((visibility("default"))) void __tsan_read_range(void* address, std::size_t size) {
    ::gemma3::cuda::emulator::on_access(reinterpret_cast<std::uintptr_t>(address), size, false, __builtin_return_address(0));
}
__attribute__((visibility("default"))) void __tsan_write_range(void* address, std::size_t size) {
    ::gemma3::cuda::emulator::on_access(reinterpret_cast<std::uintptr_t>(address), size, true, __builtin_return_address(0));
}
// Virtual calls: the vtable pointer is not shared memory.
__attribute__((visibility("default"))) void __tsan_vptr_update(void**, void*) {}
__attribute__((visibility("default"))) void __tsan_vptr_read(void**) {}
// Called by the instrumented modules' constructors; function entry and exit (not instrumented with
// --param=tsan-instrument-func-entry-exit=0, defined in case).
__attribute__((visibility("default"))) void __tsan_init() {}
__attribute__((visibility("default"))) void __tsan_func_entry(void*) {}
__attribute__((visibility("default"))) void __tsan_func_exit() {}
}
