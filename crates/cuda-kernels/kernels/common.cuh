// Shared device helpers for every kernel of the crate.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

namespace tandem {

// Programmatic dependent launch (sm_90 and later; src/launch.rs): pdl_wait() returns once the
// kernel before this one in the stream has completed and its writes are visible; a kernel the
// launcher starts with PDL calls it before any access that depends on earlier work. pdl_trigger()
// lets the next such kernel be scheduled (it then runs up to its own wait). Both do nothing on
// older GPUs and after an ordinary launch.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ __nv_bfloat16 to_bf16(float x) { return __float2bfloat16(x); }

// Eight bf16 in one 16-byte register group: the unit of every vectorized load and store.
struct alignas(16) bf16x8 {
    __nv_bfloat162 h[4];
};

__device__ __forceinline__ void unpack8(const bf16x8& v, float* f) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 t = __bfloat1622float2(v.h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

__device__ __forceinline__ bf16x8 pack8(const float* f) {
    bf16x8 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) v.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return v;
}

// One 16-byte access each; p must be 16-byte aligned and in global memory. A plain copy of
// the struct is done member by member (four 4-byte accesses), and even a uint4 store is left
// to a vectorizer pass that sometimes splits it, so the load goes through uint4 (which comes
// out whole) and the store is written out in PTX. That store is also a compiler barrier for
// memory: issue every load an iteration needs before its first store8.
__device__ __forceinline__ bf16x8 load8(const __nv_bfloat16* p) {
    union {
        uint4 u;
        bf16x8 v;
    } t;
    t.u = *reinterpret_cast<const uint4*>(p);
    return t.v;
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const bf16x8& v) {
    union {
        bf16x8 v;
        uint4 u;
    } t;
    t.v = v;
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(t.u.x), "r"(t.u.y), "r"(t.u.z), "r"(t.u.w)
                 : "memory");
}
// A uint4 to global memory, 16-byte aligned (see store8).
__device__ __forceinline__ void store16(void* p, const uint4& u) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(u.x), "r"(u.y), "r"(u.z), "r"(u.w)
                 : "memory");
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call ends with the scratch free again.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

// Grid-stride index helpers.
__device__ __forceinline__ int64_t gtid() { return blockIdx.x * (int64_t)blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t gstride() { return (int64_t)gridDim.x * blockDim.x; }
}  // namespace tandem
