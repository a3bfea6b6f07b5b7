// The CUDA runtime API subset of the emulator: device memory in host memory, streams, device
// properties, function attributes, error reporting, and kernel launch.
//
// Behaviour worth knowing:
//  - Everything is synchronous: a kernel or copy has finished when its call returns, whatever the
//    stream. Missing stream synchronisation therefore goes unnoticed here.
//  - "Device" allocations are tracked. Copies and memsets check that every device range lies inside
//    one live allocation and that host pointers are not device memory (cudaErrorInvalidValue
//    otherwise, with an explanation available through take_error_detail()); freeing an unknown
//    pointer fails the same way. New allocations are filled with 0xFF bytes (float NaN), since
//    cudaMalloc leaves memory uninitialised. Kernels dereference these pointers directly; a kernel
//    reading a host pointer works here but not on the device.
//  - The emulated device has sm_80 limits (the smaller of our two targets): 1024 threads per block,
//    block dimensions up to (1024, 1024, 64), grid dimensions up to (2^31-1, 65535, 65535), 48 KiB
//    of dynamic shared memory per block unless raised with cudaFuncSetAttribute(...,
//    cudaFuncAttributeMaxDynamicSharedMemorySize, ...) up to 163 KiB. The 48 KiB limit on *static*
//    shared memory cannot be measured here (static __shared__ arrays are thread_local variables);
//    nvcc enforces it when it compiles the same kernel (ptxas: "uses too much shared data").
//  - A kernel fault (divergent barrier, deadlock, invalid warp intrinsic use, or any exception
//    thrown by kernel code) fails the launch with cudaErrorLaunchFailure; unlike on the device the
//    error is reported by the launch itself and is not sticky.
#pragma once

#include "scheduler.hpp"
#include "types.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>

namespace gemma3::cuda::emulator {
namespace detail {

using api::cudaError_t;

// --- Error state (per host thread, like the runtime's) ---------------------------------------------
struct ErrorState {
    cudaError_t last = api::cudaSuccess;
    std::string detail;
};

inline ErrorState& error_state() {
    thread_local ErrorState state;
    return state;
}

// Records a failure of the call being emulated and returns its status.
inline cudaError_t fail(cudaError_t status, std::string detail) {
    ErrorState& state = error_state();
    state.last = status;
    state.detail = std::move(detail);
    return status;
}

// --- Device memory -----------------------------------------------------------------------------------
inline constexpr std::size_t allocation_alignment = 256;  // what cudaMalloc guarantees

class MemoryRegistry {
public:
    void add(const void* pointer, std::size_t bytes) {
        const std::lock_guard lock(mutex_);
        allocations_[address(pointer)] = bytes;
    }
    // Removes and returns the size of the allocation starting at `pointer`, if there is one.
    std::optional<std::size_t> remove(const void* pointer) {
        const std::lock_guard lock(mutex_);
        const auto found = allocations_.find(address(pointer));
        if (found == allocations_.end()) return std::nullopt;
        const std::size_t bytes = found->second;
        allocations_.erase(found);
        return bytes;
    }
    // Whether [pointer, pointer + bytes) lies inside one live allocation.
    bool contains(const void* pointer, std::size_t bytes) const {
        const std::lock_guard lock(mutex_);
        const auto* allocation = find(address(pointer));
        return allocation != nullptr && address(pointer) - allocation->first <= allocation->second &&
               bytes <= allocation->second - (address(pointer) - allocation->first);
    }
    // Whether `pointer` points into (or one past) a live allocation.
    bool is_device(const void* pointer) const {
        const std::lock_guard lock(mutex_);
        return find(address(pointer)) != nullptr;
    }

private:
    static std::uintptr_t address(const void* pointer) noexcept { return reinterpret_cast<std::uintptr_t>(pointer); }
    const std::pair<const std::uintptr_t, std::size_t>* find(std::uintptr_t at) const {
        auto above = allocations_.upper_bound(at);
        if (above == allocations_.begin()) return nullptr;
        const auto& candidate = *std::prev(above);
        return at - candidate.first <= candidate.second ? &candidate : nullptr;
    }
    mutable std::mutex mutex_;
    std::map<std::uintptr_t, std::size_t> allocations_;
};

inline MemoryRegistry& memory_registry() {
    static auto* registry = new MemoryRegistry();  // never destroyed: buffers may be freed during static destruction
    return *registry;
}

inline std::string describe_range(const void* pointer, std::size_t bytes) {
    char buffer[32];
    const auto written = std::to_chars(buffer, buffer + sizeof buffer, reinterpret_cast<std::uintptr_t>(pointer), 16);
    return std::to_string(bytes) + " bytes at 0x" + std::string(buffer, written.ptr);
}

// Checks one side of a copy: device memory must be a range inside one allocation; host memory
// must not be device memory. Returns cudaSuccess or the failure (recorded).
inline cudaError_t check_side(const char* call, const char* side, const void* pointer, std::size_t bytes, bool device) {
    if (pointer == nullptr) return fail(api::cudaErrorInvalidValue, std::string(call) + ": the " + side + " pointer is null");
    if (device && !memory_registry().contains(pointer, bytes))
        return fail(api::cudaErrorInvalidValue, std::string(call) + ": the " + side + " (" + describe_range(pointer, bytes) +
                                                    ") is not inside one live device allocation");
    if (!device && memory_registry().is_device(pointer))
        return fail(api::cudaErrorInvalidValue, std::string(call) + ": the " + side + " (" + describe_range(pointer, bytes) +
                                                    ") is device memory, but the copy kind says host memory");
    return api::cudaSuccess;
}

// --- Streams -----------------------------------------------------------------------------------------
class StreamRegistry {
public:
    api::cudaStream_t create() {
        const std::lock_guard lock(mutex_);
        auto* stream = new api::CUstream_st{++serial_};
        streams_.insert(stream);
        return stream;
    }
    bool destroy(api::cudaStream_t stream) {
        const std::lock_guard lock(mutex_);
        if (streams_.erase(stream) == 0) return false;
        delete stream;
        return true;
    }
    bool valid(api::cudaStream_t stream) const {
        if (stream == nullptr) return true;  // the default stream
        const std::lock_guard lock(mutex_);
        return streams_.count(stream) != 0;
    }

private:
    mutable std::mutex mutex_;
    std::set<api::cudaStream_t> streams_;
    std::uint64_t serial_ = 0;
};

inline StreamRegistry& stream_registry() {
    static auto* registry = new StreamRegistry();
    return *registry;
}

inline cudaError_t check_stream(const char* call, api::cudaStream_t stream) {
    if (stream_registry().valid(stream)) return api::cudaSuccess;
    return fail(api::cudaErrorInvalidResourceHandle, std::string(call) + ": the stream is not a live stream");
}

// --- Device limits (sm_80) ---------------------------------------------------------------------------
inline constexpr unsigned max_threads_per_block = 1024;
inline constexpr unsigned max_block_dims[3] = {1024, 1024, 64};
inline constexpr unsigned max_grid_dims[3] = {2147483647u, 65535u, 65535u};
inline constexpr std::size_t default_dynamic_shared_limit = 48 * 1024;
inline constexpr std::size_t opt_in_shared_limit = 166912;  // 163 KiB, sharedMemPerBlockOptin of sm_80

class FunctionAttributes {
public:
    void set_max_dynamic_shared(const void* kernel, std::size_t bytes) {
        const std::lock_guard lock(mutex_);
        limits_[kernel] = bytes;
    }
    std::size_t max_dynamic_shared(const void* kernel) const {
        const std::lock_guard lock(mutex_);
        const auto found = limits_.find(kernel);
        return found == limits_.end() ? default_dynamic_shared_limit : found->second;
    }

private:
    mutable std::mutex mutex_;
    std::map<const void*, std::size_t> limits_;
};

inline FunctionAttributes& function_attributes() {
    static auto* attributes = new FunctionAttributes();
    return *attributes;
}

// Validates a launch configuration like the device does, then runs the grid.
inline cudaError_t launch_kernel(const KernelLaunch& launch, api::cudaStream_t stream) {
    const unsigned grid[3] = {launch.grid.x, launch.grid.y, launch.grid.z};
    const unsigned block[3] = {launch.block.x, launch.block.y, launch.block.z};
    for (int axis = 0; axis < 3; ++axis) {
        if (grid[axis] == 0 || grid[axis] > max_grid_dims[axis])
            return fail(api::cudaErrorInvalidConfiguration,
                        "grid dimension " + std::string(1, "xyz"[axis]) + " = " + std::to_string(grid[axis]) +
                            " is outside [1, " + std::to_string(max_grid_dims[axis]) + "]");
        if (block[axis] == 0 || block[axis] > max_block_dims[axis])
            return fail(api::cudaErrorInvalidConfiguration,
                        "block dimension " + std::string(1, "xyz"[axis]) + " = " + std::to_string(block[axis]) +
                            " is outside [1, " + std::to_string(max_block_dims[axis]) + "]");
    }
    const std::uint64_t threads = std::uint64_t{block[0]} * block[1] * block[2];
    if (threads > max_threads_per_block)
        return fail(api::cudaErrorInvalidConfiguration,
                    "a block of " + std::to_string(threads) + " threads; at most " + std::to_string(max_threads_per_block));
    const std::size_t shared_limit = function_attributes().max_dynamic_shared(launch.kernel_address);
    if (launch.dynamic_shared_bytes > shared_limit)
        return fail(api::cudaErrorInvalidValue,
                    std::to_string(launch.dynamic_shared_bytes) + " bytes of dynamic shared memory; the kernel allows " +
                        std::to_string(shared_limit) +
                        " (raise it with cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes))");
    if (const cudaError_t status = check_stream("kernel launch", stream); status != api::cudaSuccess) return status;
    try {
        run_grid(launch);
    } catch (const std::exception& error) {
        return fail(api::cudaErrorLaunchFailure, error.what());
    }
    return api::cudaSuccess;
}

}  // namespace detail

// The explanation the emulator gave for the most recent failure on this host thread ("" if it
// gave none); cleared by reading. gemma3::cuda's error checks append it to their messages.
inline std::string take_error_detail() { return std::exchange(detail::error_state().detail, std::string()); }

namespace api {

inline cudaError_t cudaGetLastError() noexcept {
    return std::exchange(detail::error_state().last, cudaSuccess);
}
inline cudaError_t cudaPeekAtLastError() noexcept { return detail::error_state().last; }

inline const char* cudaGetErrorName(cudaError_t status) noexcept {
    switch (status) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
        case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
        case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
        case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
        case cudaErrorNoDevice: return "cudaErrorNoDevice";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
        case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
        case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
        case cudaErrorNotSupported: return "cudaErrorNotSupported";
    }
    return "cudaErrorUnknown";
}

inline const char* cudaGetErrorString(cudaError_t status) noexcept {
    switch (status) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidDevicePointer: return "invalid device pointer";
        case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
        case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
        case cudaErrorInvalidDeviceFunction: return "invalid device function";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorNotSupported: return "operation not supported";
    }
    return "unrecognized error code";
}

// --- Memory -------------------------------------------------------------------------------------------
inline cudaError_t cudaMalloc(void** pointer, std::size_t bytes) {
    if (pointer == nullptr) return detail::fail(cudaErrorInvalidValue, "cudaMalloc: the output pointer is null");
    *pointer = nullptr;
    if (bytes == 0) return cudaSuccess;
    void* memory = ::operator new(bytes, std::align_val_t{detail::allocation_alignment}, std::nothrow);
    if (memory == nullptr)
        return detail::fail(cudaErrorMemoryAllocation, "cudaMalloc: cannot allocate " + std::to_string(bytes) + " bytes");
    std::memset(memory, 0xFF, bytes);  // uninitialised device memory: make reads before writes visible
    detail::memory_registry().add(memory, bytes);
    *pointer = memory;
    return cudaSuccess;
}
template <class T>
cudaError_t cudaMalloc(T** pointer, std::size_t bytes) {
    if (pointer == nullptr) return detail::fail(cudaErrorInvalidValue, "cudaMalloc: the output pointer is null");
    void* memory = nullptr;
    const cudaError_t status = cudaMalloc(&memory, bytes);
    *pointer = static_cast<T*>(memory);
    return status;
}

inline cudaError_t cudaFree(void* pointer) {
    if (pointer == nullptr) return cudaSuccess;
    const std::optional<std::size_t> bytes = detail::memory_registry().remove(pointer);
    if (!bytes)
        return detail::fail(cudaErrorInvalidValue,
                            "cudaFree: the pointer is not the start of a live device allocation (freed twice, or never "
                            "allocated with cudaMalloc)");
    ::operator delete(pointer, *bytes, std::align_val_t{detail::allocation_alignment});
    return cudaSuccess;
}

inline cudaError_t cudaMemcpy(void* destination, const void* source, std::size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return cudaSuccess;
    bool destination_on_device = false;
    bool source_on_device = false;
    switch (kind) {
        case cudaMemcpyHostToHost: break;
        case cudaMemcpyHostToDevice: destination_on_device = true; break;
        case cudaMemcpyDeviceToHost: source_on_device = true; break;
        case cudaMemcpyDeviceToDevice: destination_on_device = source_on_device = true; break;
        case cudaMemcpyDefault:
            destination_on_device = detail::memory_registry().is_device(destination);
            source_on_device = detail::memory_registry().is_device(source);
            break;
        default:
            return detail::fail(cudaErrorInvalidMemcpyDirection,
                                "cudaMemcpy: copy kind " + std::to_string(static_cast<int>(kind)) + " is not a cudaMemcpyKind");
    }
    if (const cudaError_t status = detail::check_side("cudaMemcpy", "destination", destination, bytes, destination_on_device);
        status != cudaSuccess)
        return status;
    if (const cudaError_t status = detail::check_side("cudaMemcpy", "source", source, bytes, source_on_device);
        status != cudaSuccess)
        return status;
    std::memmove(destination, source, bytes);
    return cudaSuccess;
}

inline cudaError_t cudaMemcpyAsync(void* destination, const void* source, std::size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t stream = nullptr) {
    if (const cudaError_t status = detail::check_stream("cudaMemcpyAsync", stream); status != cudaSuccess) return status;
    return cudaMemcpy(destination, source, bytes, kind);
}

inline cudaError_t cudaMemset(void* pointer, int value, std::size_t bytes) {
    if (bytes == 0) return cudaSuccess;
    if (const cudaError_t status = detail::check_side("cudaMemset", "destination", pointer, bytes, true); status != cudaSuccess)
        return status;
    std::memset(pointer, value, bytes);
    return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* pointer, int value, std::size_t bytes, cudaStream_t stream = nullptr) {
    if (const cudaError_t status = detail::check_stream("cudaMemsetAsync", stream); status != cudaSuccess) return status;
    return cudaMemset(pointer, value, bytes);
}

template <class T>
cudaError_t cudaMemcpyToSymbol(T& symbol, const void* source, std::size_t bytes, std::size_t offset = 0,
                               cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
    if (offset > sizeof(T) || bytes > sizeof(T) - offset)
        return detail::fail(cudaErrorInvalidValue, "cudaMemcpyToSymbol: " + std::to_string(bytes) + " bytes at offset " +
                                                       std::to_string(offset) + " do not fit a symbol of " +
                                                       std::to_string(sizeof(T)) + " bytes");
    if (kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDefault)
        return detail::fail(cudaErrorInvalidMemcpyDirection, "cudaMemcpyToSymbol: only host-to-device copies are emulated");
    if (bytes == 0) return cudaSuccess;
    if (source == nullptr) return detail::fail(cudaErrorInvalidValue, "cudaMemcpyToSymbol: the source pointer is null");
    std::memcpy(reinterpret_cast<unsigned char*>(&symbol) + offset, source, bytes);
    return cudaSuccess;
}

// --- Streams and synchronisation -----------------------------------------------------------------------
inline cudaError_t cudaStreamCreate(cudaStream_t* stream) {
    if (stream == nullptr) return detail::fail(cudaErrorInvalidValue, "cudaStreamCreate: the output pointer is null");
    *stream = detail::stream_registry().create();
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
    if (flags != cudaStreamDefault && flags != cudaStreamNonBlocking)
        return detail::fail(cudaErrorInvalidValue, "cudaStreamCreateWithFlags: unknown flags " + std::to_string(flags));
    return cudaStreamCreate(stream);
}
inline cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (stream == nullptr || !detail::stream_registry().destroy(stream))
        return detail::fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: the stream is not a live stream");
    return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t stream) { return detail::check_stream("cudaStreamSynchronize", stream); }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// --- Device ----------------------------------------------------------------------------------------------
inline cudaError_t cudaGetDeviceCount(int* count) {
    if (count == nullptr) return detail::fail(cudaErrorInvalidValue, "cudaGetDeviceCount: the output pointer is null");
    *count = 1;
    return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
    if (device == nullptr) return detail::fail(cudaErrorInvalidValue, "cudaGetDevice: the output pointer is null");
    *device = 0;
    return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
    if (device != 0)
        return detail::fail(cudaErrorInvalidDevice, "cudaSetDevice: the emulator has one device (0), not " + std::to_string(device));
    return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int device) {
    if (properties == nullptr) return detail::fail(cudaErrorInvalidValue, "cudaGetDeviceProperties: the output pointer is null");
    if (device != 0)
        return detail::fail(cudaErrorInvalidDevice,
                            "cudaGetDeviceProperties: the emulator has one device (0), not " + std::to_string(device));
    cudaDeviceProp emulated{};
    const char name[] = "gemma3 CUDA emulator (CPU, sm_80 limits)";
    std::memcpy(emulated.name, name, sizeof name);
    const long pages = ::sysconf(_SC_PHYS_PAGES);
    emulated.totalGlobalMem = pages > 0 ? static_cast<std::size_t>(pages) * detail::page_size() : 0;
    emulated.sharedMemPerBlock = detail::default_dynamic_shared_limit;
    emulated.sharedMemPerBlockOptin = detail::opt_in_shared_limit;
    emulated.regsPerBlock = 65536;
    emulated.warpSize = 32;
    emulated.maxThreadsPerBlock = static_cast<int>(detail::max_threads_per_block);
    for (int axis = 0; axis < 3; ++axis) {
        emulated.maxThreadsDim[axis] = static_cast<int>(detail::max_block_dims[axis]);
        emulated.maxGridSize[axis] = static_cast<int>(detail::max_grid_dims[axis]);
    }
    emulated.major = 8;
    emulated.minor = 0;
#if defined(_OPENMP)
    emulated.multiProcessorCount = omp_get_num_procs();
#else
    emulated.multiProcessorCount = 1;
#endif
    *properties = emulated;
    return cudaSuccess;
}

// --- Kernels ------------------------------------------------------------------------------------------------
template <class T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attribute, int value) {
    static_assert(std::is_function_v<T>, "cudaFuncSetAttribute: pass a kernel");
    if (kernel == nullptr) return detail::fail(cudaErrorInvalidDeviceFunction, "cudaFuncSetAttribute: the kernel is null");
    if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize)
        return detail::fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: only cudaFuncAttributeMaxDynamicSharedMemorySize is emulated");
    if (value < 0 || static_cast<std::size_t>(value) > detail::opt_in_shared_limit)
        return detail::fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(value) +
                                                       " bytes of dynamic shared memory; the device allows at most " +
                                                       std::to_string(detail::opt_in_shared_limit));
    detail::function_attributes().set_max_dynamic_shared(std::bit_cast<const void*>(kernel), static_cast<std::size_t>(value));
    return cudaSuccess;
}

// The kernel's name, demangled when the executable exports its symbol (link with -rdynamic).
template <class T>
cudaError_t cudaFuncGetName(const char** name, T* kernel) {
    static_assert(std::is_function_v<T>, "cudaFuncGetName: pass a kernel");
    if (name == nullptr || kernel == nullptr)
        return detail::fail(cudaErrorInvalidValue, "cudaFuncGetName: null argument");
    *name = detail::function_name(std::bit_cast<const void*>(kernel));
    return cudaSuccess;
}

}  // namespace api
}  // namespace gemma3::cuda::emulator
