// One KV block of paged decode attention with AVX512-BF16 `vdpbf16ps`: scores, the online
// softmax update and PV, called per block by paged_decode.ispc's `_dot` build.
//
// ISPC 1.26 has no bf16 type and so no way to reach `vdpbf16ps` (LLVM's intrinsic takes
// <32 x bfloat>); this file is C with intrinsics, compiled by build.rs with the `target`
// attribute below, so nothing else in the archive assumes AVX512-BF16. The Rust side calls the
// `_dot` build only where `platform::cpu_tier()` reports avx512bf16 and TANDEM_CPU_DECODE_DOT=1:
// on the GPU host's cores `vdpbf16ps` retires one zmm every two cycles, so widening K once and
// running f32 FMAs per head (the ISPC build) is faster there, and this build is kept, tested,
// for CPUs where the dot product is full rate.
//
// Layouts: q [g][d] bf16 (the query heads of one KV head), k and v [16][d] bf16 (one block of
// one KV head, the paged layout's contiguous 16·d runs), acc [g][d] f32 in paged_decode.ispc's
// avx512 chunk order. d is a multiple of 32 (the wrapper checks it). Rows past the sequence's
// end: K rows are read and their scores masked to -inf; V rows are never read.
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


// e^x for x <= 0 (scores minus their running max), Cephes' expf: x = n·ln2 + r with |r| <= ln2/2,
// e^r by a degree-7 polynomial (about 1 ulp), times 2^n by `vscalefps`. Below -104 the f32 result
// is 0 (the smallest denormal is 2^-149), so x is clamped there, which also keeps -inf finite.
TGT static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

// PV for `hg` query heads (1, 2 or 4; constants after inlining) over the block's first `valid`
// V rows: acc[h] = alpha[h]·acc[h] + Σ_t p[h][t]·v[t]. One 32-value chunk (one 64-byte line
// of a row) at a time, the chunk's accumulators in registers across all tokens: 2·hg·s zmm,
// where `s` accumulator sets take tokens in turn so that at least 8 FMA chains are in flight
// (two FMA ports, 4 cycles each). Each V word widens to f32 by one shift (even element) and one
// mask (odd element), so acc keeps a chunk as [16 even][16 odd], as paged_decode.ispc's
// avx512 build does. Rows past `valid` are never read (their contents may be anything).
// With `pf`, the ahead block's V lines are prefetched, line c of every row with chunk c.
TGT static inline __attribute__((always_inline)) void pv_heads(
    const uint16_t *v, int32_t d, int32_t valid, const float *p, const float *alpha, float *acc,
    const int hg, const int s, const uint16_t *pf, int32_t pf_lines) {
    const __m512i odd = _mm512_set1_epi32((int)0xffff0000u);
    for (int c = 0; c < d / 32; c++) {
        __m512 ae[4][4];
        __m512 ao[4][4];
        for (int h = 0; h < hg; h++) {
            __m512 a = _mm512_set1_ps(alpha[h]);
            ae[0][h] = _mm512_mul_ps(a, _mm512_loadu_ps(acc + (int64_t)h * d + 32 * c));
            ao[0][h] = _mm512_mul_ps(a, _mm512_loadu_ps(acc + (int64_t)h * d + 32 * c + 16));
            for (int j = 1; j < s; j++) {
                ae[j][h] = _mm512_setzero_ps();
                ao[j][h] = _mm512_setzero_ps();
            }
        }
        int t = 0;
        for (; t + s <= valid; t += s) {
            for (int j = 0; j < s; j++) {
                __m512i w = _mm512_loadu_si512(v + (int64_t)(t + j) * d + 32 * c);
                __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
                __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(w, odd));
                for (int h = 0; h < hg; h++) {
                    __m512 pw = _mm512_set1_ps(p[16 * h + t + j]);
                    ae[j][h] = _mm512_fmadd_ps(pw, lo, ae[j][h]);
                    ao[j][h] = _mm512_fmadd_ps(pw, hi, ao[j][h]);
                }
            }
        }
        for (; t < valid; t++) {
            __m512i w = _mm512_loadu_si512(v + (int64_t)t * d + 32 * c);
            __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
            __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(w, odd));
            for (int h = 0; h < hg; h++) {
                __m512 pw = _mm512_set1_ps(p[16 * h + t]);
                ae[0][h] = _mm512_fmadd_ps(pw, lo, ae[0][h]);
                ao[0][h] = _mm512_fmadd_ps(pw, hi, ao[0][h]);
            }
        }
        for (int h = 0; h < hg; h++) {
            for (int j = 1; j < s; j++) {
                ae[0][h] = _mm512_add_ps(ae[0][h], ae[j][h]);
                ao[0][h] = _mm512_add_ps(ao[0][h], ao[j][h]);
            }
            _mm512_storeu_ps(acc + (int64_t)h * d + 32 * c, ae[0][h]);
            _mm512_storeu_ps(acc + (int64_t)h * d + 32 * c + 16, ao[0][h]);
        }
        if (pf) {
            for (int r = 0; r < 16; r++) {
                if (r * (d / 32) + c < pf_lines) {
                    _mm_prefetch((const char *)(pf + (int64_t)r * d + 32 * c), _MM_HINT_T1);
                }
            }
        }
    }
}

// One block of 16 tokens of one KV head for its g query heads (1 <= g <= 16): scores by
// `vdpbf16ps`, the online softmax update of the running max m[h] and sum l[h], and PV into
// acc[h] (f32, chunks of [16 even][16 odd] values; see pv_heads). Tokens from `valid` on are
// masked out (score -inf, weight 0, V rows unread). k, v: the block's [16][d] rows; pfk, pfv:
// the rows of a block to be read later (or NULL), whose first pf_lines lines are prefetched to
// L2, K's during the first head's scores and V's during the first heads' PV.
TGT void tandem_block16_bf16dot(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                int32_t d, int32_t g, int32_t valid, float scale, float *m,
                                float *l, float *acc, const uint16_t *pfk, const uint16_t *pfv,
                                int32_t pf_lines) {
    if (g <= 0 || g > 16 || valid <= 0) {
        return;
    }
    float p[16 * 16] __attribute__((aligned(64)));
    float gap[16] __attribute__((aligned(64)));
    float sum[16] __attribute__((aligned(64)));
    const __mmask16 live = valid >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << valid) - 1);
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    // Scores of all heads first, then the softmax of each: the softmax is a chain of
    // dependent steps (max, exp, sum) that overlaps across heads only when its iterations are
    // short; run head by head after each head's scores, it cost as much as the scores.
    for (int h = 0; h < g; h++) {
        __m512 sc = qk_head(q + (int64_t)h * d, k, d, h == 0 ? pfk : NULL, pf_lines);
        _mm512_store_ps(p + 16 * h, _mm512_mul_ps(sc, _mm512_set1_ps(scale)));
    }
    for (int h = 0; h < g; h++) {
        __m512 sc = _mm512_mask_blend_ps(live, ninf, _mm512_load_ps(p + 16 * h));
        float bm = _mm512_reduce_max_ps(sc);
        float mn = m[h] > bm ? m[h] : bm;
        __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(sc, _mm512_set1_ps(mn))));
        _mm512_store_ps(p + 16 * h, e);
        sum[h] = _mm512_reduce_add_ps(e);
        gap[h] = m[h] - mn; // -inf on the segment's first block
        m[h] = mn;
    }
    // alpha = e^(m_old - m_new) for all heads in one vector; 0 where m_old was -inf.
    const __mmask16 heads = (__mmask16)((1u << g) - 1);
    __m512 gp = _mm512_maskz_loadu_ps(heads, gap);
    __mmask16 seen = _mm512_mask_cmp_ps_mask(heads, gp, ninf, _CMP_NEQ_OQ);
    float alpha[16] __attribute__((aligned(64)));
    _mm512_store_ps(alpha, _mm512_maskz_mov_ps(seen, exp512(gp)));
    for (int h = 0; h < g; h++) {
        l[h] = l[h] * alpha[h] + sum[h];
    }
    int h = 0;
    for (; h + 4 <= g; h += 4) {
        pv_heads(v, d, valid, p + 16 * h, alpha + h, acc + (int64_t)h * d, 4, 1,
                 h == 0 ? pfv : NULL, pf_lines);
    }
    if (h + 2 <= g) {
        pv_heads(v, d, valid, p + 16 * h, alpha + h, acc + (int64_t)h * d, 2, 2,
                 h == 0 ? pfv : NULL, pf_lines);
        h += 2;
    }
    if (h < g) {
        pv_heads(v, d, valid, p + 16 * h, alpha + h, acc + (int64_t)h * d, 1, 4,
                 h == 0 ? pfv : NULL, pf_lines);
    }
}
