// Rotary position embedding (LLaMA / HF `rotate_half` convention), in place.
//
// x: `tokens` rows, each starting every `token_stride` elements, holding `heads` heads of
// head_dim D contiguous elements (so q or k inside a packed QKV row works with its offset and
// the QKV row stride). For token t at position p = positions[t], and i < D/2:
//   a = p * inv_freq[i]  (f32, as HF computes it), c = cos a, s = sin a
//   x[i]       = x[i] * c - x[i + D/2] * s
//   x[i + D/2] = x[i + D/2] * c + x[i] * s
// inv_freq[i] = rope_theta^(-2i/D) is made on the host (so scaled variants only change the
// table). One thread per (token, head, i) pair; grid-stride loop.
#include "common.cuh"

extern "C" __global__ void rope_bf16(int64_t tokens, int heads, int D, int64_t token_stride, __nv_bfloat16* x,
                                     const int* __restrict__ positions, const float* __restrict__ inv_freq) {
    const int half = D / 2;
    const int64_t n = tokens * heads * half;
    for (int64_t i = tandem::gtid(); i < n; i += tandem::gstride()) {
        const int f = (int)(i % half);
        const int64_t th = i / half;
        const int h = (int)(th % heads);
        const int64_t t = th / heads;
        __nv_bfloat16* p = x + t * token_stride + (int64_t)h * D;
        float s, c;
        sincosf((float)positions[t] * inv_freq[f], &s, &c);
        const float a = tandem::to_f32(p[f]), b = tandem::to_f32(p[f + half]);
        p[f] = tandem::to_bf16(a * c - b * s);
        p[f + half] = tandem::to_bf16(b * c + a * s);
    }
}
