// The device probe of the CUDA test executables (see cuda_test_main.cpp). Never throws: a machine
// without a GPU or driver is an ordinary situation here.
#include "device_probe.hpp"

#include <cuda_runtime.h>

#include <string>

namespace gemma3::cuda::test {

DeviceProbe probe_device() {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        (void)cudaGetLastError();
        return {0, std::string("no usable CUDA device: ") + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")"};
    }
    if (count == 0) return {0, "no CUDA device"};
    cudaDeviceProp properties{};
    if (cudaGetDeviceProperties(&properties, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        return {0, "cudaGetDeviceProperties failed for device 0"};
    }
    const std::string name = std::string(properties.name) + " (sm_" + std::to_string(properties.major) +
                             std::to_string(properties.minor) + ")";
    if (properties.major < 8) return {0, name + ": the kernels are built for sm_80 and sm_90 only"};
    return {count, name};
}

}  // namespace gemma3::cuda::test
