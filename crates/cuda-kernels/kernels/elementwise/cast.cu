// bf16 <-> f32 casts over flat vectors. Layout: n contiguous elements on each side.
// When every pointer is 16-byte aligned a thread takes 4 (bf16 -> f32) or 8 (f32 -> bf16)
// elements per step; otherwise, and for the tail, one element. Grid-stride loop.
#include "common.cuh"

extern "C" __global__ void cast_bf16_f32(int64_t n, const __nv_bfloat16* __restrict__ x, float* __restrict__ y) {
    int64_t done = 0;
    if (tandem::aligned16(x) && tandem::aligned16(y)) {
        // 4 elements per step: an 8-byte load and one 16-byte store, both contiguous across
        // the warp.
        const int64_t n4 = n / 4;
        for (int64_t i = tandem::gtid(); i < n4; i += tandem::gstride()) {
            const uint2 u = reinterpret_cast<const uint2*>(x)[i];
            const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
            const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
            reinterpret_cast<float4*>(y)[i] = make_float4(lo.x, lo.y, hi.x, hi.y);
        }
        done = n4 * 4;
    }
    for (int64_t i = done + tandem::gtid(); i < n; i += tandem::gstride()) y[i] = tandem::to_f32(x[i]);
}

extern "C" __global__ void cast_f32_bf16(int64_t n, const float* __restrict__ x, __nv_bfloat16* __restrict__ y) {
    int64_t done = 0;
    if (tandem::aligned16(x) && tandem::aligned16(y)) {
        const int64_t n8 = n / 8;
        for (int64_t i = tandem::gtid(); i < n8; i += tandem::gstride()) {
            float4 a = reinterpret_cast<const float4*>(x + 8 * i)[0];
            float4 b = reinterpret_cast<const float4*>(x + 8 * i)[1];
            float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
            tandem::store8(y + 8 * i, tandem::pack8(f));
        }
        done = n8 * 8;
    }
    for (int64_t i = done + tandem::gtid(); i < n; i += tandem::gstride()) y[i] = tandem::to_bf16(x[i]);
}

// bf16 -> bf16 copy (a step's rows read by the SMs from mapped host memory, see
// transfer::pull_bf16): 8 elements per 16-byte step where both pointers allow it.
extern "C" __global__ void copy_bf16(int64_t n, const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y) {
    int64_t done = 0;
    if (tandem::aligned16(x) && tandem::aligned16(y)) {
        const int64_t n8 = n / 8;
        for (int64_t i = tandem::gtid(); i < n8; i += tandem::gstride())
            reinterpret_cast<uint4*>(y)[i] = reinterpret_cast<const uint4*>(x)[i];
        done = n8 * 8;
    }
    for (int64_t i = done + tandem::gtid(); i < n; i += tandem::gstride()) y[i] = x[i];
}
