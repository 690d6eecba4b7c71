// Greedy sampling: out[r] = argmax_c logits[r, c] over a row-major [rows, vocab] matrix, the
// lowest index among equal maxima (as torch.argmax). NaN never wins. One block per row (any
// multiple of 32 threads up to 1024): each thread scans a strided share (8 logits per 16-byte
// load when the row allows, two at a time), then warp shuffles and one shared-memory round
// pick the winner.
#include "common.cuh"
#include <math_constants.h>

namespace argmax {
constexpr int UNROLL = 2;

__device__ __forceinline__ void better(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}
}  // namespace argmax

extern "C" __global__ void __launch_bounds__(1024) argmax_bf16(int64_t rows, int64_t vocab, const __nv_bfloat16* __restrict__ logits,
                                       int* __restrict__ out) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const __nv_bfloat16* x = logits + r * vocab;
        float best = -CUDART_INF_F;
        int bi = INT_MAX;
        if (vocab % 8 == 0 && tandem::aligned16(x)) {
            // Two 16-byte loads in flight per thread before the first compare. Two, not more:
            // the kernel then stays within 32 registers (27 to 30 for sm_80 to sm_90), which
            // keeps two blocks of 1024 threads on an SM (four loads took 42).
            const int64_t step = blockDim.x * 8;
            for (int64_t c = threadIdx.x * 8; c < vocab; c += argmax::UNROLL * step) {
                tandem::bf16x8 v[argmax::UNROLL];
#pragma unroll
                for (int u = 0; u < argmax::UNROLL; ++u)
                    if (c + u * step < vocab) v[u] = tandem::load8(x + c + u * step);
#pragma unroll
                for (int u = 0; u < argmax::UNROLL; ++u) {
                    if (c + u * step < vocab) {
                        float f[8];
                        tandem::unpack8(v[u], f);
#pragma unroll
                        for (int k = 0; k < 8; ++k) argmax::better(best, bi, f[k], (int)(c + u * step) + k);
                    }
                }
            }
        } else {
            for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x)
                argmax::better(best, bi, tandem::to_f32(x[c]), (int)c);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            argmax::better(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
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
                argmax::better(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
            // A row of -inf (or NaN) only: index 0, as torch returns for all-equal rows.
            if (lane == 0) out[r] = bi == INT_MAX ? 0 : bi;
        }
    }
}
