// Tensor-core and async-copy building blocks shared by the attention kernels (sm_80+):
// mma.sync m16n8k16 bf16 -> f32, ldmatrix (plain and transposed), cp.async 16-byte copies,
// and the SFU exp2.
//
// Fragment layout of mma.m16n8k16 (g = lane / 4, c = lane % 4): A (16 x 16, row major) in 4
// registers of 2 bf16: a0 = (g, 2c..2c+1), a1 = (g + 8, 2c..), a2 = (g, 2c + 8..), a3 = (g + 8,
// 2c + 8..); B (16 x 8, k x n) in 2: b0 = (k 2c..2c+1, n g), b1 = (k 2c + 8.., n g); C (16 x 8
// f32) in 4: c0, c1 = (g, 2c..2c+1), c2, c3 = (g + 8, 2c..). ldmatrix.x4 takes the row
// addresses of four 8 x 8 matrices from lanes 0-7, 8-15, 16-23, 24-31; lane t gets row t / 4,
// columns 2(t % 4).. of each (transposed: rows 2(t % 4).., column t / 4).
#pragma once
#include "common.cuh"
#include <math_constants.h>

namespace tc {
__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices from shared memory (at a shared-window address, or a generic pointer to
// shared memory), plain or transposed.
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, uint32_t a) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
    ldmatrix_x4(r, (uint32_t)__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, uint32_t a) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* p) {
    ldmatrix_x4_trans(r, (uint32_t)__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared (at a shared-window address, or a generic pointer to shared
// memory); src_bytes 0 writes zeros (rows past the sequence end).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    cp_async16((uint32_t)__cvta_generic_to_shared(dst), src, src_bytes);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }
// Waits until at most N of this thread's most recent copy groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// 2^x on the special-function unit; 2^-inf = 0.
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// One causal online-softmax step over a tile of NB x 8 keys whose scores sit in the mma
// accumulator layout: at(n, e) is key block n's element e, e 0-1 of row row0 (keys kb + 8n +
// 2c, +1), e 2-3 of row row1. With need_mask, keys after the row or at/after len get -inf.
// Updates the rows' running max m (log2 domain; the max is taken on raw scores since scale >
// 0 keeps the order) and sum l, replaces each score s by P = exp2(s * scale_log2 - m) (one
// FFMA and one MUFU.EX2), and returns in alpha the factors by which the rows' earlier sums were
// scaled (l already is; the caller rescales its O). The four lanes of a row (c = 0..3) agree.
template <int NB, typename At>
__device__ __forceinline__ void causal_softmax_step(At at, bool need_mask, int kb, int c, int row0, int row1, int len,
                                                    float scale_log2, float (&m)[2], float (&l)[2],
                                                    float (&alpha)[2]) {
    float mx0 = -CUDART_INF_F, mx1 = -CUDART_INF_F;
#pragma unroll
    for (int n = 0; n < NB; ++n) {
        if (need_mask) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = kb + n * 8 + 2 * c + (e & 1);
                const int row = e < 2 ? row0 : row1;
                if (key > row || key >= len) at(n, e) = -CUDART_INF_F;
            }
        }
        mx0 = fmaxf(mx0, fmaxf(at(n, 0), at(n, 1)));
        mx1 = fmaxf(mx1, fmaxf(at(n, 2), at(n, 3)));
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float mn0 = fmaxf(m[0], mx0 * scale_log2), mn1 = fmaxf(m[1], mx1 * scale_log2);
    alpha[0] = ex2(m[0] - mn0);
    alpha[1] = ex2(m[1] - mn1);
    m[0] = mn0;
    m[1] = mn1;
    float l0 = l[0] * alpha[0], l1 = l[1] * alpha[1];
#pragma unroll
    for (int n = 0; n < NB; ++n) {
        at(n, 0) = ex2(fmaf(at(n, 0), scale_log2, -mn0));
        at(n, 1) = ex2(fmaf(at(n, 1), scale_log2, -mn0));
        at(n, 2) = ex2(fmaf(at(n, 2), scale_log2, -mn1));
        at(n, 3) = ex2(fmaf(at(n, 3), scale_log2, -mn1));
        l0 += at(n, 0) + at(n, 1);
        l1 += at(n, 2) + at(n, 3);
    }
    l[0] = l0;
    l[1] = l1;
}

__device__ __forceinline__ uint32_t ld32(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }

}  // namespace tc
