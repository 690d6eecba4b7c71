// Paged decode attention on tensor cores, for GQA groups (G >= 2 q heads per kv head).
//
// Same inputs, outputs and split partials as paged_decode.cu (whose header gives the layouts),
// and the same merge kernel. The q heads that share a kv head are the rows of one 16-row mma
// tile (G <= 16 per block, head_groups = ceil(G / 16); rows past G are zeros and never
// written), so Q K^T and P V run as mma.sync m16n8k16 bf16 with f32 accumulation instead of
// G FP32 dot products per token: the FMA count that bounds the CUDA-core kernel at G = 4 and 8
// disappears, and the kernel is left with streaming K/V.
//
// Grid (num_splits, Hkv * head_groups, B), 128 threads = 4 warps. On an H100 one such block per
// SM with one split per (sequence, kv head) streamed K/V at the copy bandwidth, while more
// splits (more blocks per SM, partials, the merge) cost 5-15 %: the launcher plans the fewest
// splits that give every SM a block. Split sizes: with
// split_pages > 0 every split holds that many pages (the CUDA-core kernel's rule); with
// split_pages = 0 each sequence's own pages are dealt evenly over the num_splits splits
// (ceil(n_pages / num_splits) each), so that the blocks of a grid planned for long contexts
// (a CUDA graph replayed while contexts grow) still share the work of short ones.
//
// Merge of the splits: with `counters` null, paged_decode_reduce_bf16 runs after this kernel.
// Otherwise the block that finishes last among the num_splits blocks of one (sequence, kv
// head, head group) merges them: every block writes its partial, fences, and takes a ticket
// from counters[b][Hkv * head_groups]; the one whose ticket is num_splits - 1 reads all the
// partials back (from L2) and writes out, and puts the counter back to 0 for the next launch
// (so the counters, zeroed once, stay zero between launches). That saves the second launch and
// its wait for the whole grid to drain, but on an H100 it measured slower than the reduce launch
// at 2-8 splits (by up to 10 % with 8 q heads per kv head), so the default plan does not use it.
//
// Warp w of WARPS takes pages page_begin + w, + WARPS + w, ... of the block's split and keeps its
// own online softmax (running max m and sum l per row, in the log2 domain) and O accumulator;
// the warps are merged through shared memory at the end.
//
// Per warp, pages stream through a ring of NST slots in shared memory, each slot one K page and
// one V page of the kv head ([16 tokens][D] bf16 each, the 16-byte chunks of token row r stored
// XOR-swizzled by r % 8 so that the 8 rows an ldmatrix reads fall on distinct bank groups without
// padding). cp.async fills slot i + NST - 1 while slot i is computed; each lane holds the block
// id of one of the warp's next 32 pages, so a copy does not wait for a table load. NST is 3 at
// D = 128 and 4 at D = 64 (16 and 12 KiB per warp in flight). Registers per thread (g = lane / 4,
// c = lane % 4):
//   qa[D/16][4]  A fragments of the 16 q rows (head0 + g, head0 + g + 8)
//   s[2][4]      S for the page's 16 tokens (two n-tiles of 8)
//   o[D/8][4]    O accumulator over head dims
#include "common.cuh"
#include "attention/tensor_core.cuh"
#include "attention/split_merge.cuh"
#include <math_constants.h>

namespace paged_decode_mma {
using namespace tc;
constexpr int BLOCK = 16;

// Shared memory bytes of the <D, WARPS, NST> kernel: the ring, or the merge of the warps at the
// end (which reuses it), whichever is larger.
__host__ __device__ constexpr int smem_bytes(int d, int warps, int nst) {
    const int ring = warps * nst * 2 * BLOCK * d * 2;
    const int merge = (warps * 16 * d + 2 * warps * 16) * 4;
    return ring > merge ? ring : merge;
}

// After this block's partial rows (head0 .. head0 + gcount of sequence b, split `split`) are
// written: the last of the num_splits blocks to get here merges all of them into out. Every
// thread of the block calls it.
template <int D>
__device__ __forceinline__ void merge_if_last(int* counters, int b, int Hq, int head0, int gcount, int num_splits,
                                              const float* part_acc, const float* part_ml,
                                              __nv_bfloat16* __restrict__ out, int64_t out_stride) {
    __shared__ int last;
    __threadfence();  // this thread's partial is visible device-wide before the ticket
    __syncthreads();
    if (threadIdx.x == 0) {
        int* cnt = counters + (int64_t)b * gridDim.y + blockIdx.y;
        last = atomicAdd(cnt, 1) == num_splits - 1;
        if (last) *cnt = 0;  // every block of this group has taken its ticket
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int64_t row0 = ((int64_t)b * Hq + head0) * num_splits;
    for (int e = threadIdx.x; e < gcount * D; e += blockDim.x) {
        const int r = e / D, d = e % D;
        const int64_t row = row0 + (int64_t)r * num_splits;
        out[b * out_stride + (int64_t)(head0 + r) * D + d] =
            tandem::to_bf16(split_merge::merge(part_ml + row * 2, part_acc + row * D, num_splits, D, d));
    }
}

// Byte offset in a page of the 16-byte chunk holding columns col .. col + 7 (col a multiple of
// 8) of token row r: chunk j of a row is stored at chunk j ^ (r % 8), so that the 8 rows an
// ldmatrix reads at one column fall on 8 different bank groups without padding.
template <int D>
__device__ __forceinline__ uint32_t swz(int r, int col) {
    return (uint32_t)(r * D + (((col >> 3) ^ (r & 7)) << 3)) * 2;
}

// Copies one page of one kv head to the shared-window address dst; token rows >= `rows` (past
// the context end, where a stale cache may hold anything, NaN included) are written as zeros,
// since a zero softmax weight times NaN would still be NaN in the P V product.
template <int D>
__device__ __forceinline__ void copy_page(uint32_t dst, const __nv_bfloat16* src, int rows, int lane) {
    constexpr int CPR = D / 8;  // 16-byte chunks per token row
#pragma unroll
    for (int i = 0; i < BLOCK * CPR / 32; ++i) {
        const int id = i * 32 + lane;
        const int r = id / CPR, col = (id % CPR) * 8;
        cp_async16(dst + swz<D>(r, col), r < rows ? src + r * D + col : src, r < rows ? 16 : 0);
    }
}

template <int D, int WARPS, int NST>
__device__ __forceinline__ void run(const __nv_bfloat16* __restrict__ q, int64_t q_stride,
                                    const __nv_bfloat16* __restrict__ k_cache,
                                    const __nv_bfloat16* __restrict__ v_cache, const int* __restrict__ block_tables,
                                    int bt_stride, const int* __restrict__ context_lens, int Hq, int Hkv,
                                    int head_groups, float scale_log2, int split_pages, int num_splits,
                                    float* __restrict__ part_acc, float* __restrict__ part_ml,
                                    __nv_bfloat16* __restrict__ out, int64_t out_stride, int* counters) {
    constexpr int PAGE = BLOCK * D * 2;  // bytes
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    // Ring: [WARPS][NST][K page, V page]
    const uint32_t ring = (uint32_t)__cvta_generic_to_shared(smem_raw) + warp * NST * 2 * PAGE;

    const int b = blockIdx.z, split = blockIdx.x;
    const int kvh = blockIdx.y / head_groups, hg = blockIdx.y % head_groups;
    const int G = Hq / Hkv;
    const int head0 = kvh * G + hg * 16;
    const int gcount = min(16, G - hg * 16);
    const int ctx = context_lens[b];
    const int n_pages = (ctx + BLOCK - 1) / BLOCK;
    const int sp = split_pages > 0 ? split_pages : (n_pages + num_splits - 1) / num_splits;
    const int page_begin = split * sp;
    if (page_begin >= n_pages) {  // this split lies past the context: an empty partial
        if (threadIdx.x < gcount) {
            float* ml = part_ml + (((int64_t)b * Hq + head0 + threadIdx.x) * num_splits + split) * 2;
            ml[0] = -CUDART_INF_F;
            ml[1] = 0.f;
        }
        if (counters)
            merge_if_last<D>(counters, b, Hq, head0, gcount, num_splits, part_acc, part_ml, out, out_stride);
        return;
    }
    const int page_end = min(page_begin + sp, n_pages);
    const int* table = block_tables + (int64_t)b * bt_stride;
    const int first = page_begin + warp;
    const int mine = first < page_end ? (page_end - first + WARPS - 1) / WARPS : 0;
    // Lane j holds the block id of the warp's page i with i % 32 = j, for the 32 pages from the
    // last multiple of 32 on: one table load per 32 pages instead of one in each page's copy.
    int ids = 0;
    auto copy = [&](int slot, int i) {  // warp-uniform, i increasing
        if ((i & 31) == 0) {
            const int p = first + (i + lane) * WARPS;
            ids = p < page_end ? table[p] : 0;
        }
        const int p = first + i * WARPS;
        const int64_t off = ((int64_t)__shfl_sync(0xffffffffu, ids, i & 31) * Hkv + kvh) * BLOCK * D;
        const int rows = min(BLOCK, ctx - p * BLOCK);
        copy_page<D>(ring + slot * 2 * PAGE, k_cache + off, rows, lane);
        copy_page<D>(ring + slot * 2 * PAGE + PAGE, v_cache + off, rows, lane);
    };

    // Start the copies first: the q loads below overlap them.
#pragma unroll
    for (int st = 0; st < NST - 1; ++st) {
        if (st < mine) copy(st, st);
        cp_async_commit();
    }

    const int r0 = g, r1 = g + 8;
    uint32_t qa[D / 16][4];
    {
        const __nv_bfloat16* q0 = q + b * q_stride + (int64_t)(head0 + r0) * D;
        const __nv_bfloat16* q1 = q + b * q_stride + (int64_t)(head0 + r1) * D;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const int col = kk * 16 + 2 * c;
            qa[kk][0] = r0 < gcount ? ld32(q0 + col) : 0u;
            qa[kk][1] = r1 < gcount ? ld32(q1 + col) : 0u;
            qa[kk][2] = r0 < gcount ? ld32(q0 + col + 8) : 0u;
            qa[kk][3] = r1 < gcount ? ld32(q1 + col + 8) : 0u;
        }
    }
    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = -CUDART_INF_F, m1 = -CUDART_INF_F, l0 = 0.f, l1 = 0.f;
    const int mi = lane >> 3, mr = lane & 7;
    // ldmatrix row addresses: K rows (tokens) (mi / 2) * 8 + mr at column half mi % 2; V rows
    // (mi % 2) * 8 + mr at column half mi / 2 (transposed).
    const int kr = (mi >> 1) * 8 + mr, kc = (mi & 1) * 8;
    const int vr = (mi & 1) * 8 + mr, vc = (mi >> 1) * 8;

    for (int i = 0; i < mine; ++i) {
        __syncwarp();  // every lane is done with the slot the next copy overwrites
        const int nx = i + NST - 1;
        if (nx < mine) copy(nx % NST, nx);
        cp_async_commit();
        cp_async_wait<NST - 1>();
        __syncwarp();  // the page's chunks copied by the other lanes are visible
        const uint32_t Kt = ring + (i % NST) * 2 * PAGE;
        const uint32_t Vt = Kt + PAGE;
        const int t0 = (first + i * WARPS) * BLOCK;

        float s[2][4];
#pragma unroll
        for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t bk[4];
            ldmatrix_x4(bk, Kt + swz<D>(kr, kk * 16 + kc));
            mma(s[0], qa[kk], bk[0], bk[1]);
            mma(s[1], qa[kk], bk[2], bk[3]);
        }
        float mx0 = -CUDART_INF_F, mx1 = -CUDART_INF_F;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (t0 + n * 8 + 2 * c + (e & 1) >= ctx) s[n][e] = -CUDART_INF_F;
            mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
            mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        // Every page holds at least one token below ctx, so the maxima are finite.
        const float mn0 = fmaxf(m0, mx0 * scale_log2), mn1 = fmaxf(m1, mx1 * scale_log2);
        const float a0 = ex2(m0 - mn0), a1 = ex2(m1 - mn1);
        m0 = mn0;
        m1 = mn1;
        l0 *= a0;
        l1 *= a1;
#pragma unroll
        for (int d = 0; d < D / 8; ++d) {
            o[d][0] *= a0;
            o[d][1] *= a0;
            o[d][2] *= a1;
            o[d][3] *= a1;
        }
#pragma unroll
        for (int n = 0; n < 2; ++n) {
            s[n][0] = ex2(fmaf(s[n][0], scale_log2, -mn0));
            s[n][1] = ex2(fmaf(s[n][1], scale_log2, -mn0));
            s[n][2] = ex2(fmaf(s[n][2], scale_log2, -mn1));
            s[n][3] = ex2(fmaf(s[n][3], scale_log2, -mn1));
            l0 += s[n][0] + s[n][1];
            l1 += s[n][2] + s[n][3];
        }
        uint32_t pa[4];
        pa[0] = pack_bf16(s[0][0], s[0][1]);
        pa[1] = pack_bf16(s[0][2], s[0][3]);
        pa[2] = pack_bf16(s[1][0], s[1][1]);
        pa[3] = pack_bf16(s[1][2], s[1][3]);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
            uint32_t bv[4];
            ldmatrix_x4_trans(bv, Vt + swz<D>(vr, dp * 16 + vc));
            mma(o[2 * dp], pa, bv[0], bv[1]);
            mma(o[2 * dp + 1], pa, bv[2], bv[3]);
        }
    }

    // Merge the warps: rows' (m, l) and O through shared memory (the ring is free once every
    // warp is past its loop).
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    __syncthreads();
    float* wo = reinterpret_cast<float*>(smem_raw);  // [WARPS][16][D]
    float* wm = wo + WARPS * 16 * D;                  // [WARPS][16]
    float* wl = wm + WARPS * 16;                      // [WARPS][16]
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
        const int col = d * 8 + 2 * c;
        *reinterpret_cast<float2*>(wo + (warp * 16 + r0) * D + col) = make_float2(o[d][0], o[d][1]);
        *reinterpret_cast<float2*>(wo + (warp * 16 + r1) * D + col) = make_float2(o[d][2], o[d][3]);
    }
    if (c == 0) {
        wm[warp * 16 + r0] = m0;
        wm[warp * 16 + r1] = m1;
        wl[warp * 16 + r0] = l0;
        wl[warp * 16 + r1] = l1;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < gcount * D; e += blockDim.x) {
        const int r = e / D, d = e % D;
        float M = -CUDART_INF_F;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) M = fmaxf(M, wm[w * 16 + r]);
        float a = 0.f, L = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            if (wl[w * 16 + r] > 0.f) {  // a warp without pages holds m = -inf, l = 0, O = 0
                const float f = ex2(wm[w * 16 + r] - M);
                a += wo[(w * 16 + r) * D + d] * f;
                L += wl[w * 16 + r] * f;
            }
        }
        if (num_splits == 1) {
            out[b * out_stride + (int64_t)(head0 + r) * D + d] = tandem::to_bf16(a / L);
        } else {
            const int64_t row = ((int64_t)b * Hq + head0 + r) * num_splits + split;
            part_acc[row * D + d] = a;
            if (d == 0) {
                part_ml[row * 2] = M;
                part_ml[row * 2 + 1] = L;
            }
        }
    }
    if (num_splits > 1 && counters)
        merge_if_last<D>(counters, b, Hq, head0, gcount, num_splits, part_acc, part_ml, out, out_stride);
}

}  // namespace paged_decode_mma

#define PAGED_DECODE_MMA(D, NST)                                                                              \
    extern "C" __global__ void __launch_bounds__(128) paged_decode_mma_bf16_d##D(                              \
        const __nv_bfloat16* q, int64_t q_stride, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, \
        const int* block_tables, int bt_stride, const int* context_lens, int Hq, int Hkv, int head_groups,      \
        float scale_log2, int split_pages, int num_splits, float* part_acc, float* part_ml,                    \
        __nv_bfloat16* out, int64_t out_stride, int* counters) {                                               \
        tandem::pdl_wait();                                                                                    \
        tandem::pdl_trigger();                                                                                 \
        paged_decode_mma::run<D, 4, NST>(q, q_stride, k_cache, v_cache, block_tables, bt_stride, context_lens, \
                                         Hq, Hkv, head_groups, scale_log2, split_pages, num_splits, part_acc,  \
                                         part_ml, out, out_stride, counters);                                  \
    }
// Shared memory (paged_decode.rs computes the same): smem_bytes(D, 4, NST).
PAGED_DECODE_MMA(64, 4)
PAGED_DECODE_MMA(128, 3)
