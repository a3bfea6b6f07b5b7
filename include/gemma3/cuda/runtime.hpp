// gemma3's thin layer over the CUDA runtime: device buffers, streams, copies, kernel launch.
// The same source builds for a real GPU (nvcc) or for the CPU emulator (host compiler with
// GEMMA3_CUDA_EMULATION defined); see check.hpp for how the backend is chosen.
//
// One test binary, device or emulator chosen at run time
// ------------------------------------------------------
// A kernel test is written once, as a .cu file of doctest cases (GEMMA3_CUDA_TEST_CASE, see
// tests/cuda/cuda_test.hpp). CMake's gemma3_add_cuda_test() compiles that file twice into the same
// executable:
//  - always, by the host compiler with GEMMA3_CUDA_EMULATION (a generated .cpp that #includes it):
//    its cases are named "[emulated] ..." and run the kernels on the emulator;
//  - when the CUDA build is on (GEMMA3_CUDA), by nvcc for sm_80 and sm_90: its cases are named
//    "[device] ..." and run the kernels on the GPU.
// The two copies cannot collide at link time because everything backend-specific, kernels
// included, lives in the inline namespace gemma3::cuda::emulated or gemma3::cuda::device
// (GEMMA3_CUDA_NAMESPACE_BEGIN), and the emulator's CUDA names live in their own namespace.
// The test's main() (tests/cuda/cuda_test_main.cpp) picks what runs from GEMMA3_CUDA_BACKEND or
// --backend=: `auto` (default) runs the emulated cases, plus the device cases when a GPU is
// present; `emulator` runs only the emulated ones; `device` only the device ones and fails if there
// is no GPU. So CI without a GPU runs the emulator, and the very same binary on a GPU machine runs
// both, each checked against the same CPU references.
#pragma once

#include <gemma3/cuda/check.hpp>

#include <cxxabi.h>

#include <bit>
#include <charconv>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <source_location>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

GEMMA3_CUDA_NAMESPACE_BEGIN

inline constexpr bool is_emulated() noexcept { return GEMMA3_CUDA_IS_EMULATED != 0; }
inline constexpr const char* backend_name() noexcept { return GEMMA3_CUDA_BACKEND_NAME; }

// Number of usable devices: 0 when the machine has no GPU or no driver (the emulator has one).
inline int device_count() {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver) {
        (void)cudaGetLastError();
        return 0;
    }
    GEMMA3_CUDA_CHECK(status);
    return count;
}

// The name of a device; by default the current one (cudaSetDevice).
inline std::string device_name(int device = -1) {
    if (device < 0) GEMMA3_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp properties{};
    GEMMA3_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
    return properties.name;
}

// Waits for all work on the device; reports errors of kernels that failed asynchronously.
inline void synchronize() { GEMMA3_CUDA_CHECK(cudaDeviceSynchronize()); }

// --- Streams ---------------------------------------------------------------------------------------
// A CUDA stream. Streams made here synchronise with the legacy default stream (cudaStreamCreate),
// so the blocking copy helpers below see the results of kernels launched on them.
class Stream {
public:
    Stream() { GEMMA3_CUDA_CHECK(cudaStreamCreate(&stream_)); }
    // The legacy default stream (not owned).
    static Stream default_stream() noexcept { return Stream(nullptr, false); }

    ~Stream() { reset(); }
    Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)), owned_(std::exchange(other.owned_, false)) {}
    Stream& operator=(Stream&& other) noexcept {
        if (this != &other) {
            reset();
            stream_ = std::exchange(other.stream_, nullptr);
            owned_ = std::exchange(other.owned_, false);
        }
        return *this;
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;

    cudaStream_t get() const noexcept { return stream_; }
    void synchronize() const { GEMMA3_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

private:
    Stream(cudaStream_t stream, bool owned) noexcept : stream_(stream), owned_(owned) {}
    void reset() noexcept {
        if (owned_ && stream_ != nullptr && cudaStreamDestroy(stream_) != cudaSuccess) (void)cudaGetLastError();
        stream_ = nullptr;
        owned_ = false;
    }
    cudaStream_t stream_ = nullptr;
    bool owned_ = true;
};

// --- Copies ----------------------------------------------------------------------------------------
namespace detail {
template <class T>
std::size_t byte_count(std::size_t count, const char* what) {
    if (count > std::numeric_limits<std::size_t>::max() / sizeof(T))
        throw std::length_error(std::string(what) + ": " + std::to_string(count) + " elements overflow a byte count");
    return count * sizeof(T);
}
}  // namespace detail

// Copies and fills on the legacy default stream, ordered after earlier work on blocking streams.
// Host <-> device copies return when done; device fills and device-to-device copies may still be
// running when they return (later work on any blocking stream waits for them).
template <class T>
void copy_to_device(T* device_destination, const T* host_source, std::size_t count) {
    GEMMA3_CUDA_CHECK(cudaMemcpy(device_destination, host_source, detail::byte_count<T>(count, "copy_to_device"),
                                 cudaMemcpyHostToDevice));
}
template <class T>
void copy_to_host(T* host_destination, const T* device_source, std::size_t count) {
    GEMMA3_CUDA_CHECK(cudaMemcpy(host_destination, device_source, detail::byte_count<T>(count, "copy_to_host"),
                                 cudaMemcpyDeviceToHost));
}
template <class T>
void copy_device_to_device(T* device_destination, const T* device_source, std::size_t count) {
    GEMMA3_CUDA_CHECK(cudaMemcpy(device_destination, device_source, detail::byte_count<T>(count, "copy_device_to_device"),
                                 cudaMemcpyDeviceToDevice));
}
inline void memset_device(void* device_destination, int byte_value, std::size_t bytes) {
    GEMMA3_CUDA_CHECK(cudaMemset(device_destination, byte_value, bytes));
}

// Asynchronous versions, ordered on `stream` (host memory should be pinned for real overlap).
template <class T>
void copy_to_device_async(T* device_destination, const T* host_source, std::size_t count, const Stream& stream) {
    GEMMA3_CUDA_CHECK(cudaMemcpyAsync(device_destination, host_source, detail::byte_count<T>(count, "copy_to_device_async"),
                                      cudaMemcpyHostToDevice, stream.get()));
}
template <class T>
void copy_to_host_async(T* host_destination, const T* device_source, std::size_t count, const Stream& stream) {
    GEMMA3_CUDA_CHECK(cudaMemcpyAsync(host_destination, device_source, detail::byte_count<T>(count, "copy_to_host_async"),
                                      cudaMemcpyDeviceToHost, stream.get()));
}
inline void memset_device_async(void* device_destination, int byte_value, std::size_t bytes, const Stream& stream) {
    GEMMA3_CUDA_CHECK(cudaMemsetAsync(device_destination, byte_value, bytes, stream.get()));
}

// --- Device memory -----------------------------------------------------------------------------------
// Types whose values may be copied byte by byte between host and device: trivially copyable types,
// and __nv_bfloat162, whose copy constructor cuda_bf16.h declares user-provided although it only
// copies the two halves.
template <class T>
inline constexpr bool is_bytewise_copyable_v =
    std::is_trivially_copyable_v<T> || std::is_same_v<std::remove_cv_t<T>, __nv_bfloat162>;

// An owning array of `T` in device memory (uninitialised after construction).
template <class T>
class DeviceBuffer {
    static_assert(is_bytewise_copyable_v<T>, "DeviceBuffer: elements are copied bytewise to and from the device");

public:
    DeviceBuffer() noexcept = default;
    explicit DeviceBuffer(std::size_t count) {
        const std::size_t bytes = detail::byte_count<T>(count, "DeviceBuffer");
        if (bytes == 0) return;
        void* memory = nullptr;
        GEMMA3_CUDA_CHECK(cudaMalloc(&memory, bytes));
        data_ = static_cast<T*>(memory);
        count_ = count;
    }
    static DeviceBuffer from_host(std::span<const T> host) {
        DeviceBuffer buffer(host.size());
        buffer.upload(host);
        return buffer;
    }

    ~DeviceBuffer() { release(); }
    DeviceBuffer(DeviceBuffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        if (this != &other) {
            release();
            data_ = std::exchange(other.data_, nullptr);
            count_ = std::exchange(other.count_, 0);
        }
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    T* data() noexcept { return data_; }
    const T* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return count_; }
    std::size_t size_bytes() const noexcept { return count_ * sizeof(T); }
    bool empty() const noexcept { return count_ == 0; }

    // Whole-buffer copies; the host side must have exactly size() elements.
    void upload(std::span<const T> host) {
        require_size(host.size(), "upload");
        copy_to_device(data_, host.data(), count_);
    }
    void download(std::span<T> host) const {
        require_size(host.size(), "download");
        copy_to_host(host.data(), data_, count_);
    }
    std::vector<T> download() const {
        std::vector<T> host(count_);
        download(std::span<T>(host));
        return host;
    }
    void fill_bytes(int byte_value) { memset_device(data_, byte_value, size_bytes()); }

private:
    void require_size(std::size_t host_count, const char* what) const {
        if (host_count != count_)
            throw std::invalid_argument(std::string("DeviceBuffer::") + what + ": the host side has " +
                                        std::to_string(host_count) + " elements, the buffer " + std::to_string(count_));
    }
    void release() noexcept {
        if (data_ != nullptr && cudaFree(data_) != cudaSuccess) (void)cudaGetLastError();
        data_ = nullptr;
        count_ = 0;
    }
    T* data_ = nullptr;
    std::size_t count_ = 0;
};

// --- Kernels ---------------------------------------------------------------------------------------
// The grid of a launch; it also records where launch() was called, for error messages.
struct LaunchGrid {
    dim3 dims;
    std::source_location where;

    LaunchGrid(dim3 grid, std::source_location caller = std::source_location::current()) : dims(grid), where(caller) {}
    LaunchGrid(unsigned int x, unsigned int y = 1, unsigned int z = 1,
               std::source_location caller = std::source_location::current())
        : dims(x, y, z), where(caller) {}
};

// Dynamic shared memory of the current block: the `dynamic_shared_bytes` given to launch(),
// aligned to at least 16 bytes. Use this instead of `extern __shared__`, which the emulator
// cannot provide.
#if GEMMA3_CUDA_IS_EMULATED
template <class T>
inline T* dynamic_shared() noexcept {
    return reinterpret_cast<T*>(::gemma3::cuda::emulator::detail::tls_dynamic_shared);
}
#else
template <class T>
__device__ __forceinline__ T* dynamic_shared() noexcept {
    extern __shared__ __align__(16) unsigned char gemma3_dynamic_shared_memory[];
    return reinterpret_cast<T*>(gemma3_dynamic_shared_memory);
}
#endif

namespace detail {

// Built by appending: GCC 12 gives a false -Wrestrict for "(" + std::string at -O3 (GCC bug 105651).
inline std::string format_dims(dim3 dims) {
    std::string text(1, '(');
    text += std::to_string(dims.x);
    text += ',';
    text += std::to_string(dims.y);
    text += ',';
    text += std::to_string(dims.z);
    text += ')';
    return text;
}

// The kernel's demangled name, or its address when the runtime cannot name it.
template <class Kernel>
std::string kernel_name(Kernel* kernel) {
    const char* name = nullptr;
#if GEMMA3_CUDA_IS_EMULATED || CUDART_VERSION >= 12030
    if (cudaFuncGetName(&name, kernel) != cudaSuccess) {
        (void)cudaGetLastError();
        name = nullptr;
    }
#endif
    if (name == nullptr) {
        char buffer[32];
        const auto written =
            std::to_chars(buffer, buffer + sizeof buffer, reinterpret_cast<std::uintptr_t>(std::bit_cast<const void*>(kernel)), 16);
        return "kernel at 0x" + std::string(buffer, written.ptr);
    }
    int status = 0;
    char* demangled = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    std::string result = status == 0 && demangled != nullptr ? demangled : name;
    std::free(demangled);
    return result;
}

}  // namespace detail

// kernel<<<grid, block, dynamic_shared_bytes, stream>>>(args...), then a check of the launch:
// a failure throws CudaError naming the kernel, the configuration and the launch site. Errors that
// a running kernel raises on the device surface at the next synchronisation (synchronize(),
// Stream::synchronize(), a blocking copy); in emulation the kernel has run when this returns.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), LaunchGrid grid, dim3 block, std::size_t dynamic_shared_bytes, const Stream& stream,
            Args&&... args) {
    static_assert(sizeof...(Params) == sizeof...(Args), "launch: the number of arguments differs from the kernel's parameters");
    if constexpr (sizeof...(Params) == sizeof...(Args))
        static_assert((std::is_convertible_v<Args&&, Params> && ...),
                      "launch: an argument does not convert to the kernel's parameter type (a const pointer for a non-const parameter?)");
#if GEMMA3_CUDA_IS_EMULATED
    using Parameters = std::tuple<std::remove_cv_t<Params>...>;
    struct Closure {
        void (*kernel)(Params...);
        Parameters parameters;
    };
    const Closure closure{kernel, Parameters(std::forward<Args>(args)...)};
    ::gemma3::cuda::emulator::detail::KernelLaunch request;
    request.kernel_address = std::bit_cast<const void*>(kernel);
    request.entry = [](const void* data) {
        const Closure& bound = *static_cast<const Closure*>(data);
        std::apply(bound.kernel, bound.parameters);  // each thread gets its own copies of the parameters
    };
    request.closure = &closure;
    request.grid = grid.dims;
    request.block = block;
    request.dynamic_shared_bytes = dynamic_shared_bytes;
    (void)::gemma3::cuda::emulator::detail::launch_kernel(request, stream.get());
#else
    kernel<<<grid.dims, block, dynamic_shared_bytes, stream.get()>>>(std::forward<Args>(args)...);
#endif
    const cudaError_t status = cudaGetLastError();
    if (status == cudaSuccess) return;
    const std::string explanation = detail::backend_detail();  // before kernel_name(), which may replace it
    throw CudaError("launch of " + detail::kernel_name(kernel) + " <<<grid " + detail::format_dims(grid.dims) + ", block " +
                        detail::format_dims(block) + ", " + std::to_string(dynamic_shared_bytes) +
                        " bytes of dynamic shared memory>>> at " + grid.where.file_name() + ":" +
                        std::to_string(grid.where.line()) + " failed: " + cudaGetErrorName(status) + " (" +
                        cudaGetErrorString(status) + ")" + explanation,
                    static_cast<int>(status));
}

// Allows `kernel` to be launched with up to `bytes` of dynamic shared memory (above 48 KiB this
// opt-in is required; the device maximum is 163 KiB on sm_80 and 227 KiB on sm_90).
template <class... Params>
void set_max_dynamic_shared_bytes(void (*kernel)(Params...), std::size_t bytes) {
    if (bytes > static_cast<std::size_t>(INT_MAX))
        throw std::invalid_argument("set_max_dynamic_shared_bytes: " + std::to_string(bytes) + " bytes");
    GEMMA3_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

GEMMA3_CUDA_NAMESPACE_END
