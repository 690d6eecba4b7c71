// y[i] = a * x[i] + y[i] over bf16 vectors, f32 arithmetic. Grid-stride loop.
#include "common.cuh"

extern "C" __global__ void axpy_bf16(int64_t n, float a, const __nv_bfloat16* __restrict__ x,
                                     __nv_bfloat16* __restrict__ y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        y[i] = tandem::to_bf16(a * tandem::to_f32(x[i]) + tandem::to_f32(y[i]));
    }
}
