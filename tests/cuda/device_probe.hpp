// Whether this machine has a GPU the device build of the CUDA tests can run on.
#pragma once

#include <string>

namespace gemma3::cuda::test {

struct DeviceProbe {
    int usable_devices = 0;   // 0: run only the emulated cases
    std::string description;  // the device, or why there is none
};

// Defined in device_probe.cu, which is compiled by nvcc when the CUDA build is on.
DeviceProbe probe_device();

}  // namespace gemma3::cuda::test
