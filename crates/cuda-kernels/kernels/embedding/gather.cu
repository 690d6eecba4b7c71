// Embedding gather: out[t, :] = table[ids[t], :] over a row-major [vocab, H] table and a
// [tokens, H] output. A plain copy, 16 bytes per thread when H and the pointers allow it.
#include "common.cuh"

extern "C" __global__ void embedding_bf16(int64_t tokens, int64_t H, const __nv_bfloat16* __restrict__ table,
                                          const int* __restrict__ ids, __nv_bfloat16* __restrict__ out) {
    if (H % 8 == 0 && tandem::aligned16(table) && tandem::aligned16(out)) {
        const int64_t h8 = H / 8;
        for (int64_t i = tandem::gtid(); i < tokens * h8; i += tandem::gstride()) {
            const int64_t t = i / h8, c = (i % h8) * 8;
            tandem::store8(out + t * H + c, tandem::load8(table + (int64_t)ids[t] * H + c));
        }
        return;
    }
    for (int64_t i = tandem::gtid(); i < tokens * H; i += tandem::gstride())
        out[i] = table[(int64_t)ids[i / H] * H + i % H];
}
