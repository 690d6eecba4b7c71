// Unpack of the CPU's AMX-packed bf16 weight (amx-kernels' PackedWeight, layout at the top of
// crates/amx-kernels/src/gemm/pack.rs) back into the row-major HF layout out[N, K] that the
// GEMM takes.
//
// Packed: tiles[nblocks][kb], kb = ceil(K / 32), each tile 512 bf16 = [16 k-pairs p][16 columns
// c][2 slots s]. Element (n, k) of W sits in tile (n / 16, k / 32) at p = (k % 32) / 2,
// c = n % 16, s = k % 2; N is padded to 16 and K to 32 with zeros. Gate/up (inter > 0,
// N = 2 * inter): block 2j holds gate rows 16j .., block 2j + 1 up rows inter + 16j .., each
// half padded to 16 on its own.
//
// Seen as 32-bit words (one k-pair each, slot 0 in the low half), a tile is a 16 x 16 word
// matrix T[p][c], and row c of the tile's 16 x 32 output segment is column c of T: unpacking is
// a word transpose. One thread takes a 4 x 4 word block (tile rows 4 pg .. 4 pg + 3, columns
// 4 cq .. 4 cq + 3): four 16-byte loads, the transpose in registers, four 16-byte stores
// (output rows of columns 4 cq + i, k = 32 kb + 8 pg .. + 8). Sixteen consecutive threads cover
// one tile, pg fastest, and consecutive tiles are consecutive K blocks of one column block, so
// every sector a warp loads is used whole and each store instruction writes runs of 128
// contiguous bytes. Blocks wholly in the padding are neither read nor written.
//
// mode: 0 = 16-byte stores (K % 8 == 0 and out 16-byte aligned), 1 = 4-byte stores (K even,
// out 4-byte aligned), 2 = 2-byte stores. The launcher picks it and checks that packed is
// 16-byte aligned and that items = tiles * 16 fits 31 bits.
#include "common.cuh"

namespace unpack_vnni {
__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// One instantiation per store width: the mode is tested once, not per row.
template <int MODE>
__device__ __forceinline__ void run(int64_t n, int64_t k, int64_t inter, uint32_t kbn, uint32_t items,
                                    const uint4* __restrict__ packed, __nv_bfloat16* __restrict__ out) {
    const bool gate_up = inter > 0;
    const int64_t lim = gate_up ? inter : n;  // columns of one half
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += gridDim.x * blockDim.x) {
        const uint32_t t = i >> 4, pg = i & 3, cq = (i >> 2) & 3;
        const uint32_t nb = t / kbn, kb = t - nb * kbn;
        const int64_t c0 = (gate_up ? (int64_t)(nb >> 1) * 16 : (int64_t)nb * 16) + 4 * cq;
        const int64_t row0 = gate_up ? c0 + (int64_t)(nb & 1) * inter : c0;
        const int64_t k0 = (int64_t)kb * 32 + 8 * pg;
        if (c0 >= lim || k0 >= k) continue;  // padding only
        // Tile t is 64 uint4; row p is 4 uint4 of 4 words.
        const uint4* src = packed + (size_t)t * 64 + 16 * pg + cq;
        uint4 v[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) v[r] = __ldcs(src + 4 * r);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            if (c0 + c >= lim) break;
            __nv_bfloat16* dst = out + (row0 + c) * k + k0;
            if (MODE == 0) {
                tandem::store16(dst, make_uint4(word(v[0], c), word(v[1], c), word(v[2], c), word(v[3], c)));
            } else if (MODE == 1) {
                uint32_t* d = reinterpret_cast<uint32_t*>(dst);
#pragma unroll
                for (int r = 0; r < 4; ++r)
                    if (k0 + 2 * r < k) d[r] = word(v[r], c);
            } else {
                unsigned short* d = reinterpret_cast<unsigned short*>(dst);
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const uint32_t w = word(v[r], c);
                    if (k0 + 2 * r < k) d[2 * r] = (unsigned short)(w & 0xffffu);
                    if (k0 + 2 * r + 1 < k) d[2 * r + 1] = (unsigned short)(w >> 16);
                }
            }
        }
    }
}
}  // namespace unpack_vnni

extern "C" __global__ void unpack_vnni_bf16(int64_t n, int64_t k, int64_t inter, uint32_t kbn, uint32_t items,
                                            int mode, const uint4* __restrict__ packed,
                                            __nv_bfloat16* __restrict__ out) {
    if (mode == 0)
        unpack_vnni::run<0>(n, k, inter, kbn, items, packed, out);
    else if (mode == 1)
        unpack_vnni::run<1>(n, k, inter, kbn, items, packed, out);
    else
        unpack_vnni::run<2>(n, k, inter, kbn, items, packed, out);
}
