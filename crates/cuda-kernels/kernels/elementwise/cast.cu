// bf16 <-> f32 casts over flat vectors. Layout: n contiguous elements on each side.
// Threads take 8 elements (one 16-byte bf16 load, two 16-byte f32 accesses) when every pointer
// is 16-byte aligned; otherwise, and for the tail, one element. Grid-stride loop.
#include "common.cuh"

extern "C" __global__ void cast_bf16_f32(int64_t n, const __nv_bfloat16* __restrict__ x, float* __restrict__ y) {
    int64_t done = 0;
    if (tandem::aligned16(x) && tandem::aligned16(y)) {
        const int64_t n8 = n / 8;
        for (int64_t i = tandem::gtid(); i < n8; i += tandem::gstride()) {
            float f[8];
            tandem::unpack8(tandem::load8(x + 8 * i), f);
            reinterpret_cast<float4*>(y + 8 * i)[0] = make_float4(f[0], f[1], f[2], f[3]);
            reinterpret_cast<float4*>(y + 8 * i)[1] = make_float4(f[4], f[5], f[6], f[7]);
        }
        done = n8 * 8;
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
