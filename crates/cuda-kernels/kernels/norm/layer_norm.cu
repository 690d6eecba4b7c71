// LayerNorm fused with the residual add (OPT), one block per row of a row-major [rows, hidden]
// matrix.
//
//   if delta: residual[r] = bf16(residual[r] + delta[r])        (written back)
//   out[r]    = bf16((residual[r] - mean) * rsqrt(var + eps) * weight + bias)
//
// Two-pass statistics in f32 (mean first, then the centred sum of squares) so rows with a
// large mean keep their precision. Fast path (hidden a multiple of 8, 16-byte aligned rows,
// vpt > 0): thread k holds columns 8 (k + i * blockDim) .. +8 for i < vpt in registers, so
// the row is read once and written once. Otherwise the passes reread the row from L2 (8
// columns per thread when the row allows 16-byte accesses, else one). `delta` may be null.
#include "common.cuh"

namespace layer_norm {
template <bool VEC>
__device__ __forceinline__ void row(int64_t H, __nv_bfloat16* res, const __nv_bfloat16* delta,
                                    const __nv_bfloat16* w, const __nv_bfloat16* b, float eps,
                                    __nv_bfloat16* out, float* scratch) {
    const int step = VEC ? 8 : 1;
    float sum = 0.f;
    for (int64_t c = threadIdx.x * step; c < H; c += blockDim.x * step) {
        float r[8];
        if (VEC) {
            tandem::unpack8(tandem::load8(res + c), r);
        } else {
            r[0] = tandem::to_f32(res[c]);
        }
        if (delta) {
            float d[8];
            if (VEC) {
                tandem::unpack8(tandem::load8(delta + c), d);
            } else {
                d[0] = tandem::to_f32(delta[c]);
            }
#pragma unroll
            for (int k = 0; k < step; ++k) r[k] = tandem::to_f32(tandem::to_bf16(r[k] + d[k]));
            if (VEC) {
                tandem::store8(res + c, tandem::pack8(r));
            } else {
                res[c] = tandem::to_bf16(r[0]);
            }
        }
#pragma unroll
        for (int k = 0; k < step; ++k) sum += r[k];
    }
    const float mean = tandem::block_sum(sum, scratch) / (float)H;
    float ss = 0.f;
    for (int64_t c = threadIdx.x * step; c < H; c += blockDim.x * step) {
        float r[8];
        if (VEC) {
            tandem::unpack8(tandem::load8(res + c), r);
        } else {
            r[0] = tandem::to_f32(res[c]);
        }
#pragma unroll
        for (int k = 0; k < step; ++k) ss += (r[k] - mean) * (r[k] - mean);
    }
    const float inv = rsqrtf(tandem::block_sum(ss, scratch) / (float)H + eps);
    for (int64_t c = threadIdx.x * step; c < H; c += blockDim.x * step) {
        if (VEC) {
            float r[8], g[8], bb[8];
            tandem::unpack8(tandem::load8(res + c), r);
            tandem::unpack8(tandem::load8(w + c), g);
            tandem::unpack8(tandem::load8(b + c), bb);
#pragma unroll
            for (int k = 0; k < 8; ++k) r[k] = (r[k] - mean) * inv * g[k] + bb[k];
            tandem::store8(out + c, tandem::pack8(r));
        } else {
            out[c] = tandem::to_bf16((tandem::to_f32(res[c]) - mean) * inv * tandem::to_f32(w[c]) +
                                     tandem::to_f32(b[c]));
        }
    }
}

// The row stays in registers as bf16x8: after the add it is what the residual holds (rounded
// to bf16), so nothing is lost, and it takes half the registers of f32, which lets more rows
// be resident per SM. Every load of the row (and of delta) is issued before the first is
// used: residual and delta are not restrict, so the compiler would otherwise keep each delta
// load behind the previous chunk's residual store.
template <int VPT>
__device__ __forceinline__ void row_cached(int64_t H, __nv_bfloat16* res, const __nv_bfloat16* delta,
                                           const __nv_bfloat16* w, const __nv_bfloat16* b, float eps,
                                           __nv_bfloat16* out, float* scratch) {
    tandem::bf16x8 x[VPT], d[VPT];
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        const int c = (threadIdx.x + v * blockDim.x) * 8;  // < 8 * 4 * 1024
        if (c < H) {
            x[v] = tandem::load8(res + c);
            if (delta) d[v] = tandem::load8(delta + c);
        }
    }
    float sum = 0.f;
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        const int c = (threadIdx.x + v * blockDim.x) * 8;  // < 8 * 4 * 1024
        if (c < H) {
            float r[8];
            tandem::unpack8(x[v], r);
            if (delta) {
                float dd[8];
                tandem::unpack8(d[v], dd);
#pragma unroll
                for (int k = 0; k < 8; ++k) r[k] += dd[k];
                x[v] = tandem::pack8(r);
                tandem::store8(res + c, x[v]);
                tandem::unpack8(x[v], r);
            }
#pragma unroll
            for (int k = 0; k < 8; ++k) sum += r[k];
        }
    }
    const float mean = tandem::block_sum(sum, scratch) / (float)H;
    float ss = 0.f;
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        const int c = (threadIdx.x + v * blockDim.x) * 8;  // < 8 * 4 * 1024
        if (c < H) {
            float r[8];
            tandem::unpack8(x[v], r);
#pragma unroll
            for (int k = 0; k < 8; ++k) ss += (r[k] - mean) * (r[k] - mean);
        }
    }
    const float inv = rsqrtf(tandem::block_sum(ss, scratch) / (float)H + eps);
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        const int c = (threadIdx.x + v * blockDim.x) * 8;  // < 8 * 4 * 1024
        if (c < H) {
            float r[8], g[8], bb[8];
            tandem::unpack8(x[v], r);
            tandem::unpack8(tandem::load8(w + c), g);
            tandem::unpack8(tandem::load8(b + c), bb);
#pragma unroll
            for (int k = 0; k < 8; ++k) r[k] = (r[k] - mean) * inv * g[k] + bb[k];
            tandem::store8(out + c, tandem::pack8(r));
        }
    }
}
}  // namespace layer_norm

namespace layer_norm {
template <int VPT>
__device__ __forceinline__ void rows(int64_t n_rows, int64_t H, __nv_bfloat16* residual, const __nv_bfloat16* delta,
                                     const __nv_bfloat16* weight, const __nv_bfloat16* bias, float eps,
                                     __nv_bfloat16* out) {
    __shared__ float scratch[32];
    const bool vec = H % 8 == 0 && tandem::aligned16(residual) && tandem::aligned16(weight) &&
                     tandem::aligned16(bias) && tandem::aligned16(out) &&
                     (delta == nullptr || tandem::aligned16(delta));
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        const __nv_bfloat16* d = delta ? delta + r * H : nullptr;
        if (vec && VPT > 0)
            row_cached<(VPT > 0 ? VPT : 1)>(H, residual + r * H, d, weight, bias, eps, out + r * H, scratch);
        else if (vec)
            row<true>(H, residual + r * H, d, weight, bias, eps, out + r * H, scratch);
        else
            row<false>(H, residual + r * H, d, weight, bias, eps, out + r * H, scratch);
    }
}
}  // namespace layer_norm

// layer_norm_bf16 rereads rows from L2; layer_norm_bf16_v{1,2,4} keep 1, 2 or 4 chunks of 8
// columns per thread in registers (each its own kernel, so each gets its own registers).
#define LAYER_NORM(NAME, VPT)                                                                                  \
    extern "C" __global__ void __launch_bounds__(1024)                                                         \
        NAME(int64_t rows, int64_t H, __nv_bfloat16* residual, const __nv_bfloat16* delta,                     \
             const __nv_bfloat16* weight, const __nv_bfloat16* bias, float eps, __nv_bfloat16* out) {          \
        layer_norm::rows<VPT>(rows, H, residual, delta, weight, bias, eps, out);                               \
    }
LAYER_NORM(layer_norm_bf16, 0)
LAYER_NORM(layer_norm_bf16_v1, 1)
LAYER_NORM(layer_norm_bf16_v2, 2)
LAYER_NORM(layer_norm_bf16_v4, 4)
