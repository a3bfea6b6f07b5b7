// Backend selection and error checking for gemma3's CUDA code.
//
// A translation unit that includes any gemma3/cuda header is built for exactly one backend:
//  - by nvcc (__CUDACC__ defined): the real CUDA runtime, cuda_bf16.h and cuBLASLt;
//  - by the host compiler with GEMMA3_CUDA_EMULATION defined: the CPU emulator
//    (tests/cuda/emulator/cuda_emulator.hpp, test support on the include path of the CMake target
//    gemma3::cuda_emulation, not installed), which defines the same names.
// Everything backend-specific that gemma3 defines lives in the inline namespace
// gemma3::cuda::GEMMA3_CUDA_BACKEND (`device` or `emulated`), opened with
// GEMMA3_CUDA_NAMESPACE_BEGIN / _END. Kernel headers must use these macros too: the namespace gives
// the two builds of one inline function or kernel different linker names, so that one program can
// link a device translation unit and an emulated one (runtime.hpp explains why tests do that).
//
// GEMMA3_CUDA_CHECK(call) and GEMMA3_CUBLAS_CHECK(call) turn a failed status into a
// gemma3::cuda::CudaError whose message names the call, the file:line and the error; in emulation
// it also carries the emulator's explanation of what was wrong.
#pragma once

#if defined(__CUDACC__)
#if defined(GEMMA3_CUDA_EMULATION)
#error "GEMMA3_CUDA_EMULATION is for the host compiler; nvcc builds the device code"
#endif
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define GEMMA3_CUDA_BACKEND device
#define GEMMA3_CUDA_BACKEND_NAME "device"
#define GEMMA3_CUDA_IS_EMULATED 0
#elif defined(GEMMA3_CUDA_EMULATION)
#include <cuda_emulator.hpp>
#define GEMMA3_CUDA_BACKEND emulated
#define GEMMA3_CUDA_BACKEND_NAME "emulated"
#define GEMMA3_CUDA_IS_EMULATED 1
#else
#error "gemma3/cuda: compile this file with nvcc, or with GEMMA3_CUDA_EMULATION defined to run its kernels on the CPU emulator"
#endif

#include <stdexcept>
#include <string>

#define GEMMA3_CUDA_NAMESPACE_BEGIN \
    namespace gemma3::cuda {        \
    inline namespace GEMMA3_CUDA_BACKEND {
#define GEMMA3_CUDA_NAMESPACE_END \
    }                             \
    }

namespace gemma3::cuda {

// A failed CUDA runtime or cuBLAS call, kernel launch or emulated kernel. status() is the
// cudaError_t or cublasStatus_t value.
class CudaError : public std::runtime_error {
public:
    CudaError(const std::string& message, int status) : std::runtime_error(message), status_(status) {}
    int status() const noexcept { return status_; }

private:
    int status_;
};

}  // namespace gemma3::cuda

GEMMA3_CUDA_NAMESPACE_BEGIN
namespace detail {

// The emulator's explanation of the failure just reported (empty on the device).
inline std::string backend_detail() {
#if GEMMA3_CUDA_IS_EMULATED
    std::string detail = ::gemma3::cuda::emulator::take_error_detail();
    return detail.empty() ? detail : " [emulator: " + detail + "]";
#else
    return {};
#endif
}

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
    (void)cudaGetLastError();  // consume it, so that a later launch check does not report it again
    throw CudaError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " + cudaGetErrorName(status) +
                        " (" + cudaGetErrorString(status) + ")" + backend_detail(),
                    static_cast<int>(status));
}

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
    if (status != cudaSuccess) throw_cuda_error(status, call, file, line);
}

inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    throw CudaError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                        cublasLtGetStatusName(status) + " (" + cublasLtGetStatusString(status) + ")" + backend_detail(),
                    static_cast<int>(status));
}

}  // namespace detail
GEMMA3_CUDA_NAMESPACE_END

#define GEMMA3_CUDA_CHECK(call) ::gemma3::cuda::detail::check_cuda((call), #call, __FILE__, __LINE__)
#define GEMMA3_CUBLAS_CHECK(call) ::gemma3::cuda::detail::check_cublas((call), #call, __FILE__, __LINE__)
