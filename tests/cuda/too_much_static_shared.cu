// Must NOT compile: 49 KiB of static shared memory exceeds the 48 KiB a block may declare
// statically. The emulator cannot measure static shared memory, so this limit is enforced by
// ptxas when nvcc compiles a kernel (CTest cuda_static_shared_limit expects the error).
__global__ void too_much_static_shared(float* out) {
    __shared__ float buffer[49 * 1024 / 4];
    buffer[threadIdx.x] = static_cast<float>(threadIdx.x);
    __syncthreads();
    out[threadIdx.x] = buffer[(threadIdx.x + 1) % (49 * 1024 / 4)];
}
