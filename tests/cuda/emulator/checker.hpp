// The shared-memory access checker of the CUDA emulator (racecheck and initcheck), in the spirit of
// compute-sanitizer's tools of those names, and the shuffled schedule.
//
// Access checker (built when GEMMA3_CUDA_EMULATOR_CHECK is defined, i.e. when CMake's option
// GEMMA3_CUDA_EMULATOR_CHECK is on; checker.cpp holds the implementation):
//  - How accesses are seen: the emulated kernel sources are compiled with GCC's ThreadSanitizer
//    instrumentation (-fsanitize=thread, see cmake/gemma3Cuda.cmake), but linked without the TSan
//    runtime: checker.cpp defines the __tsan_read*/__tsan_write* entry points itself. Each load and
//    store of the instrumented code calls them with the address; checker.cpp ignores everything but
//    the shared memory of the block running on the calling OS thread. (ThreadSanitizer rather than
//    AddressSanitizer's call mode: ASan skips the check of a store to an address already checked by
//    a load, so `s[i] += x` would look like a read only.) Atomics go through __tsan_atomic* and are
//    performed, not checked, as in racecheck. Code outside the instrumented translation units
//    (libraries, memcpy/memset calls) is not seen.
//  - What is shared memory: the dynamic shared memory of the block, and the static __shared__
//    arrays. These are `static thread_local` variables (cuda_emulator.hpp); checker.cpp finds them
//    in the executable's symbol table: every thread-local variable local to a function (mangled
//    name _ZZ...) outside the emulator's own namespace. Their offsets in the executable's TLS
//    block give their addresses on each OS thread. An executable without a symbol table (stripped)
//    gets dynamic shared memory checked only.
//  - racecheck: per byte of shared memory, the last write (thread, barrier epoch) and the reads
//    since the last barrier. A write and another thread's read or write of the same byte in the
//    same barrier interval (no __syncthreads() between them) is a hazard, unless both threads are
//    in one warp and a __syncwarp() of that warp came between them.
//  - initcheck: a read of a shared byte that no thread of this block has written.
//  - A finding fails the launch (cudaErrorLaunchFailure) with a message naming the kernel, the
//    block, both threads, the shared variable and byte offset (or the dynamic shared offset), and
//    the code addresses of both accesses (function+offset; `addr2line -f -C -e <executable>` turns
//    them into lines). Only the first finding of a launch is reported.
//  - GEMMA3_CUDA_EMULATOR_CHECK=0 in the environment or set_access_checks(false) turns it off at
//    run time (e.g. for a test that reads uninitialised memory on purpose).
//
// Shuffled schedule (always available, scheduler.hpp): GEMMA3_CUDA_EMULATOR_SHUFFLE=<seed> or
// set_shuffle_seed() makes each launch run its blocks in a pseudo-random order and, in every round
// of the scheduler, resume the ready threads of a block in a pseudo-random order (both drawn from
// the seed, the launch's serial number and the block). A kernel whose results depend on that order
// is caught by tests that compare its results with a reference.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gemma3::cuda::emulator {

#if defined(GEMMA3_CUDA_EMULATOR_CHECK)
// Whether this executable has the access checker (the instrumentation and checker.cpp).
inline constexpr bool access_checker_built = true;
// Whether launches check shared-memory accesses (default: on, unless GEMMA3_CUDA_EMULATOR_CHECK=0).
bool access_checks();
void set_access_checks(bool enabled);
#else
inline constexpr bool access_checker_built = false;
inline bool access_checks() { return false; }
inline void set_access_checks(bool) {}
#endif

namespace check {

#if defined(GEMMA3_CUDA_EMULATOR_CHECK)
// Called by the scheduler (scheduler.hpp) on the OS thread that runs the block.
void block_begin(unsigned threads, const void* dynamic_shared, std::size_t dynamic_shared_bytes);
void block_end() noexcept;
void barrier() noexcept;                 // a block barrier was released
void warp_synchronized(unsigned warp) noexcept;  // a __syncwarp of this warp completed
#else
inline void block_begin(unsigned, const void*, std::size_t) {}
inline void block_end() noexcept {}
inline void barrier() noexcept {}
inline void warp_synchronized(unsigned) noexcept {}
#endif

}  // namespace check
}  // namespace gemma3::cuda::emulator
