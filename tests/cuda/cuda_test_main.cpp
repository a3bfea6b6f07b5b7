// main() of the CUDA test executables: runs the emulated cases, the device cases, or both
// (include/gemma3/cuda/runtime.hpp, "One test binary"). The backend comes from --backend=<b> or
// the environment variable GEMMA3_CUDA_BACKEND:
//   auto      (default) the emulated cases, plus the device cases when a usable GPU is present;
//   emulator  only the emulated cases;
//   device    only the device cases; fails when there is no usable GPU.
// Every other argument goes to doctest.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "device_probe.hpp"

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    const char* from_environment = std::getenv("GEMMA3_CUDA_BACKEND");
    std::string backend = from_environment != nullptr && *from_environment != '\0' ? from_environment : "auto";
    std::vector<char*> doctest_arguments;
    for (int i = 0; i < argc; ++i) {
        if (i > 0 && std::strncmp(argv[i], "--backend=", 10) == 0) {
            backend = argv[i] + 10;
        } else {
            doctest_arguments.push_back(argv[i]);
        }
    }
    if (backend != "auto" && backend != "emulator" && backend != "device") {
        std::cerr << "unknown backend \"" << backend << "\" (GEMMA3_CUDA_BACKEND or --backend=): expected auto, emulator or device\n";
        return 2;
    }

#if defined(GEMMA3_CUDA_TEST_HAS_DEVICE_BUILD)
    const gemma3::cuda::test::DeviceProbe probe = gemma3::cuda::test::probe_device();
#else
    const gemma3::cuda::test::DeviceProbe probe{
        0, "this executable was built without nvcc (GEMMA3_CUDA=OFF or no CUDA toolkit found)"};
#endif

    doctest::Context context;
    context.applyCommandLine(static_cast<int>(doctest_arguments.size()), doctest_arguments.data());
    bool run_device = probe.usable_devices > 0;
    if (backend == "emulator") run_device = false;
    if (backend == "device") {
        if (!run_device) {
            std::cerr << "GEMMA3_CUDA_BACKEND=device, but " << probe.description << "\n";
            return 1;
        }
        context.addFilter("test-suite-exclude", "emulated");
    }
    if (!run_device) context.addFilter("test-suite-exclude", "device");
    std::cout << "gemma3 CUDA tests: " << (backend == "device" ? "device" : run_device ? "emulator and device" : "emulator")
              << " (device: " << probe.description << ")\n";
    return context.run();
}
