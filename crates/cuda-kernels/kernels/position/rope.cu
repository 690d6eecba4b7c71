// Rotary position embedding (LLaMA / HF `rotate_half` convention), in place.
//
// x: `tokens` rows, each starting every `token_stride` elements, holding `heads` heads of
// head_dim D contiguous elements (so q or k inside a packed QKV row works with its offset and
// the QKV row stride). For token t at position p = positions[t], and i < D/2:
//   a = p * inv_freq[i]  (f32, as HF computes it), c = cos a, s = sin a
//   x[i]       = x[i] * c - x[i + D/2] * s
//   x[i + D/2] = x[i + D/2] * c + x[i] * s
// inv_freq[i] = rope_theta^(-2i/D) is made on the host (so scaled variants only change the
// table).
//
// Fast path (D/2 a multiple of 8, 16-byte aligned rows): a thread owns 8 consecutive i of one
// token and up to HEADS_PER_THREAD of its heads, computes the 8 (sin, cos) once and applies
// them to each of those heads with 16-byte loads of x[i..i+8] and x[i+D/2..]. Otherwise one
// thread per (token, head, i).
#include "common.cuh"

namespace rope {
constexpr int HEADS_PER_THREAD = 8;
}

extern "C" __global__ void rope_bf16(int64_t tokens, int heads, int D, int64_t token_stride, __nv_bfloat16* x,
                                     const int* __restrict__ positions, const float* __restrict__ inv_freq) {
    tandem::pdl_wait();
    tandem::pdl_trigger();
    const int half = D / 2;
    if (half % 8 == 0 && token_stride % 8 == 0 && tandem::aligned16(x)) {
        const int chunks = half / 8;
        const int hgroups = (heads + rope::HEADS_PER_THREAD - 1) / rope::HEADS_PER_THREAD;
        for (int64_t i = tandem::gtid(); i < tokens * chunks * hgroups; i += tandem::gstride()) {
            const int f0 = (int)(i % chunks) * 8;
            const int64_t th = i / chunks;
            const int h0 = (int)(th % hgroups) * rope::HEADS_PER_THREAD;
            const int64_t t = th / hgroups;
            const float pos = (float)positions[t];
            float c[8], s[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) sincosf(pos * inv_freq[f0 + k], &s[k], &c[k]);
            __nv_bfloat16* row = x + t * token_stride + f0;
            const int h1 = min(heads, h0 + rope::HEADS_PER_THREAD);
#pragma unroll 4
            for (int h = h0; h < h1; ++h) {
                __nv_bfloat16* p = row + (int64_t)h * D;
                float a[8], b[8], ra[8], rb[8];
                tandem::unpack8(tandem::load8(p), a);
                tandem::unpack8(tandem::load8(p + half), b);
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    ra[k] = a[k] * c[k] - b[k] * s[k];
                    rb[k] = b[k] * c[k] + a[k] * s[k];
                }
                tandem::store8(p, tandem::pack8(ra));
                tandem::store8(p + half, tandem::pack8(rb));
            }
        }
        return;
    }
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
