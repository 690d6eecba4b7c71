//! Scalar tier of the int8 GEMM block kernel: i32 dot products of the quantized row and the
//! packed quads, for CPUs without AVX-512 VNNI.

use super::int8::QuantA;
use super::pack::BLOCK_N;
use super::pack_int8::{tile_offset_int8, PackedWeightI8, BLOCK_K_INT8};

/// See [`BlockKernelI8`](super::int8::BlockKernelI8) for the contract.
pub(crate) unsafe fn gemm_block_scalar_int8(
    a: &QuantA,
    m0: usize,
    rows: usize,
    w: &PackedWeightI8,
    pb0: usize,
    pb1: usize,
    c: &mut [f32],
) {
    let ldc = (pb1 - pb0) * BLOCK_N;
    for r in 0..rows {
        let arow = &a.q[(m0 + r) * a.kpad..][..w.k];
        for nb in pb0..pb1 {
            let tiles = &w.tiles[nb * w.kb..(nb + 1) * w.kb];
            let mut acc = [0i32; BLOCK_N];
            for (kk, &av) in arow.iter().enumerate() {
                let t = &tiles[kk / BLOCK_K_INT8].0;
                for (col, s) in acc.iter_mut().enumerate() {
                    *s += av as i32 * t[tile_offset_int8(kk % BLOCK_K_INT8, col)] as i32;
                }
            }
            for (d, s) in c[r * ldc + (nb - pb0) * BLOCK_N..][..BLOCK_N]
                .iter_mut()
                .zip(acc)
            {
                *d = f32::from_bits(s as u32);
            }
        }
    }
}
