// Paged decode attention (one new query token per sequence), flash-decoding style.
//
// Layouts (DESIGN.md):
//   q        [B][Hq][D]  bf16, row b starts at q + b * q_stride
//   k_cache  [num_blocks][Hkv][16][D] bf16, v_cache the same
//   block_tables [B][bt_stride] i32, context_lens [B] i32 (>= 1)
//   out      [B][Hq][D]  bf16, row b starts at out + b * out_stride
// GQA: q head h reads kv head h / G, G = Hq / Hkv.
//
// Grid (num_splits, Hkv * head_groups, B), 128 threads = 4 warps. A block owns one kv head of
// one sequence, `split_pages` pages of its context, and MAXG (1, 2 or 4) of the G q heads that
// share that kv head (head_groups = ceil(G / MAXG)), so each K/V page is read once for all of
// them. (MAXG = 8 needed over 200 registers, two blocks per SM, and ran slower than two head
// groups of 4 whose second read of a page mostly hits L2.)
//
// Lane mapping: a page of one kv head is 16 * D contiguous bf16; a warp reads it as 16-byte
// chunks, lane l taking chunks l, l + 32, ...: LPT = D / 8 lanes cover one token row, so lane
// l holds dims d0 = (l % LPT) * 8 .. +8 of tokens j * (32 / LPT) + l / LPT, j < NJ = 16 / (32 / LPT).
// All NJ loads of a page are issued before the first use. Each lane keeps q[g][d0 .. d0 + 8]
// (pre-scaled by softmax_scale * log2 e) in registers for its MAXG heads.
//
// Phase 1: scores s[g][t] = q_g . k_t into shared memory (-inf past the context end). A lane
// holds NJ x MAXG partial dots per page; one reduce-scatter over the LPT lanes of a token row
// (about NJ x MAXG shuffles, not NJ x MAXG x log2 LPT) leaves each lane a few full dots to
// store. Each warp loads its next page before working on the current one. Softmax statistics per head
// (max m, sum l of exp2(s - m)) and p = exp2(s - m) in place. Phase 2: lane accumulates
// p[g][t] * v_t[d0 .. d0 + 8] over its tokens; shuffles over the lanes with the same d0, then
// shared memory over the 4 warps. With one split the block writes out = acc / l directly;
// otherwise it writes acc (f32, unnormalised) and (m, l) per split, and
// paged_decode_reduce_bf16 merges the splits: out = sum_s acc_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
#include "common.cuh"
#include "attention/split_merge.cuh"
#include <math_constants.h>

namespace paged_decode {
constexpr int BLOCK = 16;
constexpr int WARPS = 4;

// Reduce-scatter over the lanes of a token row: N partial sums per lane become, after
// log2(N) steps from xor offset O down to STOP, N / (O*2/STOP) full sums per lane. At each
// step a lane keeps one half of its values and sends the other half, so the shuffles total
// about N instead of N * log2(lanes). A lane with bit O set keeps the upper half, so lane l
// ends with values ((l % lanes) / STOP) * remaining + k.
template <int N, int O, int STOP>
__device__ __forceinline__ void scatter(float* v, int lane) {
    if constexpr (O >= STOP && N > 1) {
        const bool upper = lane & O;
#pragma unroll
        for (int k = 0; k < N / 2; ++k) {
            const float send = upper ? v[k] : v[k + N / 2];
            const float keep = upper ? v[k + N / 2] : v[k];
            v[k] = keep + __shfl_xor_sync(0xffffffffu, send, O);
        }
        scatter<N / 2, O / 2, STOP>(v, lane);
    }
}

template <int D, int NJ>
__device__ __forceinline__ void load_page(tandem::bf16x8* kv, const __nv_bfloat16* base, int tsub, int d0) {
    constexpr int TPL = 32 / (D / 8);
#pragma unroll
    for (int j = 0; j < NJ; ++j) kv[j] = tandem::load8(base + (j * TPL + tsub) * D + d0);
}

template <int D, int MAXG>
__device__ __forceinline__ void run(const __nv_bfloat16* __restrict__ q, int64_t q_stride,
                                    const __nv_bfloat16* __restrict__ k_cache,
                                    const __nv_bfloat16* __restrict__ v_cache, const int* __restrict__ block_tables,
                                    int bt_stride, const int* __restrict__ context_lens, int Hq, int Hkv,
                                    int head_groups, float scale_log2, int split_pages, int num_splits,
                                    float* __restrict__ part_acc, float* __restrict__ part_ml,
                                    __nv_bfloat16* __restrict__ out, int64_t out_stride) {
    constexpr int LPT = D / 8;         // lanes per token row
    constexpr int TPL = 32 / LPT;      // token rows per warp-wide load
    constexpr int NJ = BLOCK / TPL;    // loads per lane per page
    extern __shared__ float smem[];
    const int slots = split_pages * BLOCK;
    float* scores = smem;                        // [MAXG][slots]
    float* red = smem + MAXG * slots;            // [WARPS][MAXG][D]
    __shared__ float sm_m[MAXG], sm_l[MAXG];

    const int b = blockIdx.z, split = blockIdx.x;
    const int kvh = blockIdx.y / head_groups, hg = blockIdx.y % head_groups;
    const int G = Hq / Hkv;
    const int head0 = kvh * G + hg * MAXG;
    const int gcount = min(MAXG, G - hg * MAXG);
    const int ctx = context_lens[b];
    const int n_pages = (ctx + BLOCK - 1) / BLOCK;
    const int page_begin = split * split_pages;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    if (page_begin >= n_pages) {  // this split lies past the context: an empty partial
        if (threadIdx.x < gcount) {
            float* ml = part_ml + (((int64_t)b * Hq + head0 + threadIdx.x) * num_splits + split) * 2;
            ml[0] = -CUDART_INF_F;
            ml[1] = 0.f;
        }
        return;
    }
    const int page_end = min(page_begin + split_pages, n_pages);
    const int tok_begin = page_begin * BLOCK;
    const int n_slots = (page_end - page_begin) * BLOCK;
    const int d0 = (lane % LPT) * 8, tsub = lane / LPT;
    const int* table = block_tables + (int64_t)b * bt_stride;

    float qf[MAXG][8];
#pragma unroll
    for (int g = 0; g < MAXG; ++g) {
        if (g < gcount) {
            tandem::unpack8(tandem::load8(q + b * q_stride + (int64_t)(head0 + g) * D + d0), qf[g]);
#pragma unroll
            for (int i = 0; i < 8; ++i) qf[g][i] *= scale_log2;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) qf[g][i] = 0.f;
        }
    }

    // Phase 1: scores. Each warp takes every WARPS-th page and loads the next one before it
    // works on the current one.
    constexpr int V = NJ * MAXG;              // partial dots per lane per page
    constexpr int R = V < LPT ? V : LPT;      // lanes those are scattered over
    constexpr int PER = V / R;                // full dots a lane ends with
    constexpr int SPAN = LPT / R;             // lanes that end with the same dots
    const int idx0 = ((lane % LPT) / SPAN) * PER;
    tandem::bf16x8 cur[NJ], nxt[NJ];
    const int first = page_begin + warp;
    if (first < page_end)
        load_page<D, NJ>(cur, k_cache + ((int64_t)table[first] * Hkv + kvh) * BLOCK * D, tsub, d0);
    for (int p = first; p < page_end; p += WARPS) {
        if (p + WARPS < page_end)
            load_page<D, NJ>(nxt, k_cache + ((int64_t)table[p + WARPS] * Hkv + kvh) * BLOCK * D, tsub, d0);
        float vals[V];
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            float kf[8];
            tandem::unpack8(cur[j], kf);
#pragma unroll
            for (int g = 0; g < MAXG; ++g) {
                float s = 0.f;
#pragma unroll
                for (int i = 0; i < 8; ++i) s += qf[g][i] * kf[i];
                vals[j * MAXG + g] = s;
            }
        }
        scatter<V, LPT / 2, SPAN>(vals, lane);
#pragma unroll
        for (int o = SPAN / 2; o > 0; o >>= 1)
#pragma unroll
            for (int k = 0; k < PER; ++k) vals[k] += __shfl_xor_sync(0xffffffffu, vals[k], o);
        if (lane % SPAN == 0) {
#pragma unroll
            for (int k = 0; k < PER; ++k) {
                const int j = (idx0 + k) / MAXG, g = (idx0 + k) % MAXG;
                const int t = p * BLOCK + j * TPL + tsub;
                if (g < gcount) scores[g * slots + (t - tok_begin)] = t < ctx ? vals[k] : -CUDART_INF_F;
            }
        }
#pragma unroll
        for (int j = 0; j < NJ; ++j) cur[j] = nxt[j];
    }
    // The first V page of this warp loads while the softmax runs.
    if (first < page_end)
        load_page<D, NJ>(cur, v_cache + ((int64_t)table[first] * Hkv + kvh) * BLOCK * D, tsub, d0);
    __syncthreads();

    // Softmax statistics, one warp per head.
    for (int g = warp; g < gcount; g += WARPS) {
        float* sg = scores + g * slots;
        float m = -CUDART_INF_F;
        for (int i = lane; i < n_slots; i += 32) m = fmaxf(m, sg[i]);
        m = tandem::warp_max(m);
        float l = 0.f;
        for (int i = lane; i < n_slots; i += 32) {
            const float e = exp2f(sg[i] - m);
            sg[i] = e;
            l += e;
        }
        l = tandem::warp_sum(l);
        if (lane == 0) {
            sm_m[g] = m;
            sm_l[g] = l;
        }
    }
    __syncthreads();

    // Phase 2: p . V.
    float acc[MAXG][8];
#pragma unroll
    for (int g = 0; g < MAXG; ++g)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
    for (int p = first; p < page_end; p += WARPS) {
        if (p + WARPS < page_end)
            load_page<D, NJ>(nxt, v_cache + ((int64_t)table[p + WARPS] * Hkv + kvh) * BLOCK * D, tsub, d0);
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            const int t = p * BLOCK + j * TPL + tsub;
            if (t < ctx) {  // stale cache rows past the end may hold anything, NaN included
                float vf[8];
                tandem::unpack8(cur[j], vf);
#pragma unroll
                for (int g = 0; g < MAXG; ++g) {
                    const float w = g < gcount ? scores[g * slots + (t - tok_begin)] : 0.f;
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[g][i] += w * vf[i];
                }
            }
        }
#pragma unroll
        for (int j = 0; j < NJ; ++j) cur[j] = nxt[j];
    }
#pragma unroll
    for (int g = 0; g < MAXG; ++g)
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int o = LPT; o < 32; o <<= 1) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], o);
    if (tsub == 0) {
#pragma unroll
        for (int g = 0; g < MAXG; ++g)
#pragma unroll
            for (int i = 0; i < 8; ++i) red[(warp * MAXG + g) * D + d0 + i] = acc[g][i];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < gcount * D; e += blockDim.x) {
        const int g = e / D, d = e % D;
        float a = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) a += red[(w * MAXG + g) * D + d];
        if (num_splits == 1) {
            out[b * out_stride + (int64_t)(head0 + g) * D + d] = tandem::to_bf16(a / sm_l[g]);
        } else {
            const int64_t row = ((int64_t)b * Hq + head0 + g) * num_splits + split;
            part_acc[row * D + d] = a;
            if (d == 0) {
                part_ml[row * 2] = sm_m[g];
                part_ml[row * 2 + 1] = sm_l[g];
            }
        }
    }
}
}  // namespace paged_decode

#define PAGED_DECODE(D, MAXG)                                                                                  \
    extern "C" __global__ void __launch_bounds__(128) paged_decode_bf16_d##D##_g##MAXG(                        \
        const __nv_bfloat16* q, int64_t q_stride, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, \
        const int* block_tables, int bt_stride, const int* context_lens, int Hq, int Hkv, int head_groups,      \
        float scale_log2, int split_pages, int num_splits, float* part_acc, float* part_ml,                    \
        __nv_bfloat16* out, int64_t out_stride) {                                                              \
        tandem::pdl_wait();                                                                                    \
        tandem::pdl_trigger();                                                                                 \
        paged_decode::run<D, MAXG>(q, q_stride, k_cache, v_cache, block_tables, bt_stride, context_lens, Hq,   \
                                   Hkv, head_groups, scale_log2, split_pages, num_splits, part_acc, part_ml,   \
                                   out, out_stride);                                                           \
    }
PAGED_DECODE(64, 1)
PAGED_DECODE(64, 2)
PAGED_DECODE(64, 4)
PAGED_DECODE(128, 1)
PAGED_DECODE(128, 2)
PAGED_DECODE(128, 4)

// Merges the splits of paged_decode_bf16_*: grid (Hq, B), D threads.
extern "C" __global__ void paged_decode_reduce_bf16(int Hq, int D, int num_splits, const float* __restrict__ part_acc,
                                                    const float* __restrict__ part_ml,
                                                    __nv_bfloat16* __restrict__ out, int64_t out_stride) {
    tandem::pdl_wait();
    tandem::pdl_trigger();
    const int h = blockIdx.x, b = blockIdx.y;
    const int64_t row0 = ((int64_t)b * Hq + h) * num_splits;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        out[b * out_stride + (int64_t)h * D + d] =
            tandem::to_bf16(split_merge::merge(part_ml + row0 * 2, part_acc + row0 * D, num_splits, D, d));
}
