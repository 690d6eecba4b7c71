// QKᵀ of one KV block with AVX512-BF16 `vdpbf16ps`, called by paged_decode.ispc's `_dot` build.
//
// ISPC 1.26 has no bf16 type and so no way to reach `vdpbf16ps` (LLVM's intrinsic takes
// <32 x bfloat>); this one function is written in C with intrinsics and compiled by build.rs
// with the `target` attribute below, so nothing else in the archive assumes AVX512-BF16. The
// Rust side calls the `_dot` build only where `platform::cpu_tier()` reports avx512bf16.
//
// What it saves against the f32 path: that path widens the block's K into an f32 stage
// (16·d/16 loads, 2 widening ops and 2 stores per 16 values) and then runs 2 FMAs per 32 values
// per query head; here every query head runs one `vdpbf16ps` per 32 values, straight on the bf16
// K rows (L1 after the first head), and nothing is staged.
//
// Layouts: q [g][d] bf16 (the query heads of one KV head), k [16][d] bf16 (one block of one KV
// head, the paged layout's contiguous 16·d run), scores [g][16] f32, unscaled q·k. d is a
// multiple of 32 (the wrapper checks it). Rows of k past the sequence's end are read too (they
// lie inside the block) and their scores are garbage that the caller masks.
//
// vdpbf16ps multiplies pairs of bf16 exactly into f32 and adds them to the f32 accumulator
// (round to nearest even, denormals treated as zero): the same f32 accumulation as the f32 path.

#include <immintrin.h>
#include <stdint.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16")))

// 16 vectors r[t] of partial sums -> one vector whose lane t is the sum of r[t]'s lanes.
// Within 128-bit lanes first (unpack and add, twice), then across them (two shuffles of 128-bit
// lanes and an add, twice): 45 operations for 16 horizontal sums.
TGT static inline __m512 sum16(const __m512 *r) {
    __m512 u[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] for a = r[2i], b = r[2i+1]
        u[i] = _mm512_add_ps(_mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]),
                             _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]));
    }
    __m512 w[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        // per 128-bit lane: that lane's sums of r[4j], r[4j+1], r[4j+2], r[4j+3]
        __m512d x = _mm512_castps_pd(u[2 * j]);
        __m512d y = _mm512_castps_pd(u[2 * j + 1]);
        w[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    // [w0 lanes 0+1, w0 lanes 2+3, w1 lanes 0+1, w1 lanes 2+3], and the same for w2, w3
    __m512 x0 = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88),
                              _mm512_shuffle_f32x4(w[0], w[1], 0xdd));
    __m512 x1 = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], 0x88),
                              _mm512_shuffle_f32x4(w[2], w[3], 0xdd));
    // 128-bit lane j: the totals of r[4j .. 4j+3], so lane t holds token t's score
    return _mm512_add_ps(_mm512_shuffle_f32x4(x0, x1, 0x88), _mm512_shuffle_f32x4(x0, x1, 0xdd));
}

// One query head against the block's 16 rows, read row by row (each row's d/32 lines in
// address order, so the page is swept once, front to back). With `pf`, the first `pf_lines`
// 64-byte lines of the same span at `pf` are prefetched to L2 as the matching lines of k are
// read, spread over the work rather than issued in a burst.
TGT static inline __m512 qk_head(const uint16_t *q, const uint16_t *k, int32_t d,
                                 const uint16_t *pf, int32_t pf_lines) {
    __m512bh qv[8]; // d <= 256
    for (int c = 0; c < d / 32; c++) {
        qv[c] = (__m512bh)_mm512_loadu_si512(q + 32 * c);
    }
    __m512 r[16];
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) {
        r[t] = _mm512_setzero_ps();
        for (int c = 0; c < d / 32; c++) {
            int64_t o = (int64_t)t * d + 32 * c;
            __m512bh kv = (__m512bh)_mm512_loadu_si512(k + o);
            r[t] = _mm512_dpbf16_ps(r[t], qv[c], kv);
            if (pf && o < 32 * (int64_t)pf_lines) {
                _mm_prefetch((const char *)(pf + o), _MM_HINT_T1);
            }
        }
    }
    return sum16(r);
}

// pf: the same KV head's rows of the block to be read some blocks later, or NULL; pf_lines: how
// many of its first 64-byte lines to prefetch (the L2 streamer can take the rest of the page).
TGT void tandem_qk16_bf16dot(const uint16_t *q, const uint16_t *k, int32_t d, int32_t g,
                             const uint16_t *pf, int32_t pf_lines, float *scores) {
    if (g <= 0) {
        return;
    }
    _mm512_storeu_ps(scores, qk_head(q, k, d, pf, pf_lines));
    for (int h = 1; h < g; h++) {
        _mm512_storeu_ps(scores + 16 * h, qk_head(q + (int64_t)h * d, k, d, NULL, 0));
    }
}
