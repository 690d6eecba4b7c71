// Activations and bias over row-major bf16 matrices, f32 arithmetic, one rounding per output.
//
// silu_mul_bf16: out[r, c] = silu(gate[r, c]) * up[r, c] for r < rows, c < cols, where gate and
//   up rows start every `gate_stride` / `up_stride` elements (a fused gate|up projection output
//   [rows, 2*cols] is gate = base, up = base + cols, both strides 2*cols), out is [rows, cols].
// relu_bf16: x[i] = max(x[i], 0) in place over n elements.
// bias_add_bf16: x[r, c] += bias[c] in place over a [rows, cols] matrix.
// Threads take 8 consecutive columns when cols, the strides and the pointers allow 16-byte
// accesses; otherwise one element. Grid-stride loops.
#include "common.cuh"

namespace activation {
__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }
}  // namespace activation

extern "C" __global__ void silu_mul_bf16(int64_t rows, int64_t cols, const __nv_bfloat16* gate, int64_t gate_stride,
                                         const __nv_bfloat16* up, int64_t up_stride,
                                         __nv_bfloat16* __restrict__ out) {
    const bool vec = cols % 8 == 0 && gate_stride % 8 == 0 && up_stride % 8 == 0 && tandem::aligned16(gate) &&
                     tandem::aligned16(up) && tandem::aligned16(out);
    if (vec) {
        const int64_t c8 = cols / 8, n8 = rows * c8;
        for (int64_t i = tandem::gtid(); i < n8; i += tandem::gstride()) {
            const int64_t r = i / c8, c = (i % c8) * 8;
            float g[8], u[8];
            tandem::unpack8(tandem::load8(gate + r * gate_stride + c), g);
            tandem::unpack8(tandem::load8(up + r * up_stride + c), u);
#pragma unroll
            for (int k = 0; k < 8; ++k) g[k] = activation::silu(g[k]) * u[k];
            tandem::store8(out + r * cols + c, tandem::pack8(g));
        }
        return;
    }
    for (int64_t i = tandem::gtid(); i < rows * cols; i += tandem::gstride()) {
        const int64_t r = i / cols, c = i % cols;
        out[i] = tandem::to_bf16(activation::silu(tandem::to_f32(gate[r * gate_stride + c])) *
                                 tandem::to_f32(up[r * up_stride + c]));
    }
}

extern "C" __global__ void relu_bf16(int64_t n, __nv_bfloat16* x) {
    int64_t done = 0;
    if (tandem::aligned16(x)) {
        const int64_t n8 = n / 8;
        for (int64_t i = tandem::gtid(); i < n8; i += tandem::gstride()) {
            float f[8];
            tandem::unpack8(tandem::load8(x + 8 * i), f);
#pragma unroll
            for (int k = 0; k < 8; ++k) f[k] = fmaxf(f[k], 0.f);
            tandem::store8(x + 8 * i, tandem::pack8(f));
        }
        done = n8 * 8;
    }
    for (int64_t i = done + tandem::gtid(); i < n; i += tandem::gstride())
        x[i] = tandem::to_bf16(fmaxf(tandem::to_f32(x[i]), 0.f));
}

extern "C" __global__ void bias_add_bf16(int64_t rows, int64_t cols, __nv_bfloat16* x,
                                         const __nv_bfloat16* __restrict__ bias) {
    if (cols % 8 == 0 && tandem::aligned16(x) && tandem::aligned16(bias)) {
        const int64_t c8 = cols / 8, n8 = rows * c8;
        for (int64_t i = tandem::gtid(); i < n8; i += tandem::gstride()) {
            const int64_t c = (i % c8) * 8;
            float f[8], b[8];
            tandem::unpack8(tandem::load8(x + 8 * i), f);
            tandem::unpack8(tandem::load8(bias + c), b);
#pragma unroll
            for (int k = 0; k < 8; ++k) f[k] += b[k];
            tandem::store8(x + 8 * i, tandem::pack8(f));
        }
        return;
    }
    for (int64_t i = tandem::gtid(); i < rows * cols; i += tandem::gstride())
        x[i] = tandem::to_bf16(tandem::to_f32(x[i]) + tandem::to_f32(bias[i % cols]));
}
