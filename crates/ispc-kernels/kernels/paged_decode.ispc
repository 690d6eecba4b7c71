// Paged decode attention, bf16 KV, f32 accumulation: one segment of one sequence for `nh`
// consecutive KV heads and all (up to MAX_G) query heads of each. Threads, segmentation and the
// log-sum-exp merge of segments are the Rust side's (src/paged_decode.rs); these functions are
// single-threaded SPMD code, compiled for avx2-i32x8 and avx512skx-x16 with ISPC's dispatch.
//
// Layouts (row-major; bf16 travels as its 16 raw bits):
//   k_cache, v_cache  [num_blocks][num_kv_heads][16][d]   (DESIGN.md's paged layout)
//   q                 [nh][g][d]  the g query heads of each of the nh KV heads (heads
//                     kv*g .. kv*g+g-1 of the sequence's [num_q_heads][d] row)
//   blocks            the segment's slice of the sequence's block table: blocks[i] holds the
//                     segment's tokens 16i .. 16i+15; the segment starts on a block boundary
//   new_k, new_v      [nh][d]  the new token's K and V for these KV heads
//   out               [nh][g][d]  bf16, written when the segment is the whole sequence
//   part_o, part_ml   per KV head hh at hh·part_stride·d and hh·part_stride·2: [g][d] and
//                     [g][2], the unnormalised Σ p·V and (max score m, Σ p) of the segment, for
//                     the merge when the sequence was cut into several segments
//
// Per block, the nh heads' pages are read one after another: the block's K rows of all KV
// heads are one contiguous run (nh × 4 KiB at d = 128), and so are its V rows, where one head
// per call read a 4 KiB page per block at scattered addresses.
//
//   part_o's f32 rows, like every f32 copy of a row here, hold each chunk of 2W values
//   (W = programCount) as [W even elements][W odd elements]; see `pair` below.
//
// Per block of 16 tokens (W = 16 on avx512, 8 on avx2; d = 128, g query heads), in three
// phases, each a separate non-inlined function (kernels/paged_decode_pass.isph, block_softmax)
// so that registers are allocated for each alone:
//   - QKᵀ for all heads, in passes of 4 heads (avx512; 2 on avx2): the block's K rows are read
//     as bf16 pairs and widened in registers, each word once per pass for all its heads; 4
//     tokens × 4 heads = 16 accumulators (registers) with lanes over head_dim; every 4 tokens'
//     accumulators are folded (`fold4`) into one vector of partial sums;
//   - then the online softmax of every head (running max m, running sum l, accumulator rescaled
//     by alpha = exp(m_old - m_new), computed for all heads in one vector): with all the scores
//     done first, the max -> exp -> sum chains of different heads overlap; tokens past the
//     sequence's end get score -inf and weight 0;
//   - PV in passes of 8 heads over 1 chunk, then of 4 heads over 2 chunks of every row (avx512;
//     4 heads over 1 chunk on avx2), the 16 accumulators in registers across the block's
//     tokens, each V word widened once for all heads of the pass, p[h][t] broadcast;
//   - K and V lines `pf_ahead` blocks ahead are prefetched to L2, spread over the passes.
//   - The `_dot` build (BF16DOT, avx512 with AVX512-BF16) replaces all of the above per block
//     by one C call (kernels/bf16dot.c: `vdpbf16ps` on the bf16 K rows, a vector softmax
//     update, PV with each chunk's accumulators in registers across the block's tokens).
// Registers (avx512, 32 zmm): QKᵀ holds 16 accumulators, 8 q vectors (4 heads × even, odd) and
// the widened K word; PV 16 accumulators, 4 or 8 broadcast weights and 2 widened V words.

#include "bf16.isph"

// SKIP_QK, SKIP_SOFTMAX and SKIP_PV leave that phase out (wrong results, for timing only):
// ci/build-device.sh builds benches/segment_min.c with each, so that the time of each phase on
// one core is the full build's time less that build's (ci/anchors/ispc_phases.sh). build.rs
// defines none of them.
//
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
// Query heads of all KV heads of one call (nh · g), and their f32 staging (nh · g · d).
#define MAX_HG 32
#define MAX_HGD (MAX_G * MAX_D)
// K and V are prefetched to L2 `pf_ahead` blocks ahead, the first `pf_lines` lines of each page
// (the wrapper's choice, default 1 block, whole pages: the best of 0, 1, 2, 4 and 8 blocks, and
// of 2, 4, 16 and 64 lines, on the GPU host's 16 threads over 1 GiB of KV). An added L1
// prefetch of the next block lost 3-11% (on an earlier version of the passes).

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

// Per-token sums of vectors of partial sums, without a horizontal sum per token: a vector at
// level s holds programCount / s consecutive tokens, each in a group of s lanes whose sum is
// the token's total. fold(x, y, s) adds the lower and upper halves of every group of x and y
// and packs x's tokens then y's into one vector at level s / 2 (two permutes and an add).
// 16 vectors of one token each (level programCount) become 16 / programCount vectors of
// per-token sums (token t in lane t % programCount) in 15 folds. Every index is a compile-time
// constant after inlining.
static inline float fold(float x, float y, uniform int s) {
    int h = s / 2;
    int k = programIndex / h;
    int o = programIndex % h;
    uniform int per = programCount / s;
    int src = (k < per ? 0 : programCount) + (k % per) * s + o;
    return shuffle(x, y, src) + shuffle(x, y, src + h);
}

typedef unsigned int32 pair;

// A 32-bit word holds two adjacent bf16 values; each widens to f32 with one shift or one mask.
// Rows are therefore processed in chunks of 2·programCount values read as programCount words,
// and every f32 copy of a row (q, the accumulators, the partial results) keeps a
// chunk as [even elements][odd elements]. Dot products do not care about the order, and the
// output is re-interleaved when it is packed back into bf16 pairs.
static inline float lo_f32(pair w) { return floatbits(w << 16); }
static inline float hi_f32(pair w) { return floatbits(w & 0xffff0000); }
static inline pair pack_bf16(float lo, float hi) {
    return (pair)f32_to_bf16(lo) | ((pair)f32_to_bf16(hi) << 16);
}

// Four consecutive token vectors at level s (s lanes per token) folded into one at level s / 4.
static inline float fold4(float a, float b, float c, float d, uniform int s) {
    return fold(fold(a, b, s), fold(c, d, s), s / 2);
}

#ifndef BF16DOT // (the `_dot` build runs its blocks in kernels/bf16dot.c)
// One pass of QKᵀ over HG query heads and one pass of PV over HG heads and CC chunks, each a
// separate function compiled from kernels/paged_decode_pass.isph with HG, TT and CC as literal
// constants (with template parameters as loop bounds, ISPC 1.26 kept the accumulator arrays on
// the stack), and not inlined, so that registers are allocated for each pass alone.
#if TARGET_WIDTH == 16
#define HG 4
#define TT 4
#define QK_NAME qk_pass_4
#include "paged_decode_pass.isph"
#define HG 2
#define TT 8
#define QK_NAME qk_pass_2
#include "paged_decode_pass.isph"
#define HG 1
#define TT 16
#define QK_NAME qk_pass_1
#include "paged_decode_pass.isph"
#define HG 8
#define CC 1
#define PV_NAME pv_chunks_8
#include "paged_decode_pass.isph"
#define HG 4
#define CC 2
#define PV_NAME pv_chunks_4
#include "paged_decode_pass.isph"
#define HG 2
#define CC 4
#define PV_NAME pv_chunks_2
#include "paged_decode_pass.isph"
#define HG 1
#define CC 4
#define PV_NAME pv_chunks_1
#include "paged_decode_pass.isph"
#else
#define HG 2
#define TT 4
#define QK_NAME qk_pass_2
#include "paged_decode_pass.isph"
#define HG 1
#define TT 8
#define QK_NAME qk_pass_1
#include "paged_decode_pass.isph"
#define HG 4
#define CC 1
#define PV_NAME pv_chunks_4
#include "paged_decode_pass.isph"
#define HG 2
#define CC 2
#define PV_NAME pv_chunks_2
#include "paged_decode_pass.isph"
#define HG 1
#define CC 2
#define PV_NAME pv_chunks_1
#include "paged_decode_pass.isph"
#endif
// Tail passes of one chunk (head_dim not a multiple of CC chunks).
#define HG 4
#define CC 1
#define PV_NAME pv_tail_4
#include "paged_decode_pass.isph"
#define HG 2
#define CC 1
#define PV_NAME pv_tail_2
#include "paged_decode_pass.isph"
#define HG 1
#define CC 1
#define PV_NAME pv_tail_1
#include "paged_decode_pass.isph"

// All nc chunks of PV for HG heads: passes of CC chunks (the CC of pv_chunks_HG), then one.
#define PV_PASS(HGN, CCN)                                                                      \
    static inline void pv_pass_##HGN(uniform const pair * uniform v32, uniform int hw,          \
                                     uniform int nc, uniform int valid,                         \
                                     uniform const float * uniform ph,                          \
                                     uniform const float * uniform al,                          \
                                     uniform float * uniform acch, uniform int d,               \
                                     uniform const int8 * uniform pf, uniform int pf_lines) {   \
        uniform int c0 = 0;                                                                    \
        for (; c0 + CCN <= nc; c0 += CCN) {                                                    \
            pv_chunks_##HGN(v32, hw, c0, valid, ph, al, acch, d, pf, pf_lines);                \
        }                                                                                      \
        for (; c0 < nc; c0++) {                                                                \
            pv_tail_##HGN(v32, hw, c0, valid, ph, al, acch, d, pf, pf_lines);                  \
        }                                                                                      \
    }
#if TARGET_WIDTH == 16
#define pv_tail_8 pv_chunks_8 // passes of one chunk leave no tail
PV_PASS(8, 1)
PV_PASS(4, 2)
PV_PASS(2, 4)
PV_PASS(1, 4)
#else
PV_PASS(4, 1)
PV_PASS(2, 2)
PV_PASS(1, 2)
#endif

// The online softmax update of one block for all g heads: grp holds each head's 16 scores as
// qk_pass left them (4 vectors of 4 tokens' partial sums), folded here into per-token scores.
// Head by head after all the scores (the max -> exp -> sum chains of different heads overlap),
// then alpha = e^(m_old - m_new) for all heads in one vector. Tokens from `valid` on get score
// -inf and weight 0. p [g][16] receives the weights; m, l are updated.
static noinline void block_softmax(uniform const float * uniform grp, uniform int g,
                                   uniform int valid, uniform float * uniform m,
                                   uniform float * uniform l, uniform float * uniform p,
                                   uniform float * uniform alpha) {
    unmasked {
    uniform const int W = programCount;
    uniform float mnew[MAX_G];
    uniform float bsum[MAX_G];
    // Online softmax over the block, head by head after all the scores (the max -> exp ->
    // sum chains of different heads overlap); masked tokens get score -inf and weight 0.
    for (uniform int h = 0; h < g; h++) {
        uniform const float * uniform gv = grp + h * 4 * W;
#if TARGET_WIDTH == 16
        float s0 = fold4(gv[programIndex], gv[W + programIndex], gv[2 * W + programIndex],
                         gv[3 * W + programIndex], 4);
        s0 = (programIndex < valid) ? s0 : -floatbits(0x7f800000);
        uniform float mn = max(m[h], reduce_max(s0));
        float e0 = exp(s0 - mn);
        e0 = (programIndex < valid) ? e0 : 0.0f;
        p[h * BLOCK + programIndex] = e0;
        bsum[h] = reduce_add(e0);
#else
        float s0 = fold(gv[programIndex], gv[W + programIndex], 2);
        float s1 = fold(gv[2 * W + programIndex], gv[3 * W + programIndex], 2);
        s0 = (programIndex < valid) ? s0 : -floatbits(0x7f800000);
        s1 = (W + programIndex < valid) ? s1 : -floatbits(0x7f800000);
        uniform float mn = max(m[h], reduce_max(max(s0, s1)));
        float e0 = exp(s0 - mn);
        float e1 = exp(s1 - mn);
        e0 = (programIndex < valid) ? e0 : 0.0f;
        e1 = (W + programIndex < valid) ? e1 : 0.0f;
        p[h * BLOCK + programIndex] = e0;
        p[h * BLOCK + W + programIndex] = e1;
        bsum[h] = reduce_add(e0 + e1);
#endif
        mnew[h] = mn;
    }
    // alpha = e^(m_old - m_new) for all heads at once; 0 on the segment's first block.
    foreach (h = 0 ... g) {
        float mo = m[h];
        float mn = mnew[h];
        float a = (mo == -floatbits(0x7f800000)) ? 0.0f : exp(mo - mn);
        alpha[h] = a;
        l[h] = l[h] * a + bsum[h];
        m[h] = mn;
    }

    }
}

// PV of one (block, KV head) item for all g heads: passes of 8 heads (avx512; each V word then
// widened once for 8 heads, not twice), then 4, 2, 1, over CC chunks at a time, accumulators in
// registers. p [g][16] and alpha [g] are the item's softmax output.
static inline void pv_item(uniform const pair * uniform v32, uniform int hw, uniform int nc,
                           uniform int g, uniform int valid, uniform const float * uniform p,
                           uniform const float * uniform alpha, uniform float * uniform acch,
                           uniform int d, uniform const int8 * uniform vn,
                           uniform int pf_lines) {
    uniform int h0 = 0;
#ifdef SKIP_PV
    h0 = g;
#endif
#if TARGET_WIDTH == 16
    for (; h0 + 8 <= g; h0 += 8) {
        pv_pass_8(v32, hw, nc, valid, p + h0 * BLOCK, alpha + h0, acch + h0 * d, d,
                  h0 == 0 ? vn : NULL, pf_lines);
    }
#endif
    for (; h0 + 4 <= g; h0 += 4) {
        pv_pass_4(v32, hw, nc, valid, p + h0 * BLOCK, alpha + h0, acch + h0 * d, d,
                  h0 == 0 ? vn : NULL, pf_lines);
    }
    if (h0 + 2 <= g) {
        pv_pass_2(v32, hw, nc, valid, p + h0 * BLOCK, alpha + h0, acch + h0 * d, d,
                  h0 == 0 ? vn : NULL, pf_lines);
        h0 += 2;
    }
    if (h0 < g) {
        pv_pass_1(v32, hw, nc, valid, p + h0 * BLOCK, alpha + h0, acch + h0 * d, d,
                  h0 == 0 ? vn : NULL, pf_lines);
    }
}

#endif // !BF16DOT

export void PASTE(ispc_paged_decode_segment_bf16, NAME_SUFFIX)(
    uniform const uint16 q[],
    uniform uint16 k_cache[], uniform uint16 v_cache[],
    uniform const int32 blocks[], uniform int32 ntok,
    uniform int64 block_stride, uniform int64 head_off,
    uniform int32 d, uniform int32 g, uniform int32 nh, uniform float scale,
    uniform const uint16 new_k[], uniform const uint16 new_v[], uniform int32 append_at,
    uniform uint16 out[], uniform float part_o[], uniform float part_ml[],
    uniform int64 part_stride, uniform int32 pf_ahead, uniform int32 pf_lines)
{
    // Fused KV append: the new token's slot is written before anything of this segment is read.
    uniform const int64 head_step = (uniform int64)BLOCK * d; // one KV head's rows in a block
    if (append_at >= 0) {
        uniform int64 off = (uniform int64)blocks[append_at / BLOCK] * block_stride + head_off
            + (uniform int64)(append_at % BLOCK) * d;
        for (uniform int hh = 0; hh < nh; hh++) {
            foreach (j = 0 ... d) {
                k_cache[off + hh * head_step + j] = new_k[hh * d + j];
                v_cache[off + hh * head_step + j] = new_v[hh * d + j];
            }
        }
    }
    uniform const int ga = nh * g; // query heads of the call

    uniform const int W = programCount;
    uniform const int nc = d / (2 * W); // chunks per row
    uniform const int hw = d / 2;       // words per row
    uniform float qs[MAX_HGD];
    uniform float acc[MAX_HGD];
    uniform float m[MAX_HG];
    uniform float l[MAX_HG];
    uniform const pair * uniform q32 = (uniform const pair * uniform)q;
    for (uniform int h = 0; h < ga; h++) {
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

    uniform float grp[MAX_G * 4 * 16]; // [g][4][W]: per head, 4 vectors of 4 tokens' partial sums
    uniform float p[MAX_G * BLOCK];     // [g][16]: the block's weights of each head
    uniform float alpha[MAX_G];         // [g]: each head's rescale of its accumulators
    uniform const int nblocks = (ntok + BLOCK - 1) / BLOCK;
    for (uniform int b = 0; b < nblocks; b++) {
      uniform const int valid = min(BLOCK, ntok - b * BLOCK);
      for (uniform int hh = 0; hh < nh; hh++) {
        // This KV head's query heads, state and rows of the block.
        uniform const uint16 * uniform qh = q + hh * g * d;
        uniform float * uniform qsh = qs + hh * g * d;
        uniform float * uniform acch = acc + hh * g * d;
        uniform float * uniform mh = m + hh * g;
        uniform float * uniform lh = l + hh * g;
        uniform const int64 base =
            (uniform int64)blocks[b] * block_stride + head_off + hh * head_step;
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
            ahead = (uniform int64)blocks[b + pf_ahead] * block_stride + head_off + hh * head_step;
        }
        uniform const int8 * uniform kn = (uniform const int8 * uniform)(k_cache + ahead);
        uniform const int8 * uniform vn = (uniform const int8 * uniform)(v_cache + ahead);

#ifdef BF16DOT
        // The whole block in C (kernels/bf16dot.c): QKᵀ by vdpbf16ps on the bf16 rows, the
        // softmax update and PV with the accumulators in registers; it prefetches too.
        tandem_block16_bf16dot(qh, k_cache + base, v_cache + base, d, g, valid, scale, mh, lh, acch,
                               pf ? k_cache + ahead : NULL, pf ? v_cache + ahead : NULL,
                               pf_lines);
#else
        // Scores of all heads first (QKᵀ in passes of up to 4 heads on avx512, 2 on avx2, the
        // K rows widened in registers), then the softmax of every head, then PV.
        {
            uniform int h0 = 0;
#ifdef SKIP_QK
            h0 = g;
#endif
#if TARGET_WIDTH == 16
            for (; h0 + 4 <= g; h0 += 4) {
                qk_pass_4(k32, hw, nc, qsh + h0 * d, d, grp + h0 * 4 * W, h0 == 0 && pf ? kn : NULL,
                          pf_lines);
            }
#endif
            for (; h0 + 2 <= g; h0 += 2) {
                qk_pass_2(k32, hw, nc, qsh + h0 * d, d, grp + h0 * 4 * W, h0 == 0 && pf ? kn : NULL,
                          pf_lines);
            }
            if (h0 < g) {
                qk_pass_1(k32, hw, nc, qsh + h0 * d, d, grp + h0 * 4 * W, h0 == 0 && pf ? kn : NULL,
                          pf_lines);
            }
        }

        // Online softmax over the block, after the scores of all heads.
#ifndef SKIP_SOFTMAX
        block_softmax(grp, g, valid, mh, lh, p, alpha);
#endif

        pv_item(v32, hw, nc, g, valid, p, alpha, acch, d, pf ? vn : NULL, pf_lines);
#endif
      }
    }

    if (out != NULL) {
        uniform pair * uniform o32 = (uniform pair * uniform)out;
        for (uniform int h = 0; h < ga; h++) {
            uniform float inv = 1.0f / l[h];
            for (uniform int c = 0; c < nc; c++) {
                uniform int o = h * d + c * 2 * W;
                o32[h * hw + c * W + programIndex] =
                    pack_bf16(acc[o + programIndex] * inv, acc[o + W + programIndex] * inv);
            }
        }
    } else {
        for (uniform int hh = 0; hh < nh; hh++) {
            foreach (i = 0 ... g * d) {
                part_o[hh * part_stride * d + i] = acc[hh * g * d + i];
            }
            for (uniform int h = 0; h < g; h++) {
                part_ml[hh * part_stride * 2 + 2 * h] = m[hh * g + h];
                part_ml[hh * part_stride * 2 + 2 * h + 1] = l[hh * g + h];
            }
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
