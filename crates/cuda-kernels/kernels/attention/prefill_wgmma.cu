// Causal prefill attention over a packed variable-length batch on Hopper's warpgroup tensor
// cores (wgmma, sm_90a): the same contract as prefill.cu (layouts, strides, grid order, causal
// mask, log2-domain online softmax), with S = Q·Kᵀ and O += P·V each one warpgroup-wide
// asynchronous matrix multiply instead of sixteen-by-eight mma.sync tiles.
//
// Layouts (as prefill.cu): sequence i holds tokens cu_seqlens[i] .. cu_seqlens[i+1];
//   q token t, head h at q[t * q_stride + h * D + d]; k and v likewise with Hkv heads (q head
//   h reads kv head h / (Hq / Hkv)); out[t * o_stride + h * D + d].
// Strides are multiples of 8 elements and pointers 16-byte aligned (cp.async moves 16 bytes).
//
// Grid (max q tiles, Hq, B), 256 threads = two warpgroups. A block owns BR = 128 query rows of
// one head of one sequence (the last tile first: causal tiles near the end do the most work);
// warpgroup w owns rows 64w .. 64w + 63. Key/value tiles of BC = 128 rows (BR = BC, so only
// the last tile crosses the diagonal) are loaded by all threads with cp.async into the
// 128-byte-swizzled layout of wgmma.cuh, double buffered, and shared by both warpgroups.
// Pipelining inside a warpgroup: iteration j issues S_j = Q K_jᵀ and then O += P_{j-1} V_{j-1}
// as two asynchronous groups, waits for the first only, and runs the masking and softmax of
// S_j while the tensor cores do P V; O is rescaled and P_j packed after the second.
//
// Shared memory (1024-byte aligned): Qs [D/64][BR][64], Ks[2] [D/64][BC][64], Vs[2] likewise
// (bf16): 160 KiB for D = 128, 80 KiB for D = 64.
// Registers per thread: s[BC/2] (S of the warp's 16 rows x 128 keys), o[D/2] (O of 16 rows x
// D), m/l of rows g and g + 8; P is packed from s into four-register A fragments per 16 keys.
#include "common.cuh"
#include "attention/tensor_core.cuh"
#include "attention/wgmma.cuh"
#include <math_constants.h>

namespace prefill_wgmma {
constexpr int BR = 128, BC = 128, THREADS = 256;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// ROWS x D tile from global (row stride `stride` elements) into the swizzled layout at `dst`;
// rows at or past rows_left are zero-filled.
template <int D, int ROWS>
__device__ __forceinline__ void load_tile(uint32_t dst, const __nv_bfloat16* src, int64_t stride, int rows_left) {
    constexpr int CPR = D / 8;  // 16-byte chunks per row
#pragma unroll
    for (int i = 0; i < ROWS * CPR / THREADS; ++i) {
        const int id = i * THREADS + threadIdx.x;
        const int r = id / CPR, cc = id % CPR;
        const uint32_t off = (cc >> 3) * (ROWS * 128) + r * 128 + (((cc & 7) ^ (r & 7)) << 4);
        const bool in = r < rows_left;
        tc::cp_async16(dst + off, in ? src + r * stride + cc * 8 : src, in ? 16 : 0);
    }
}

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

template <int D>
__device__ __forceinline__ void run(const __nv_bfloat16* __restrict__ q, int64_t q_stride,
                                    const __nv_bfloat16* __restrict__ k, int64_t k_stride,
                                    const __nv_bfloat16* __restrict__ v, int64_t v_stride,
                                    const int* __restrict__ cu_seqlens, int Hq, int Hkv, float scale_log2,
                                    __nv_bfloat16* __restrict__ out, int64_t o_stride) {
    using tc::causal_softmax_step;
    using tc::pack_bf16;
    constexpr uint32_t QB = BR * D * 2, KB = BC * D * 2;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t base = ((uint32_t)__cvta_generic_to_shared(smem_raw) + 1023u) & ~1023u;
    const uint32_t Qs = base, Ks = base + QB, Vs = base + QB + 2 * KB;

    const int seq = blockIdx.z, h = blockIdx.y;
    const int start = cu_seqlens[seq], len = cu_seqlens[seq + 1] - start;
    const int n_qt = (len + BR - 1) / BR;
    if ((int)blockIdx.x >= n_qt) return;
    const int q0 = (n_qt - 1 - blockIdx.x) * BR;
    const int kvh = h / (Hq / Hkv);
    const int wgi = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int wg_row0 = q0 + 64 * wgi;  // first query row of this warpgroup
    const int row0 = wg_row0 + warp * 16 + g, row1 = row0 + 8;

    const __nv_bfloat16* kbase = k + (int64_t)start * k_stride + (int64_t)kvh * D;
    const __nv_bfloat16* vbase = v + (int64_t)start * v_stride + (int64_t)kvh * D;
    load_tile<D, BR>(Qs, q + (int64_t)(start + q0) * q_stride + (int64_t)h * D, q_stride, len - q0);
    load_tile<D, BC>(Ks, kbase, k_stride, len);
    tc::cp_async_commit();

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float m[2] = {-CUDART_INF_F, -CUDART_INF_F}, l[2] = {0.f, 0.f};

    const int kv_end = min(len, q0 + BR);
    const int n_kt = (kv_end + BC - 1) / BC;
    const uint32_t q_wg = Qs + 64 * wgi * 128;  // this warpgroup's 64 rows (8 row groups)
    uint32_t pa[BC / 16][4];
    float s[BC / 2];

    // Iteration j: S_j = Q K_jᵀ and O += P_{j-1} V_{j-1} run on the tensor cores while the
    // softmax of S_j runs on the ALUs (it waits for S_j only). K_j and V_{j-1} arrive in the
    // copy group issued one iteration earlier; K_{j+1} and V_j are issued here.
    for (int j = 0; j < n_kt; ++j) {
        tc::cp_async_wait_all();
        wg::fence_proxy_async();
        __syncthreads();
        if (j + 1 < n_kt) {
            const int r = (j + 1) * BC;
            load_tile<D, BC>(Ks + ((j + 1) & 1) * KB, kbase + (int64_t)r * k_stride, k_stride, len - r);
        }
        load_tile<D, BC>(Vs + (j & 1) * KB, vbase + (int64_t)j * BC * v_stride, v_stride, len - j * BC);
        tc::cp_async_commit();
        const uint32_t Kt = Ks + (j & 1) * KB;
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
            const uint32_t Vt = Vs + ((j - 1) & 1) * KB;
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) mma_rs<D>(o, pa[kk], wg::desc(Vt + kk * 2048, BC * 128, 1024));
            wg::commit();
            wg::wait<1>();
        } else {
            wg::wait<0>();
        }

        const int kb = j * BC;
        float alpha[2];
        causal_softmax_step<BC / 8>([&](int n, int e) -> float& { return s[4 * n + e]; },
                                    kb + BC - 1 > wg_row0 || kb + BC > len, kb, c, row0, row1, len, scale_log2,
                                    m, l, alpha);
        wg::wait<0>();  // O += P_{j-1} V_{j-1} done: O and pa are free
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
            o[4 * i] *= alpha[0];
            o[4 * i + 1] *= alpha[0];
            o[4 * i + 2] *= alpha[1];
            o[4 * i + 3] *= alpha[1];
        }
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) {
            pa[n >> 1][(n & 1) * 2] = pack_bf16(s[4 * n], s[4 * n + 1]);
            pa[n >> 1][(n & 1) * 2 + 1] = pack_bf16(s[4 * n + 2], s[4 * n + 3]);
        }
    }
    // The last tile's P V.
    tc::cp_async_wait_all();
    wg::fence_proxy_async();
    __syncthreads();
    {
        const uint32_t Vt = Vs + ((n_kt - 1) & 1) * KB;
        wg::fence();
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) mma_rs<D>(o, pa[kk], wg::desc(Vt + kk * 2048, BC * 128, 1024));
        wg::commit();
    }
    wg::wait<0>();

#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l[0] += __shfl_xor_sync(0xffffffffu, l[0], off);
        l[1] += __shfl_xor_sync(0xffffffffu, l[1], off);
    }
    const float i0 = 1.f / l[0], i1 = 1.f / l[1];
    __nv_bfloat16* o_r0 = out + (int64_t)(start + row0) * o_stride + (int64_t)h * D;
    __nv_bfloat16* o_r1 = out + (int64_t)(start + row1) * o_stride + (int64_t)h * D;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
        const int col = i * 8 + 2 * c;
        if (row0 < len) *reinterpret_cast<uint32_t*>(o_r0 + col) = pack_bf16(o[4 * i] * i0, o[4 * i + 1] * i0);
        if (row1 < len) *reinterpret_cast<uint32_t*>(o_r1 + col) = pack_bf16(o[4 * i + 2] * i1, o[4 * i + 3] * i1);
    }
}
#endif
}  // namespace prefill_wgmma

// On targets without wgmma the kernels are present but trap: the launcher picks them only on
// compute capability 9.0, where the sm_90a image is loaded.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PREFILL_WGMMA_BODY(D) \
    prefill_wgmma::run<D>(q, q_stride, k, k_stride, v, v_stride, cu_seqlens, Hq, Hkv, scale_log2, out, o_stride);
#else
#define PREFILL_WGMMA_BODY(D) __trap();
#endif

#define PREFILL_WGMMA(D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(256, 1) prefill_attention_wgmma_bf16_d##D(                \
        const __nv_bfloat16* q, int64_t q_stride, const __nv_bfloat16* k, int64_t k_stride,                \
        const __nv_bfloat16* v, int64_t v_stride, const int* cu_seqlens, int Hq, int Hkv, float scale_log2, \
        __nv_bfloat16* out, int64_t o_stride) {                                                            \
        PREFILL_WGMMA_BODY(D)                                                                              \
    }
PREFILL_WGMMA(64)
PREFILL_WGMMA(128)
