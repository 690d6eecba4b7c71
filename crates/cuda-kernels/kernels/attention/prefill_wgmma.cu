// Causal prefill attention over a packed variable-length batch on Hopper's warpgroup tensor
// cores (wgmma, sm_90a): the same contract as prefill.cu (layouts, causal mask, log2-domain
// online softmax), with S = Q·Kᵀ and O += P·V each one warpgroup-wide asynchronous matrix
// multiply, tiles loaded by the tensor memory accelerator (TMA), and the warpgroups
// specialized: one loads, two compute.
//
// Layouts (as prefill.cu): sequence i holds tokens cu_seqlens[i] .. cu_seqlens[i+1];
//   q token t, head h at q[t * q_stride + h * D + d]; k and v likewise with Hkv heads (q head
//   h reads kv head h / (Hq / Hkv)); out[t * o_stride + h * D + d].
// q, k and v arrive as TMA descriptors (tma.cuh) the host encodes over each as a 2-D tensor of
// (heads · D) x tokens bf16 with the token stride, 128-byte swizzle, boxes of 64 x 128 (the
// swizzle caps a box row at 128 bytes, so a 128-wide head is two boxes). Rows past the batch's
// last token arrive as zeros; rows of the next sequence inside a tile are loaded too and
// masked (keys) or never stored (queries).
//
// Work items are (head, sequence, query tile of BR = 128 rows), ordered longest first: head
// fastest, then sequence, then the tile counted from the sequence's end (causally the last
// tiles do the most work). A 1-D grid of G blocks, 384 threads = three warpgroups each, walks
// that order: block b takes items b, 2G - 1 - b, 2G + b, ... (G = the item count gives one item
// a block; G = the multiprocessor count makes the blocks persistent, each loading its next
// item's Q and keys while it finishes the last). Warpgroup 0 gives its registers away
// (setmaxnreg) and one of its threads issues the loads: Q once an item, then K_j and V_j for
// each key tile j into a ring of STAGES buffers that runs on across items, each buffer guarded
// by a full barrier (transaction bytes) and an empty barrier (one arrival per consumer warp);
// Q likewise (q_full, q_empty). Warpgroups 1 and 2 own query rows 0-63 and 64-127 of the item:
// iteration j issues S_j = Q K_jᵀ and O += P_{j-1} V_{j-1} as two asynchronous groups, waits
// for the first, frees K_j (and Q after the last), and runs the masking and softmax of S_j
// while the tensor cores do P V; then frees V_{j-1}, rescales O and packs P_j. With PINGPONG
// the two warpgroups take turns issuing their multiplies (named barriers 1 and 2), so one's
// softmax runs under the other's matrix multiplies.
//
// Shared memory (1024-byte aligned): Qs [D/64][BR][64], then STAGES K and STAGES V tiles
// [D/64][BC][64] (bf16, 128-byte swizzle, see wgmma.cuh), then the barriers; 161 KiB for D = 128
// and two stages.
// Registers per consumer thread: s[BC/2] (S of the warp's 16 rows x 128 keys), o[D/2], m/l
// of rows g and g + 8; P is packed from s into four-register A fragments per 16 keys.
#include "common.cuh"
#include "attention/tensor_core.cuh"
#include "attention/wgmma.cuh"
#include "attention/tma.cuh"
#include <math_constants.h>

namespace prefill_wgmma {
constexpr int BR = 128, BC = 128;
// The configuration the exported kernels run: K/V ring depth and warpgroup ping-pong.
constexpr int STAGES = 2;
constexpr bool PINGPONG = true;

template <int D, int STAGES>
struct Layout {
    static constexpr uint32_t QB = BR * D * 2, KB = BC * D * 2;
    static constexpr uint32_t K0 = QB, V0 = QB + STAGES * KB, BARS = QB + 2 * STAGES * KB;
    // q_full, q_empty, k_full[S], v_full[S], k_empty[S], v_empty[S]; 8 bytes each
    static constexpr uint32_t BYTES = BARS + 8 * (2 + 4 * STAGES) + 1024;
};


#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <int N>
__device__ __forceinline__ void mma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b);
template <>
__device__ __forceinline__ void mma_rs<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
    wg::mma_rs_n64_tb(d, a, b);
}
template <>
__device__ __forceinline__ void mma_rs<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    wg::mma_rs_n128_tb(d, a, b);
}

// One (head, sequence, query tile) work item from its index in the longest-first order: head
// fastest, then sequence, then the tile counted from the sequence's end.
struct Tile {
    int h, start, len, q0, n_kt;
    __device__ __forceinline__ bool decode(int idx, int Hq, int n_seqs, const int* cu_seqlens) {
        h = idx % Hq;
        const int rest = idx / Hq, seq = rest % n_seqs, z = rest / n_seqs;
        start = cu_seqlens[seq];
        len = cu_seqlens[seq + 1] - start;
        const int n_qt = (len + BR - 1) / BR;
        if (z >= n_qt) return false;
        q0 = (n_qt - 1 - z) * BR;
        n_kt = (min(len, q0 + BR) + BC - 1) / BC;
        return true;
    }
};
// Block b's k-th work item: passes over the order alternate direction (b, then 2G - 1 - b, ...)
// so that the blocks' shares even out; -1 once past the end.
__device__ __forceinline__ int tile_index(int k, int total) {
    const int G = gridDim.x, b = blockIdx.x;
    const int idx = k * G + ((k & 1) ? G - 1 - b : b);
    return idx < total ? idx : -1;
}

template <int D, int STAGES, bool PINGPONG>
__device__ __forceinline__ void run(const TmaDesc* tq, const TmaDesc* tk, const TmaDesc* tv,
                                    const int* __restrict__ cu_seqlens, int Hq, int Hkv, int n_seqs, int max_qt,
                                    float scale_log2, __nv_bfloat16* __restrict__ out, int64_t o_stride) {
    using tc::causal_softmax_step;
    using tc::pack_bf16;
    using L = Layout<D, STAGES>;
    constexpr uint32_t KB = L::KB;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t base = ((uint32_t)__cvta_generic_to_shared(smem_raw) + 1023u) & ~1023u;
    const uint32_t Qs = base, Ks = base + L::K0, Vs = base + L::V0;
    const uint32_t q_full = base + L::BARS, q_empty = q_full + 8, k_full = q_empty + 8, v_full = k_full + 8 * STAGES,
                   k_empty = v_full + 8 * STAGES, v_empty = k_empty + 8 * STAGES;
    const int total = Hq * n_seqs * max_qt, group = Hq / Hkv;

    if (threadIdx.x == 0) {
        tma::bar_init(q_full, 1);
        tma::bar_init(q_empty, 8);  // the eight consumer warps
        for (int s = 0; s < STAGES; ++s) {
            tma::bar_init(k_full + 8 * s, 1);
            tma::bar_init(v_full + 8 * s, 1);
            tma::bar_init(k_empty + 8 * s, 8);
            tma::bar_init(v_empty + 8 * s, 8);
        }
        tma::fence_barrier_init();
    }
    __syncthreads();

    const int wgi = threadIdx.x >> 7;
    if (wgi == 0) {  // producer
        tma::regs_dec<24>();
        if (threadIdx.x == 0) {
            tma::prefetch_desc(tq);
            tma::prefetch_desc(tk);
            tma::prefetch_desc(tv);
            int it = 0, n = 0;  // key tiles and work items loaded so far
            for (int k = 0;; ++k) {
                const int idx = tile_index(k, total);
                if (idx < 0) break;
                Tile t;
                if (!t.decode(idx, Hq, n_seqs, cu_seqlens)) continue;
                const int kvh = t.h / group;
                tma::wait(q_empty, (n & 1) ^ 1);
                tma::arrive_expect_tx(q_full, L::QB);
#pragma unroll
                for (int hf = 0; hf < D / 64; ++hf)
                    tma::load_2d(Qs + hf * (BR * 128), tq, t.h * D + hf * 64, t.start + t.q0, q_full);
                ++n;
                for (int j = 0; j < t.n_kt; ++j, ++it) {
                    const int s = it % STAGES;
                    const uint32_t ph = ((it / STAGES) & 1) ^ 1;
                    const int row = t.start + j * BC;
                    tma::wait(k_empty + 8 * s, ph);
                    tma::arrive_expect_tx(k_full + 8 * s, KB);
#pragma unroll
                    for (int hf = 0; hf < D / 64; ++hf)
                        tma::load_2d(Ks + s * KB + hf * (BC * 128), tk, kvh * D + hf * 64, row, k_full + 8 * s);
                    tma::wait(v_empty + 8 * s, ph);
                    tma::arrive_expect_tx(v_full + 8 * s, KB);
#pragma unroll
                    for (int hf = 0; hf < D / 64; ++hf)
                        tma::load_2d(Vs + s * KB + hf * (BC * 128), tv, kvh * D + hf * 64, row, v_full + 8 * s);
                }
            }
        }
        return;
    }
    tma::regs_inc<240>();

    const int wc = wgi - 1;  // consumer warpgroup 0 or 1
    const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const uint32_t q_wg = Qs + 64 * wc * 128;  // this warpgroup's 64 rows (8 row groups)
    int it = 0, n = 0;
    for (int k = 0;; ++k) {
        const int idx = tile_index(k, total);
        if (idx < 0) break;
        Tile t;
        if (!t.decode(idx, Hq, n_seqs, cu_seqlens)) continue;
        const int len = t.len, n_kt = t.n_kt;
        const int wg_row0 = t.q0 + 64 * wc;  // first query row of this warpgroup
        const int row0 = wg_row0 + warp * 16 + g, row1 = row0 + 8;

        float o[D / 2];
#pragma unroll
        for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
        float m[2] = {-CUDART_INF_F, -CUDART_INF_F}, l[2] = {0.f, 0.f};
        uint32_t pa[BC / 16][4];
        float s[BC / 2];

        if (PINGPONG && wc == 1) tma::named_arrive<256>(1);  // consumer 0 issues first
        tma::wait(q_full, n & 1);
        for (int j = 0; j < n_kt; ++j, ++it) {
            const int st = it % STAGES, sp = (it + STAGES - 1) % STAGES;
            tma::wait(k_full + 8 * st, (it / STAGES) & 1);
            if (PINGPONG) tma::named_sync<256>(1 + wc);
            const uint32_t Kt = Ks + st * KB;
            wg::fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const uint32_t inner = (kk & 3) * 32;  // 16 elements into the 128-byte row
                const uint64_t da = wg::desc(q_wg + (kk >> 2) * (BR * 128) + inner, 16, 1024);
                const uint64_t db = wg::desc(Kt + (kk >> 2) * (BC * 128) + inner, 16, 1024);
                wg::mma_ss_n128(s, da, db, kk > 0);  // BC = 128 keys
            }
            wg::commit();
            if (j > 0) {
                tma::wait(v_full + 8 * sp, ((it - 1) / STAGES) & 1);
                const uint32_t Vt = Vs + sp * KB;
#pragma unroll
                for (int kk = 0; kk < BC / 16; ++kk) mma_rs<D>(o, pa[kk], wg::desc(Vt + kk * 2048, BC * 128, 1024));
                wg::commit();
                if (PINGPONG) tma::named_arrive<256>(1 + (wc ^ 1));
                wg::wait<1>();
            } else {
                if (PINGPONG) tma::named_arrive<256>(1 + (wc ^ 1));
                wg::wait<0>();
            }
            if (lane == 0) {
                tma::arrive(k_empty + 8 * st);
                if (j == n_kt - 1) tma::arrive(q_empty);  // the tile's last Q K^T is done
            }

            const int kb = j * BC;
            float alpha[2];
            causal_softmax_step<BC / 8>([&](int nn, int e) -> float& { return s[4 * nn + e]; },
                                        kb + BC - 1 > wg_row0 || kb + BC > len, kb, c, row0, row1, len,
                                        scale_log2, m, l, alpha);
            wg::wait<0>();  // O += P_{j-1} V_{j-1} done: O, pa and V_{j-1} are free
            if (j > 0 && lane == 0) tma::arrive(v_empty + 8 * sp);
#pragma unroll
            for (int i = 0; i < D / 8; ++i) {
                o[4 * i] *= alpha[0];
                o[4 * i + 1] *= alpha[0];
                o[4 * i + 2] *= alpha[1];
                o[4 * i + 3] *= alpha[1];
            }
#pragma unroll
            for (int nn = 0; nn < BC / 8; ++nn) {
                pa[nn >> 1][(nn & 1) * 2] = pack_bf16(s[4 * nn], s[4 * nn + 1]);
                pa[nn >> 1][(nn & 1) * 2 + 1] = pack_bf16(s[4 * nn + 2], s[4 * nn + 3]);
            }
        }
        ++n;
        // The last key tile's P V.
        {
            const int sp = (it + STAGES - 1) % STAGES;
            tma::wait(v_full + 8 * sp, ((it - 1) / STAGES) & 1);
            if (PINGPONG) tma::named_sync<256>(1 + wc);
            const uint32_t Vt = Vs + sp * KB;
            wg::fence();
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) mma_rs<D>(o, pa[kk], wg::desc(Vt + kk * 2048, BC * 128, 1024));
            wg::commit();
            // Consumer 0's last hand-over matches consumer 1's arrival at the tile's start;
            // consumer 1 has no turn left to give.
            if (PINGPONG && wc == 0) tma::named_arrive<256>(2);
            wg::wait<0>();
            if (lane == 0) tma::arrive(v_empty + 8 * sp);
        }

#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            l[0] += __shfl_xor_sync(0xffffffffu, l[0], off);
            l[1] += __shfl_xor_sync(0xffffffffu, l[1], off);
        }
        const float i0 = 1.f / l[0], i1 = 1.f / l[1];
        __nv_bfloat16* o_r0 = out + (int64_t)(t.start + row0) * o_stride + (int64_t)t.h * D;
        __nv_bfloat16* o_r1 = out + (int64_t)(t.start + row1) * o_stride + (int64_t)t.h * D;
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
            const int col = i * 8 + 2 * c;
            if (row0 < len) *reinterpret_cast<uint32_t*>(o_r0 + col) = pack_bf16(o[4 * i] * i0, o[4 * i + 1] * i0);
            if (row1 < len) *reinterpret_cast<uint32_t*>(o_r1 + col) = pack_bf16(o[4 * i + 2] * i1, o[4 * i + 3] * i1);
        }
    }
}
#endif
}  // namespace prefill_wgmma

// On targets without wgmma the kernels are present but trap: the launcher picks them only on
// compute capability 9.0, where the sm_90a image is loaded.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PREFILL_WGMMA_BODY(D)                                                                             \
    prefill_wgmma::run<D, prefill_wgmma::STAGES, prefill_wgmma::PINGPONG>(&q, &k, &v, cu_seqlens, Hq, Hkv, n_seqs, \
                                                                          max_qt, scale_log2, out, o_stride);
#else
#define PREFILL_WGMMA_BODY(D) __trap();
#endif

#define PREFILL_WGMMA(D)                                                                                    \
    extern "C" __global__ void __launch_bounds__(384, 1) prefill_attention_wgmma_bf16_d##D(                 \
        const __grid_constant__ TmaDesc q, const __grid_constant__ TmaDesc k, const __grid_constant__ TmaDesc v, \
        const int* cu_seqlens, int Hq, int Hkv, int n_seqs, int max_qt, float scale_log2, __nv_bfloat16* out,  \
        int64_t o_stride) {                                                                                 \
        PREFILL_WGMMA_BODY(D)                                                                               \
    }
PREFILL_WGMMA(64)
PREFILL_WGMMA(128)
