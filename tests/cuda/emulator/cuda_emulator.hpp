// The CPU emulator for CUDA kernels: lets the host compiler build and run the same kernel source
// that nvcc builds for the device. Include <gemma3/cuda/runtime.hpp> with GEMMA3_CUDA_EMULATION
// defined rather than this header directly. Test support, not part of the installed library: the
// target gemma3::cuda_emulation (cmake/gemma3Cuda.cmake) puts this folder on the include path.
//
// What it provides, at global scope as the CUDA headers do:
//  - the execution-space keywords (__global__, __device__, __host__, __forceinline__,
//    __launch_bounds__, __align__, __constant__) and __shared__ (= static thread_local);
//  - threadIdx, blockIdx, blockDim, gridDim (read-only), warpSize;
//  - __syncthreads and its _count/_and/_or forms, __syncwarp, __shfl{,_up,_down,_xor}_sync,
//    __ballot_sync, __any_sync, __all_sync, atomics, __threadfence, math and bit intrinsics
//    (device_functions.hpp);
//  - __nv_bfloat16 / __nv_bfloat162 (bfloat16.hpp), the vector types (float2, ...);
//  - the runtime API subset (runtime_api.hpp) and the cuBLASLt subset
//    (cublas_lt.hpp).
// How kernels execute (fibers, barriers, shared memory, parallel blocks) is described in
// scheduler.hpp; the shared-memory access checker (racecheck, initcheck) and the shuffled schedule
// in checker.hpp.
//
// Rules for kernel source that must run in both builds:
//  - no inline PTX, no `extern __shared__` (use gemma3::cuda::dynamic_shared<T>()), no
//    __activemask, cooperative groups or grid-wide synchronisation, no spinning on memory written
//    by another thread of the same block (fibers switch only at barriers and warp intrinsics) or by
//    another block;
//  - __CUDA_ARCH__ and __CUDACC__ are not defined here; GEMMA3_CUDA_EMULATION is;
//  - __noinline__ is not defined (libstdc++ uses the name in attributes).
#pragma once

#if defined(__CUDACC__)
#error "cuda_emulator.hpp is for the host compiler; nvcc builds use the real CUDA headers"
#endif

// Every standard header the emulated sources may need comes first: the macros below (notably
// __expf and friends, which glibc's <math.h> declares) must not reach them.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>

#include "bfloat16.hpp"
#include "cublas_lt.hpp"
#include "device_functions.hpp"
#include "runtime_api.hpp"
#include "scheduler.hpp"
#include "types.hpp"

using namespace ::gemma3::cuda::emulator::api;  // NOLINT: the CUDA names live at global scope

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local

#define threadIdx (::gemma3::cuda::emulator::detail::thread_idx())
#define blockIdx (::gemma3::cuda::emulator::detail::block_idx())
#define blockDim (::gemma3::cuda::emulator::detail::block_dim())
#define gridDim (::gemma3::cuda::emulator::detail::grid_dim())

#define __expf ::gemma3::cuda::emulator::fast_math::exp
#define __exp10f ::gemma3::cuda::emulator::fast_math::exp10
#define __logf ::gemma3::cuda::emulator::fast_math::log
#define __log2f ::gemma3::cuda::emulator::fast_math::log2
#define __log10f ::gemma3::cuda::emulator::fast_math::log10
#define __sinf ::gemma3::cuda::emulator::fast_math::sin
#define __cosf ::gemma3::cuda::emulator::fast_math::cos
#define __tanf ::gemma3::cuda::emulator::fast_math::tan
#define __powf ::gemma3::cuda::emulator::fast_math::pow
#define __sincosf ::gemma3::cuda::emulator::fast_math::sincos
