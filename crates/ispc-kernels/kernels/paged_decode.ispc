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
// Per block of 16 tokens: the block's K rows of this head (16·d contiguous bf16, 4 KiB for
// d = 128) are widened once into an f32 staging array in L1, then every query head reads them
// from there, so all g heads share one pass over DRAM. Scores go through an online softmax
// (running max m, running sum l, accumulator rescaled by exp(m_old - m_new)); then V is staged
// the same way and accumulated. Lanes run over head_dim in both products: QKᵀ reduces across
// lanes once per (token, head); PV is a plain lane-wise FMA with the probability broadcast.

#include "bf16.isph"

#define BLOCK 16
// Largest head_dim and query group this kernel takes; the wrapper enforces both and splits a
// larger query group into passes of MAX_G heads.
#define MAX_D 256
#define MAX_G 16

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

static inline void reduce16(float r[BLOCK]) {
    uniform int cnt = BLOCK;
    #pragma unroll
    for (uniform int s = programCount; s >= 2; s /= 2) {
        #pragma unroll
        for (uniform int i = 0; i < cnt / 2; i++) {
            r[i] = fold(r[2 * i], r[2 * i + 1], s);
        }
        cnt /= 2;
    }
}

// Widens rows 0..valid-1 of one block's head (bf16, contiguous) into `stage`; rows valid..15
// become 0 so that a partial block computes on zeros, never on stale or unwritten slots.
static inline void stage_rows(uniform float stage[], uniform const uint16 src[], uniform int valid, uniform int d) {
    foreach (i = 0 ... valid * d) {
        stage[i] = bf16_to_f32(src[i]);
    }
    foreach (i = valid * d ... BLOCK * d) {
        stage[i] = 0.0f;
    }
}

static inline void prefetch_rows(uniform const uint16 src[], uniform int d) {
    for (uniform int i = 0; i < BLOCK * d; i += 32) {
        prefetch_l2(&src[i]);
    }
}

export void ispc_paged_decode_segment_bf16(
    uniform const uint16 q[],
    uniform uint16 k_cache[], uniform uint16 v_cache[],
    uniform const int32 blocks[], uniform int32 ntok,
    uniform int64 block_stride, uniform int64 head_off,
    uniform int32 d, uniform int32 g, uniform float scale,
    uniform const uint16 new_k[], uniform const uint16 new_v[], uniform int32 append_at,
    uniform uint16 out[], uniform float part_o[], uniform float part_ml[])
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

    uniform float qs[MAX_G * MAX_D];
    uniform float acc[MAX_G * MAX_D];
    uniform float m[MAX_G];
    uniform float l[MAX_G];
    foreach (i = 0 ... g * d) {
        qs[i] = bf16_to_f32(q[i]) * scale;
        acc[i] = 0.0f;
    }
    for (uniform int h = 0; h < g; h++) {
        m[h] = -floatbits(0x7f800000);
        l[h] = 0.0f;
    }

    uniform float stage[BLOCK * MAX_D];
    uniform float p[MAX_G][BLOCK];
    uniform float alpha[MAX_G];
    uniform int nblocks = (ntok + BLOCK - 1) / BLOCK;
    for (uniform int b = 0; b < nblocks; b++) {
        uniform int valid = min(BLOCK, ntok - b * BLOCK);
        uniform int64 base = (uniform int64)blocks[b] * block_stride + head_off;
        if (b + 1 < nblocks) {
            uniform int64 next = (uniform int64)blocks[b + 1] * block_stride + head_off;
            prefetch_rows(k_cache + next, d);
            prefetch_rows(v_cache + next, d);
        }

        // QKᵀ: 16 per-token accumulators over head_dim, folded into per-token scores.
        stage_rows(stage, k_cache + base, valid, d);
        for (uniform int h = 0; h < g; h++) {
            float r[BLOCK];
            #pragma unroll
            for (uniform int t = 0; t < BLOCK; t++) {
                r[t] = 0.0f;
            }
            for (uniform int j = 0; j < d; j += programCount) {
                float qv = qs[h * d + j + programIndex];
                #pragma unroll
                for (uniform int t = 0; t < BLOCK; t++) {
                    r[t] += qv * stage[t * d + j + programIndex];
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

        // PV: lanes over head_dim, the 16 weights broadcast.
        stage_rows(stage, v_cache + base, valid, d);
        for (uniform int j = 0; j < d; j += programCount) {
            for (uniform int h = 0; h < g; h++) {
                float a = acc[h * d + j + programIndex] * alpha[h];
                #pragma unroll
                for (uniform int t = 0; t < BLOCK; t++) {
                    a += p[h][t] * stage[t * d + j + programIndex];
                }
                acc[h * d + j + programIndex] = a;
            }
        }
    }

    if (out != NULL) {
        for (uniform int h = 0; h < g; h++) {
            uniform float inv = 1.0f / l[h];
            foreach (j = 0 ... d) {
                out[h * d + j] = f32_to_bf16(acc[h * d + j] * inv);
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
// normalised output. part_o [nseg][g][d], part_ml [nseg][g][2], out [g][d] bf16.
export void ispc_paged_decode_merge_bf16(
    uniform const float part_o[], uniform const float part_ml[], uniform int32 nseg,
    uniform int32 g, uniform int32 d, uniform uint16 out[])
{
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
        foreach (j = 0 ... d) {
            float a = 0.0f;
            for (uniform int s = 0; s < nseg; s++) {
                a += exp(part_ml[(s * g + h) * 2] - mx) * part_o[(s * g + h) * d + j];
            }
            out[h * d + j] = f32_to_bf16(a * inv);
        }
    }
}
