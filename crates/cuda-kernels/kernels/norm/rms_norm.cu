// RMSNorm fused with the residual add (LLaMA), one block per row of a row-major [rows, hidden]
// matrix.
//
//   if delta: residual[r] = bf16(residual[r] + delta[r])        (written back, as HF adds in bf16)
//   out[r]    = bf16(residual[r] * rsqrt(mean(residual[r]^2) + eps) * weight)
//
// Fast path (hidden a multiple of 8, 16-byte aligned rows, vpt > 0): thread k holds columns
// 8 (k + i * blockDim) .. +8 for i < vpt in registers, so the row is read once and written
// once. Otherwise pass 1 reads (and updates) the row and sums squares in f32, and pass 2
// rereads it, which the block has just touched and so finds in L2. `delta` may be null.
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

template <int VPT>
__device__ __forceinline__ void row_cached(int64_t H, __nv_bfloat16* res, const __nv_bfloat16* delta,
                                           const __nv_bfloat16* w, float eps, __nv_bfloat16* out, float* scratch) {
    float r[VPT][8];
    float ss = 0.f;
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        const int64_t c = (threadIdx.x + (int64_t)v * blockDim.x) * 8;
        if (c < H) {
            tandem::unpack8(tandem::load8(res + c), r[v]);
            if (delta) {
                float d[8];
                tandem::unpack8(tandem::load8(delta + c), d);
#pragma unroll
                for (int k = 0; k < 8; ++k) r[v][k] += d[k];
                tandem::bf16x8 s = tandem::pack8(r[v]);
                tandem::store8(res + c, s);
                tandem::unpack8(s, r[v]);
            }
#pragma unroll
            for (int k = 0; k < 8; ++k) ss += r[v][k] * r[v][k];
        }
    }
    const float inv = rsqrtf(tandem::block_sum(ss, scratch) / (float)H + eps);
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        const int64_t c = (threadIdx.x + (int64_t)v * blockDim.x) * 8;
        if (c < H) {
            float g[8];
            tandem::unpack8(tandem::load8(w + c), g);
#pragma unroll
            for (int k = 0; k < 8; ++k) r[v][k] = r[v][k] * inv * g[k];
            tandem::store8(out + c, tandem::pack8(r[v]));
        }
    }
}
}  // namespace rms_norm

namespace rms_norm {
template <int VPT>
__device__ __forceinline__ void rows(int64_t n_rows, int64_t H, __nv_bfloat16* residual, const __nv_bfloat16* delta,
                                     const __nv_bfloat16* weight, float eps, __nv_bfloat16* out) {
    __shared__ float scratch[32];
    const bool vec = H % 8 == 0 && tandem::aligned16(residual) && tandem::aligned16(weight) &&
                     tandem::aligned16(out) && (delta == nullptr || tandem::aligned16(delta));
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        const __nv_bfloat16* d = delta ? delta + r * H : nullptr;
        if (vec && VPT > 0)
            row_cached<(VPT > 0 ? VPT : 1)>(H, residual + r * H, d, weight, eps, out + r * H, scratch);
        else if (vec)
            row<true>(H, residual + r * H, d, weight, eps, out + r * H, scratch);
        else
            row<false>(H, residual + r * H, d, weight, eps, out + r * H, scratch);
    }
}
}  // namespace rms_norm

// rms_norm_bf16 rereads rows from L2; rms_norm_bf16_v{1,2,4} keep 1, 2 or 4 chunks of 8
// columns per thread in registers (each its own kernel, so each gets its own registers).
#define RMS_NORM(NAME, VPT)                                                                                    \
    extern "C" __global__ void __launch_bounds__(1024)                                                         \
        NAME(int64_t rows, int64_t H, __nv_bfloat16* residual, const __nv_bfloat16* delta,                     \
             const __nv_bfloat16* weight, float eps, __nv_bfloat16* out) {                                     \
        tandem::pdl_wait();                                                                                    \
        tandem::pdl_trigger();                                                                                 \
        rms_norm::rows<VPT>(rows, H, residual, delta, weight, eps, out);                                       \
    }
RMS_NORM(rms_norm_bf16, 0)
RMS_NORM(rms_norm_bf16_v1, 1)
RMS_NORM(rms_norm_bf16_v2, 2)
RMS_NORM(rms_norm_bf16_v4, 4)
