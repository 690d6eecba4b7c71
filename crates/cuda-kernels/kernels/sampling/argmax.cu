// Greedy sampling: out[r] = argmax_c logits[r, c] over a row-major [rows, vocab] matrix, the
// lowest index among equal maxima (as torch.argmax). NaN never wins; a row with no value
// above -inf gives 0. One block of 1024 threads per row (argmax::THREADS; the launcher's block
// size): each thread scans a strided share of the row, then warp shuffles and one
// shared-memory round pick the winner.
//
// Fast path (vocab % 8 == 0, row 16-byte aligned): a thread reads 16-byte chunks of 8 logits,
// UNROLL loads in flight before the first compare. Per chunk it takes the maximum with three
// bf16x2 max instructions and one compare (max.bf16x2 returns the other input when one is
// NaN, so NaN never wins), and keeps the chunk that first raised its running maximum (strict
// >, so the lowest such chunk among equal maxima); only at the end does it look inside that
// chunk for the first element equal to the maximum. That is about a quarter of the
// instructions of an index compare per element, which keeps the registers within 32 (two
// blocks of 1024 threads per SM) with four loads in flight instead of two.
#include "common.cuh"
#include <math_constants.h>

namespace argmax {
__device__ __forceinline__ void better(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

// Largest of the eight (NaN only if all eight are NaN; then it compares false everywhere).
__device__ __forceinline__ float max8(const tandem::bf16x8& v) {
    const __nv_bfloat162 m = __hmax2(__hmax2(v.h[0], v.h[1]), __hmax2(v.h[2], v.h[3]));
    return fmaxf(__low2float(m), __high2float(m));
}

constexpr int THREADS = 1024;
constexpr int STEP = THREADS * 8;  // elements between a thread's chunks

// UNROLL chunks of 8 logits at x + c, + STEP, ...: all loads first, then the compares.
template <int UNROLL, bool TAIL>
__device__ __forceinline__ void round(const __nv_bfloat16* x, int c, int n, float& best, int& bc) {
    tandem::bf16x8 v[UNROLL];
    const __nv_bfloat16* p = x + c;
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
        if (!TAIL || c + u * STEP < n) v[u] = tandem::load8(p + u * STEP);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        if (!TAIL || c + u * STEP < n) {
            const float m = max8(v[u]);
            if (m > best) {
                best = m;
                bc = c + u * STEP;
            }
        }
    }
}

template <int UNROLL>
__device__ __forceinline__ void run(int64_t rows, int64_t vocab, const __nv_bfloat16* __restrict__ logits,
                                    int* __restrict__ out) {
    tandem::pdl_wait();  // launched with PDL (src/launch.rs): logits come from the kernel before
    tandem::pdl_trigger();
    __shared__ float sv[32];
    __shared__ int si[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const __nv_bfloat16* x = logits + r * vocab;
        float best = -CUDART_INF_F;
        int bi = INT_MAX;
        if (vocab % 8 == 0 && tandem::aligned16(x)) {
            // A compile-time stride: the UNROLL loads take immediate offsets from one pointer.
            constexpr int step = STEP;
            const int n = (int)vocab;  // vocab < 2^31 (checked by the launcher)
            int bc = -1;               // first element of the chunk that holds `best`
            int c = threadIdx.x * 8;
            // Whole rounds of UNROLL chunks, then one round of the chunks left, each load
            // guarded (so that the tail too has its loads in flight together).
            for (; c + (UNROLL - 1) * step < n; c += UNROLL * step) round<UNROLL, false>(x, c, n, best, bc);
            if (c < n) round<UNROLL, true>(x, c, n, best, bc);
            if (bc >= 0) {  // read again (from L2): cheaper than holding it in registers
                float f[8];
                tandem::unpack8(tandem::load8(x + bc), f);
#pragma unroll
                for (int k = 7; k >= 0; --k)
                    if (f[k] == best) bi = bc + k;
            }
        } else {
            // Strictly greater, in ascending order: the thread's lowest index of its maximum,
            // and, as on the vectorized path, nothing for -inf or NaN (a row with no value
            // above -inf gives index 0 below).
            for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
                const float f = tandem::to_f32(x[c]);
                if (f > best) {
                    best = f;
                    bi = (int)c;
                }
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            better(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
        __syncthreads();
        if (lane == 0) {
            sv[warp] = best;
            si[warp] = bi;
        }
        __syncthreads();
        if (warp == 0) {
            best = lane < (int)(blockDim.x >> 5) ? sv[lane] : -CUDART_INF_F;
            bi = lane < (int)(blockDim.x >> 5) ? si[lane] : INT_MAX;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
                better(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
            // A row of -inf (or NaN) only: index 0, as torch returns for all-equal rows.
            if (lane == 0) out[r] = bi == INT_MAX ? 0 : bi;
        }
    }
}
}  // namespace argmax

extern "C" __global__ void __launch_bounds__(1024, 2) argmax_bf16(int64_t rows, int64_t vocab,
                                                               const __nv_bfloat16* __restrict__ logits,
                                                               int* __restrict__ out) {
    argmax::run<4>(rows, vocab, logits, out);
}
extern "C" __global__ void __launch_bounds__(1024, 2) argmax_bf16_u2(int64_t rows, int64_t vocab,
                                                                  const __nv_bfloat16* __restrict__ logits,
                                                                  int* __restrict__ out) {
    argmax::run<2>(rows, vocab, logits, out);
}
