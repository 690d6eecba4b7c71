// Paged decode attention, bf16 KV, f32 accumulation: one segment of one sequence for one KV
// head and all (up to MAX_G) query heads that share it. Threads, segmentation and the
// log-sum-exp merge of segments are the Rust side's (src/paged_decode.rs); these functions are
// single-threaded SPMD code, compiled for avx2-i32x8 and avx512skx-x16 with ISPC's dispatch.
//
// Layouts (row-major; bf16 travels as its 16 raw bits):
//   k_cache, v_cache  [num_blocks][num_kv_heads][16][d]   (DESIGN.md's paged layout)
//   q                 [g][d]   the g query heads of this KV head (heads kv*g .. kv*g+g-1)
//   blocks            the segment's slice of the sequence's block table: blocks[i] holds the
//                     segment's tokens 16i .. 16i+15; the segment starts on a block boundary
//   new_k, new_v      [d]      the new token's K and V for this KV head
//   out               [g][d]   bf16, written when the segment is the whole sequence
//   part_o, part_ml   [g][d], [g][2]: unnormalised Σ p·V and (max score m, Σ p) of the
//                     segment, for the merge when the sequence was cut into several segments
//
//   part_o's f32 rows, like every f32 copy of a row here, hold each chunk of 2W values
//   (W = programCount) as [W even elements][W odd elements]; see `pair` below.
//
// Per block of 16 tokens (W = 16 on avx512, 8 on avx2; d = 128, g query heads):
//   - K: the block's 16 rows of this head (16·d contiguous bf16, one 4 KiB page for d = 128)
//     are widened once into `stage` (f32, L1); every query head then reads them from there, so
//     the g heads share one pass over DRAM;
//   - QKᵀ, per head: 16 vector accumulators r[t] (registers), one per token, each summing
//     q·k over the row's chunks with lanes over head_dim; `reduce16` folds the 16 into
//     16/W vectors of per-token scores (15 two-permute-and-add folds, no per-token horizontal
//     sums);
//   - online softmax per head: running max m, running sum l, accumulator rescaled by
//     exp(m_old - m_new); tokens past the sequence's end get weight 0;
//   - PV: V is widened in registers, 8 tokens × (even, odd) = 16 vectors per chunk, and every
//     head accumulates p[t]·v[t] into its f32 accumulator (`acc`, L1) with p broadcast;
//   - K and V lines `pf_ahead` blocks ahead are prefetched to L2, spread over the loops.
//   - The `_dot` build (BF16DOT, avx512 with AVX512-BF16) replaces all of the above per block
//     by one C call (kernels/bf16dot.c: `vdpbf16ps` on the bf16 K rows, a vector softmax
//     update, PV with each chunk's accumulators in registers across the block's tokens).
// Registers (avx512, 32 zmm): QKᵀ holds r[0..15] plus the two q halves; PV holds 16 widened V
// vectors, two accumulators and broadcasts.

#include "bf16.isph"

// build.rs compiles this file twice: for every target with ISPC's dispatch (plain names), and
// for avx2 alone with NAME_SUFFIX=_avx2, so that a lower tier can be forced (TANDEM_CPU_TIER).
#ifndef NAME_SUFFIX
#define NAME_SUFFIX
#endif
#define PASTE2(a, b) a##b
#define PASTE(a, b) PASTE2(a, b)

#define BLOCK 16
// Largest head_dim and query group this kernel takes; the wrapper enforces both and splits a
// larger query group into passes of MAX_G heads.
#define MAX_D 256
#define MAX_G 16
// K and V are prefetched to L2 `pf_ahead` blocks ahead, the first `pf_lines` lines of each page
// (the wrapper's choice, default 2 blocks, whole pages: the best of 0, 1, 2, 3, 4 and 8 blocks,
// and of 4, 8, 16 and 64 lines, on the GPU host's 16 threads over 1 GiB of KV). An added L1
// prefetch of the next block lost 3-11%.

#ifdef BF16DOT
// kernels/bf16dot.c: one block's scores (`vdpbf16ps`), online softmax and PV for all g heads.
extern "C" void tandem_block16_bf16dot(uniform const uint16 * uniform q,
                                       uniform const uint16 * uniform k,
                                       uniform const uint16 * uniform v, uniform int32 d,
                                       uniform int32 g, uniform int32 valid, uniform float scale,
                                       uniform float * uniform m, uniform float * uniform l,
                                       uniform float * uniform acc,
                                       uniform const uint16 * uniform pfk,
                                       uniform const uint16 * uniform pfv,
                                       uniform int32 pf_lines);
#endif

// Sums of 16 vectors, one per token, transposed into 16/programCount vectors of per-token sums
// (token t in lane t % programCount of vector t / programCount). Each level folds pairs of
// vectors: the lower and upper halves of every token's lane group are added, and the two
// vectors' tokens are packed into one. 15 folds of two permutes and an add each, instead of 16
// separate cross-lane reductions. Every index is a compile-time constant after unrolling.
static inline float fold(float x, float y, uniform int s) {
    int h = s / 2;
    int k = programIndex / h;
    int o = programIndex % h;
    uniform int per = programCount / s;
    int src = (k < per ? 0 : programCount) + (k % per) * s + o;
    return shuffle(x, y, src) + shuffle(x, y, src + h);
}

// Written out level by level: as a loop, the compiler kept r[] on the stack.
static inline void reduce16(float r[BLOCK]) {
#if TARGET_WIDTH == 16
    r[0] = fold(r[0], r[1], 16);
    r[1] = fold(r[2], r[3], 16);
    r[2] = fold(r[4], r[5], 16);
    r[3] = fold(r[6], r[7], 16);
    r[4] = fold(r[8], r[9], 16);
    r[5] = fold(r[10], r[11], 16);
    r[6] = fold(r[12], r[13], 16);
    r[7] = fold(r[14], r[15], 16);
    r[0] = fold(r[0], r[1], 8);
    r[1] = fold(r[2], r[3], 8);
    r[2] = fold(r[4], r[5], 8);
    r[3] = fold(r[6], r[7], 8);
    r[0] = fold(r[0], r[1], 4);
    r[1] = fold(r[2], r[3], 4);
    r[0] = fold(r[0], r[1], 2);
#elif TARGET_WIDTH == 8
    r[0] = fold(r[0], r[1], 8);
    r[1] = fold(r[2], r[3], 8);
    r[2] = fold(r[4], r[5], 8);
    r[3] = fold(r[6], r[7], 8);
    r[4] = fold(r[8], r[9], 8);
    r[5] = fold(r[10], r[11], 8);
    r[6] = fold(r[12], r[13], 8);
    r[7] = fold(r[14], r[15], 8);
    r[0] = fold(r[0], r[1], 4);
    r[1] = fold(r[2], r[3], 4);
    r[2] = fold(r[4], r[5], 4);
    r[3] = fold(r[6], r[7], 4);
    r[0] = fold(r[0], r[1], 2);
    r[1] = fold(r[2], r[3], 2);
#else
#error "paged_decode.ispc: reduce16 is written for 8- and 16-wide targets"
#endif
}

typedef unsigned int32 pair;

// A 32-bit word holds two adjacent bf16 values; each widens to f32 with one shift or one mask.
// Rows are therefore processed in chunks of 2·programCount values read as programCount words,
// and every f32 copy of a row (staged K, q, the accumulators, the partial results) keeps a
// chunk as [even elements][odd elements]. Dot products do not care about the order, and the
// output is re-interleaved when it is packed back into bf16 pairs.
static inline float lo_f32(pair w) { return floatbits(w << 16); }
static inline float hi_f32(pair w) { return floatbits(w & 0xffff0000); }
static inline pair pack_bf16(float lo, float hi) {
    return (pair)f32_to_bf16(lo) | ((pair)f32_to_bf16(hi) << 16);
}

export void PASTE(ispc_paged_decode_segment_bf16, NAME_SUFFIX)(
    uniform const uint16 q[],
    uniform uint16 k_cache[], uniform uint16 v_cache[],
    uniform const int32 blocks[], uniform int32 ntok,
    uniform int64 block_stride, uniform int64 head_off,
    uniform int32 d, uniform int32 g, uniform float scale,
    uniform const uint16 new_k[], uniform const uint16 new_v[], uniform int32 append_at,
    uniform uint16 out[], uniform float part_o[], uniform float part_ml[],
    uniform int32 pf_ahead, uniform int32 pf_lines)
{
    // Fused KV append: the new token's slot is written before anything of this segment is read.
    if (append_at >= 0) {
        uniform int64 off = (uniform int64)blocks[append_at / BLOCK] * block_stride + head_off
            + (uniform int64)(append_at % BLOCK) * d;
        foreach (j = 0 ... d) {
            k_cache[off + j] = new_k[j];
            v_cache[off + j] = new_v[j];
        }
    }

    uniform const int W = programCount;
    uniform const int nc = d / (2 * W); // chunks per row
    uniform const int hw = d / 2;       // words per row
    uniform float qs[MAX_G * MAX_D];
    uniform float acc[MAX_G * MAX_D];
    uniform float m[MAX_G];
    uniform float l[MAX_G];
    uniform const pair * uniform q32 = (uniform const pair * uniform)q;
    for (uniform int h = 0; h < g; h++) {
        for (uniform int c = 0; c < nc; c++) {
            uniform int o = h * d + c * 2 * W;
#ifndef BF16DOT
            pair w = q32[h * hw + c * W + programIndex];
            qs[o + programIndex] = lo_f32(w) * scale;
            qs[o + W + programIndex] = hi_f32(w) * scale;
#endif
            acc[o + programIndex] = 0.0f;
            acc[o + W + programIndex] = 0.0f;
        }
        m[h] = -floatbits(0x7f800000);
        l[h] = 0.0f;
    }

    uniform float stage[BLOCK * MAX_D];
    uniform float p[MAX_G][BLOCK];
    uniform float alpha[MAX_G];
    uniform const int nblocks = (ntok + BLOCK - 1) / BLOCK;
    for (uniform int b = 0; b < nblocks; b++) {
        uniform const int valid = min(BLOCK, ntok - b * BLOCK);
        uniform const int64 base = (uniform int64)blocks[b] * block_stride + head_off;
        uniform const pair * uniform k32 = (uniform const pair * uniform)(k_cache + base);
        uniform const pair * uniform v32 = (uniform const pair * uniform)(v_cache + base);
        // Software prefetch `pf_ahead` blocks ahead, spread over this block's loops: each block of a
        // head is one 4 KiB page (d = 128) at an unrelated address, where the hardware
        // prefetcher would start cold.
        // (Table entries past the segment's last block are never read: the ids are loaded
        // under an `if`, not a select, which could evaluate both sides.)
        uniform const bool pf = pf_ahead > 0 && b + pf_ahead < nblocks;
        uniform int64 ahead = base;
        if (pf) {
            ahead = (uniform int64)blocks[b + pf_ahead] * block_stride + head_off;
        }
        uniform const int8 * uniform kn = (uniform const int8 * uniform)(k_cache + ahead);
        uniform const int8 * uniform vn = (uniform const int8 * uniform)(v_cache + ahead);

#ifdef BF16DOT
        // The whole block in C (kernels/bf16dot.c): QKᵀ by vdpbf16ps on the bf16 rows, the
        // softmax update and PV with the accumulators in registers; it prefetches too.
        tandem_block16_bf16dot(q, k_cache + base, v_cache + base, d, g, valid, scale, m, l, acc,
                               pf ? k_cache + ahead : NULL, pf ? v_cache + ahead : NULL,
                               pf_lines);
#else
        // K widened once into `stage` ([t][chunk][even|odd][W]); rows past `valid` are zeros,
        // never the slots' contents (unwritten, or another step's).
        for (uniform int t = 0; t < BLOCK; t++) {
            for (uniform int c = 0; c < nc; c++) {
                pair w = 0;
                if (t < valid) {
                    w = k32[t * hw + c * W + programIndex];
                }
                uniform int o = t * d + c * 2 * W;
                stage[o + programIndex] = lo_f32(w);
                stage[o + W + programIndex] = hi_f32(w);
            }
            if (pf) {
                for (uniform int x = 0; x < 2 * d; x += 64) {
                    if (t * 2 * d + x < 64 * pf_lines) {
                        prefetch_l2(kn + t * 2 * d + x);
                    }
                }
            }
        }

        // QKᵀ: 16 per-token accumulators over head_dim, folded into per-token scores.
        for (uniform int h = 0; h < g; h++) {
            float r[BLOCK];
            #pragma unroll
            for (uniform int t = 0; t < BLOCK; t++) {
                r[t] = 0.0f;
            }
            for (uniform int c = 0; c < nc; c++) {
                uniform int o = c * 2 * W;
                float qe = qs[h * d + o + programIndex];
                float qo = qs[h * d + o + W + programIndex];
                #pragma unroll
                for (uniform int t = 0; t < BLOCK; t++) {
                    r[t] += qe * stage[t * d + o + programIndex];
                    r[t] += qo * stage[t * d + o + W + programIndex];
                }
            }
            reduce16(r);
            #pragma unroll
            for (uniform int v = 0; v < BLOCK / programCount; v++) {
                uniform int t0 = v * programCount;
                p[h][t0 + programIndex] = (t0 + programIndex < valid) ? r[v] : -floatbits(0x7f800000);
            }
        }

        // Online softmax over the block; masked tokens have score -inf, weight 0.
        for (uniform int h = 0; h < g; h++) {
            float mx = -floatbits(0x7f800000);
            foreach (t = 0 ... BLOCK) {
                mx = max(mx, p[h][t]);
            }
            uniform float m_new = max(m[h], reduce_max(mx));
            alpha[h] = (m[h] == -floatbits(0x7f800000)) ? 0.0f : exp(m[h] - m_new);
            float sum = 0.0f;
            foreach (t = 0 ... BLOCK) {
                float e = (t < valid) ? exp(p[h][t] - m_new) : 0.0f;
                p[h][t] = e;
                sum += e;
            }
            l[h] = l[h] * alpha[h] + reduce_add(sum);
            m[h] = m_new;
        }

        // PV: lanes over head_dim, V widened in registers (8 tokens at a time, even and odd
        // halves: 16 registers), the weights broadcast; every head of the group reuses them.
        for (uniform int c = 0; c < nc; c++) {
            for (uniform int t0 = 0; t0 < BLOCK; t0 += 8) {
                float ve[8];
                float vo[8];
                #pragma unroll
                for (uniform int i = 0; i < 8; i++) {
                    pair w = 0;
                    if (t0 + i < valid) {
                        w = v32[(t0 + i) * hw + c * W + programIndex];
                    }
                    ve[i] = lo_f32(w);
                    vo[i] = hi_f32(w);
                }
                for (uniform int h = 0; h < g; h++) {
                    uniform int o = h * d + c * 2 * W;
                    uniform float sc = (t0 == 0) ? alpha[h] : 1.0f;
                    float ae = acc[o + programIndex] * sc;
                    float ao = acc[o + W + programIndex] * sc;
                    #pragma unroll
                    for (uniform int i = 0; i < 8; i++) {
                        ae += p[h][t0 + i] * ve[i];
                        ao += p[h][t0 + i] * vo[i];
                    }
                    acc[o + programIndex] = ae;
                    acc[o + W + programIndex] = ao;
                }
                if (pf) {
                    for (uniform int i = 0; i < 8; i++) {
                        if ((t0 + i) * 2 * d + c * 4 * W < 64 * pf_lines) {
                            prefetch_l2(vn + (t0 + i) * 2 * d + c * 4 * W);
                        }
                    }
                }
            }
        }
#endif
    }

    if (out != NULL) {
        uniform pair * uniform o32 = (uniform pair * uniform)out;
        for (uniform int h = 0; h < g; h++) {
            uniform float inv = 1.0f / l[h];
            for (uniform int c = 0; c < nc; c++) {
                uniform int o = h * d + c * 2 * W;
                o32[h * hw + c * W + programIndex] =
                    pack_bf16(acc[o + programIndex] * inv, acc[o + W + programIndex] * inv);
            }
        }
    } else {
        foreach (i = 0 ... g * d) {
            part_o[i] = acc[i];
        }
        for (uniform int h = 0; h < g; h++) {
            part_ml[2 * h] = m[h];
            part_ml[2 * h + 1] = l[h];
        }
    }
}

// Merges the nseg partial results of one (sequence, KV head) by log-sum-exp and writes the
// normalised output. part_o [nseg][g][d] in the chunked even|odd order above, part_ml
// [nseg][g][2], out [g][d] bf16.
export void PASTE(ispc_paged_decode_merge_bf16, NAME_SUFFIX)(
    uniform const float part_o[], uniform const float part_ml[], uniform int32 nseg,
    uniform int32 g, uniform int32 d, uniform uint16 out[])
{
    uniform const int W = programCount;
    uniform pair * uniform o32 = (uniform pair * uniform)out;
    for (uniform int h = 0; h < g; h++) {
        uniform float mx = -floatbits(0x7f800000);
        for (uniform int s = 0; s < nseg; s++) {
            mx = max(mx, part_ml[(s * g + h) * 2]);
        }
        uniform float l = 0.0f;
        for (uniform int s = 0; s < nseg; s++) {
            l += exp(part_ml[(s * g + h) * 2] - mx) * part_ml[(s * g + h) * 2 + 1];
        }
        uniform float inv = 1.0f / l;
        for (uniform int c = 0; c < d / (2 * W); c++) {
            float ae = 0.0f;
            float ao = 0.0f;
            for (uniform int s = 0; s < nseg; s++) {
                uniform float w = exp(part_ml[(s * g + h) * 2] - mx);
                uniform int o = (s * g + h) * d + c * 2 * W;
                ae += w * part_o[o + programIndex];
                ao += w * part_o[o + W + programIndex];
            }
            o32[h * d / 2 + c * W + programIndex] = pack_bf16(ae * inv, ao * inv);
        }
    }
}
