// CUDA's built-in vector types and the runtime's enums and handles, as the CPU emulator defines
// them. Only the subset our kernels and our runtime layer use; numeric values of the enumerators
// are those of the CUDA 13 headers, so a status printed by the emulator reads like the device's.
//
// Everything lives in gemma3::cuda::emulator::api, which cuda_emulator.hpp makes visible at global
// scope (as the real headers declare these names). Keeping them out of the global namespace
// proper gives them different linker names from the real ones, so one program can hold a
// translation unit built by nvcc and one built for the emulator (see runtime.hpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace gemma3::cuda::emulator::api {

// --- Vector types ------------------------------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) noexcept : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) noexcept : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const noexcept { return {x, y, z}; }
};

struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};

constexpr uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) noexcept { return {x, y, z}; }
constexpr float2 make_float2(float x, float y) noexcept { return {x, y}; }
constexpr float4 make_float4(float x, float y, float z, float w) noexcept { return {x, y, z, w}; }
constexpr int2 make_int2(int x, int y) noexcept { return {x, y}; }
constexpr int4 make_int4(int x, int y, int z, int w) noexcept { return {x, y, z, w}; }
constexpr uint2 make_uint2(unsigned int x, unsigned int y) noexcept { return {x, y}; }
constexpr uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) noexcept {
    return {x, y, z, w};
}

// --- Runtime enums and handles -----------------------------------------------------------------
enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInsufficientDriver = 35,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
};
using cudaError_t = cudaError;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

inline constexpr unsigned int cudaStreamDefault = 0x00;
inline constexpr unsigned int cudaStreamNonBlocking = 0x01;

// A stream of the emulator: work runs synchronously when it is issued, so a stream only needs an
// identity (to reject destroyed or foreign handles).
struct CUstream_st {
    std::uint64_t serial;
};
using cudaStream_t = CUstream_st*;

// The fields of cudaDeviceProp that our code reads; the emulator fills them with sm_80 limits.
struct cudaDeviceProp {
    char name[256];
    std::size_t totalGlobalMem;
    std::size_t sharedMemPerBlock;
    std::size_t sharedMemPerBlockOptin;
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int major;
    int minor;
    int multiProcessorCount;
};

}  // namespace gemma3::cuda::emulator::api
