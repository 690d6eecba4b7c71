// Learned absolute positions (OPT), in place: hidden[t, :] += table[positions[t] + offset, :]
// over a row-major [tokens, H] matrix and a [num_positions, H] table (OPT's offset is 2).
// Threads take 8 columns when H and the pointers allow 16-byte accesses. Grid-stride loop.
#include "common.cuh"

extern "C" __global__ void add_positions_bf16(int64_t tokens, int64_t H, __nv_bfloat16* hidden,
                                              const __nv_bfloat16* __restrict__ table,
                                              const int* __restrict__ positions, int offset) {
    if (H % 8 == 0 && tandem::aligned16(hidden) && tandem::aligned16(table)) {
        const int64_t h8 = H / 8;
        for (int64_t i = tandem::gtid(); i < tokens * h8; i += tandem::gstride()) {
            const int64_t t = i / h8, c = (i % h8) * 8;
            float a[8], b[8];
            tandem::unpack8(tandem::load8(hidden + t * H + c), a);
            tandem::unpack8(tandem::load8(table + (int64_t)(positions[t] + offset) * H + c), b);
#pragma unroll
            for (int k = 0; k < 8; ++k) a[k] += b[k];
            tandem::store8(hidden + t * H + c, tandem::pack8(a));
        }
        return;
    }
    for (int64_t i = tandem::gtid(); i < tokens * H; i += tandem::gstride()) {
        const int64_t t = i / H, c = i % H;
        hidden[i] = tandem::to_bf16(tandem::to_f32(hidden[i]) +
                                    tandem::to_f32(table[(int64_t)(positions[t] + offset) * H + c]));
    }
}
