// LayerNorm fused with the residual add (OPT), one block per row of a row-major [rows, hidden]
// matrix.
//
//   if delta: residual[r] = bf16(residual[r] + delta[r])        (written back)
//   out[r]    = bf16((residual[r] - mean) * rsqrt(var + eps) * weight + bias)
//
// Two-pass statistics in f32 (mean first, then the centred sum of squares) so rows with a
// large mean keep their precision; the rereads hit L2. Threads take 8 columns (16 bytes) when
// hidden and the pointers allow it, else one column. `delta` may be null.
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
}  // namespace layer_norm

extern "C" __global__ void layer_norm_bf16(int64_t rows, int64_t H, __nv_bfloat16* residual,
                                           const __nv_bfloat16* delta, const __nv_bfloat16* weight,
                                           const __nv_bfloat16* bias, float eps, __nv_bfloat16* out) {
    __shared__ float scratch[32];
    const bool vec = H % 8 == 0 && tandem::aligned16(residual) && tandem::aligned16(weight) &&
                     tandem::aligned16(bias) && tandem::aligned16(out) &&
                     (delta == nullptr || tandem::aligned16(delta));
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const __nv_bfloat16* d = delta ? delta + r * H : nullptr;
        if (vec)
            layer_norm::row<true>(H, residual + r * H, d, weight, bias, eps, out + r * H, scratch);
        else
            layer_norm::row<false>(H, residual + r * H, d, weight, bias, eps, out + r * H, scratch);
    }
}
