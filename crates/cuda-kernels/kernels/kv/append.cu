// KV append into the paged cache.
//
// Cache layout (DESIGN.md), per layer, K and V alike:
//   cache[num_blocks][num_kv_heads][BLOCK = 16][D]   bf16
// Token t of the batch goes to slot s = slots[t]: block s / 16, offset s % 16. Its new K (and
// V) for kv head h are D contiguous elements at k + t * k_stride + h * D (so the k part of a
// packed QKV row works with its offset and the row stride). A negative slot skips the token
// (padding). One 16-byte chunk per thread when D and every stride allow it (D is 64 or 128
// and the launcher checks the strides), grid-stride loop.
#include "common.cuh"

namespace kv_append {
constexpr int BLOCK = 16;
}

extern "C" __global__ void kv_append_bf16(int64_t tokens, int heads, int D, const __nv_bfloat16* __restrict__ k,
                                          int64_t k_stride, const __nv_bfloat16* __restrict__ v, int64_t v_stride,
                                          const int* __restrict__ slots, __nv_bfloat16* __restrict__ k_cache,
                                          __nv_bfloat16* __restrict__ v_cache) {
    tandem::pdl_wait();
    tandem::pdl_trigger();
    // D / 8 is 8 or 16: shifts instead of 64-bit divisions.
    const int shift = D == 128 ? 4 : 3, d8 = 1 << shift;
    const int64_t n = tokens * heads * d8, stride = tandem::gstride();
    // Item i is chunk i % d8 of (token, head) th = i / d8; tokens * heads < 2^32 (checked on
    // the host).
    int64_t i = tandem::gtid();
    // Each item's slot is read one iteration ahead: its latency then overlaps the previous
    // item's copy, where the row loads (which the compiler keeps behind the slot test) would
    // otherwise wait for it every time.
    int s = i < n ? slots[(uint32_t)(i >> shift) / (uint32_t)heads] : -1;
    for (; i < n; i += stride) {
        const int s_next = i + stride < n ? slots[(uint32_t)((i + stride) >> shift) / (uint32_t)heads] : -1;
        if (s >= 0) {
            const int c = (int)(i & (d8 - 1)) * 8;
            const uint32_t th = (uint32_t)(i >> shift);
            const int h = (int)(th % (uint32_t)heads);
            const int64_t t = th / (uint32_t)heads;
            const int64_t dst =
                (((int64_t)(s / kv_append::BLOCK) * heads + h) * kv_append::BLOCK + s % kv_append::BLOCK) * D + c;
            // Both loads before either store (a store is a compiler barrier, see store8).
            const tandem::bf16x8 kr = tandem::load8(k + t * k_stride + (int64_t)h * D + c);
            const tandem::bf16x8 vr = tandem::load8(v + t * v_stride + (int64_t)h * D + c);
            tandem::store8(k_cache + dst, kr);
            tandem::store8(v_cache + dst, vr);
        }
        s = s_next;
    }
}
