// Causal prefill attention over a packed variable-length batch (FlashAttention-2 on
// mma.sync.m16n8k16 bf16 tensor cores, f32 accumulation).
//
// Layouts: sequence i holds tokens cu_seqlens[i] .. cu_seqlens[i+1] of the packed batch.
//   q   token t, head h: q[t * q_stride + h * D + d]      (Hq heads)
//   k,v token t, head h: k[t * k_stride + h * D + d]      (Hkv heads; q head h reads h / (Hq/Hkv))
//   out token t, head h: out[t * o_stride + h * D + d]
// Strides are multiples of 8 elements and pointers 16-byte aligned (cp.async moves 16 bytes).
//
// Grid (max q tiles, Hq, B), 256 threads = 8 warps. A block owns BR = 128 query rows of one
// head of one sequence (the last tile first: causal tiles near the end do the most work); warp
// w owns rows 16w .. 16w + 15, and skips the key tiles that lie wholly after its rows. Eight
// warps share each K/V tile, halving the L2 traffic of four. Key/value tiles of BC = 64 rows go through shared memory, double
// buffered with cp.async: Ks[2][BC][D + 8], Vs[2][BC][D + 8] bf16 (rows padded by 16 bytes so
// the 8 row addresses of an ldmatrix hit 8 different bank groups).
//
// Registers per thread (g = lane / 4, c = lane % 4, the mma fragment coordinates):
//   qa[D/16][4]  A fragments of the warp's 16 x D query rows, loaded once from global
//   s[BC/8][4]   S = Q K^T for the tile: s[n][0..1] row g, keys 8n + 2c, +1; s[n][2..3] row g + 8
//   o[D/8][4]    O accumulator, same layout over head dims
//   m[2], l[2]   running max (log2 domain) and partial row sums of rows g and g + 8
// K fragments come from ldmatrix.x4 (rows = keys, giving B = K^T directly); V fragments from
// ldmatrix.x4.trans; P = exp2(S - m) is repacked from the S accumulators into A fragments
// without touching shared memory.
#include "common.cuh"
#include "attention/tensor_core.cuh"
#include <math_constants.h>

namespace prefill {
constexpr int BR = 128, BC = 64, WARPS = 8, PAD = 8;

using namespace tc;

template <int D>
__device__ __forceinline__ void load_tile(__nv_bfloat16* dst, const __nv_bfloat16* src, int64_t stride, int rows_left) {
    constexpr int CPR = D / 8;  // 16-byte chunks per row
#pragma unroll
    for (int i = 0; i < BC * CPR / (WARPS * 32); ++i) {
        const int id = i * WARPS * 32 + threadIdx.x;
        const int r = id / CPR, c = (id % CPR) * 8;
        const bool in = r < rows_left;
        cp_async16(dst + r * (D + PAD) + c, in ? src + r * stride + c : src, in ? 16 : 0);
    }
}

template <int D>
__device__ __forceinline__ void run(const __nv_bfloat16* __restrict__ q, int64_t q_stride,
                                    const __nv_bfloat16* __restrict__ k, int64_t k_stride,
                                    const __nv_bfloat16* __restrict__ v, int64_t v_stride,
                                    const int* __restrict__ cu_seqlens, int Hq, int Hkv, float scale_log2,
                                    __nv_bfloat16* __restrict__ out, int64_t o_stride) {
    constexpr int LDS = D + PAD;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [2][BC][LDS]
    __nv_bfloat16* Vs = Ks + 2 * BC * LDS;                             // [2][BC][LDS]

    const int seq = blockIdx.z, h = blockIdx.y;
    const int start = cu_seqlens[seq], len = cu_seqlens[seq + 1] - start;
    const int n_qt = (len + BR - 1) / BR;
    if ((int)blockIdx.x >= n_qt) return;
    const int q0 = (n_qt - 1 - blockIdx.x) * BR;
    const int kvh = h / (Hq / Hkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;

    uint32_t qa[D / 16][4];
    {
        const __nv_bfloat16* q_r0 = q + (int64_t)(start + row0) * q_stride + (int64_t)h * D;
        const __nv_bfloat16* q_r1 = q + (int64_t)(start + row1) * q_stride + (int64_t)h * D;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const int col = kk * 16 + 2 * c;
            qa[kk][0] = row0 < len ? ld32(q_r0 + col) : 0u;
            qa[kk][1] = row1 < len ? ld32(q_r1 + col) : 0u;
            qa[kk][2] = row0 < len ? ld32(q_r0 + col + 8) : 0u;
            qa[kk][3] = row1 < len ? ld32(q_r1 + col + 8) : 0u;
        }
    }

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m[2] = {-CUDART_INF_F, -CUDART_INF_F}, l[2] = {0.f, 0.f};

    const int kv_end = min(len, q0 + BR);
    const int n_kt = (kv_end + BC - 1) / BC;
    const __nv_bfloat16* kbase = k + (int64_t)start * k_stride + (int64_t)kvh * D;
    const __nv_bfloat16* vbase = v + (int64_t)start * v_stride + (int64_t)kvh * D;

    load_tile<D>(Ks, kbase, k_stride, len);
    load_tile<D>(Vs, vbase, v_stride, len);
    cp_async_commit();

    for (int j = 0; j < n_kt; ++j) {
        cp_async_wait_all();
        __syncthreads();
        if (j + 1 < n_kt) {
            const int nb = ((j + 1) & 1) * BC * LDS, r = (j + 1) * BC;
            load_tile<D>(Ks + nb, kbase + (int64_t)r * k_stride, k_stride, len - r);
            load_tile<D>(Vs + nb, vbase + (int64_t)r * v_stride, v_stride, len - r);
            cp_async_commit();
        }
        const __nv_bfloat16* Kt = Ks + (j & 1) * BC * LDS;
        const __nv_bfloat16* Vt = Vs + (j & 1) * BC * LDS;
        const int kb = j * BC;
        if (kb > q0 + warp * 16 + 15) continue;  // every key of the tile is after every row of this warp

        // S = Q K^T
        float s[BC / 8][4];
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
        const int mi = lane >> 3, mr = lane & 7;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < BC / 16; ++np) {
                uint32_t b[4];
                ldmatrix_x4(b, Kt + (np * 16 + (mi >> 1) * 8 + mr) * LDS + kk * 16 + (mi & 1) * 8);
                mma(s[2 * np], qa[kk], b[0], b[1]);
                mma(s[2 * np + 1], qa[kk], b[2], b[3]);
            }
        }

        // Causal mask, online softmax.
        float alpha[2];
        causal_softmax_step<BC / 8>([&](int n, int e) -> float& { return s[n][e]; },
                                    kb + BC - 1 > q0 + warp * 16 || kb + BC > len, kb, c, row0, row1, len,
                                    scale_log2, m, l, alpha);
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
            o[i][0] *= alpha[0];
            o[i][1] *= alpha[0];
            o[i][2] *= alpha[1];
            o[i][3] *= alpha[1];
        }

        // O += P V
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t pa[4];
            pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, Vt + (kk * 16 + (mi & 1) * 8 + mr) * LDS + dp * 16 + (mi >> 1) * 8);
                mma(o[2 * dp], pa, b[0], b[1]);
                mma(o[2 * dp + 1], pa, b[2], b[3]);
            }
        }
    }


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
        if (row0 < len) *reinterpret_cast<uint32_t*>(o_r0 + col) = pack_bf16(o[i][0] * i0, o[i][1] * i0);
        if (row1 < len) *reinterpret_cast<uint32_t*>(o_r1 + col) = pack_bf16(o[i][2] * i1, o[i][3] * i1);
    }
}
}  // namespace prefill

#define PREFILL(D)                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) prefill_attention_bf16_d##D(                              \
        const __nv_bfloat16* q, int64_t q_stride, const __nv_bfloat16* k, int64_t k_stride,                     \
        const __nv_bfloat16* v, int64_t v_stride, const int* cu_seqlens, int Hq, int Hkv, float scale_log2,      \
        __nv_bfloat16* out, int64_t o_stride) {                                                                 \
        prefill::run<D>(q, q_stride, k, k_stride, v, v_stride, cu_seqlens, Hq, Hkv, scale_log2, out, o_stride); \
    }
PREFILL(64)
PREFILL(128)
