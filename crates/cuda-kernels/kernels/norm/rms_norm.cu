// RMSNorm fused with the residual add (LLaMA), one block per row of a row-major [rows, hidden]
// matrix.
//
//   if delta: residual[r] = bf16(residual[r] + delta[r])        (written back, as HF adds in bf16)
//   out[r]    = bf16(residual[r] * rsqrt(mean(residual[r]^2) + eps) * weight)
//
// Pass 1 reads (and updates) the row and sums squares in f32; pass 2 rereads the row, which
// the block has just touched and so finds in L2. Threads take 8 columns (16 bytes) when hidden
// and the pointers allow it, else one column. `delta` may be null.
#include "common.cuh"

namespace rms_norm {
template <bool VEC>
__device__ __forceinline__ void row(int64_t H, __nv_bfloat16* res, const __nv_bfloat16* delta,
                                    const __nv_bfloat16* w, float eps, __nv_bfloat16* out, float* scratch) {
    float ss = 0.f;
    if (VEC) {
        for (int64_t c = threadIdx.x * 8; c < H; c += blockDim.x * 8) {
            float r[8];
            tandem::unpack8(tandem::load8(res + c), r);
            if (delta) {
                float d[8];
                tandem::unpack8(tandem::load8(delta + c), d);
#pragma unroll
                for (int k = 0; k < 8; ++k) r[k] += d[k];
                tandem::bf16x8 s = tandem::pack8(r);
                tandem::store8(res + c, s);
                tandem::unpack8(s, r);
            }
#pragma unroll
            for (int k = 0; k < 8; ++k) ss += r[k] * r[k];
        }
    } else {
        for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
            float r = tandem::to_f32(res[c]);
            if (delta) {
                __nv_bfloat16 s = tandem::to_bf16(r + tandem::to_f32(delta[c]));
                res[c] = s;
                r = tandem::to_f32(s);
            }
            ss += r * r;
        }
    }
    const float inv = rsqrtf(tandem::block_sum(ss, scratch) / (float)H + eps);
    if (VEC) {
        for (int64_t c = threadIdx.x * 8; c < H; c += blockDim.x * 8) {
            float r[8], g[8];
            tandem::unpack8(tandem::load8(res + c), r);
            tandem::unpack8(tandem::load8(w + c), g);
#pragma unroll
            for (int k = 0; k < 8; ++k) r[k] = r[k] * inv * g[k];
            tandem::store8(out + c, tandem::pack8(r));
        }
    } else {
        for (int64_t c = threadIdx.x; c < H; c += blockDim.x)
            out[c] = tandem::to_bf16(tandem::to_f32(res[c]) * inv * tandem::to_f32(w[c]));
    }
}
}  // namespace rms_norm

extern "C" __global__ void rms_norm_bf16(int64_t rows, int64_t H, __nv_bfloat16* residual,
                                         const __nv_bfloat16* delta, const __nv_bfloat16* weight, float eps,
                                         __nv_bfloat16* out) {
    __shared__ float scratch[32];
    const bool vec = H % 8 == 0 && tandem::aligned16(residual) && tandem::aligned16(weight) &&
                     tandem::aligned16(out) && (delta == nullptr || tandem::aligned16(delta));
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const __nv_bfloat16* d = delta ? delta + r * H : nullptr;
        if (vec)
            rms_norm::row<true>(H, residual + r * H, d, weight, eps, out + r * H, scratch);
        else
            rms_norm::row<false>(H, residual + r * H, d, weight, eps, out + r * H, scratch);
    }
}
