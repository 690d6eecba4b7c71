//! Scalar tier of the bf16 GEMM block kernel: plain Rust over the packed tiles, f32
//! accumulation in the same pair order as the SIMD twins (`W[2p]·A[2p] + W[2p+1]·A[2p+1]`).
//! For machines with no AVX2, and as the simplest reading of the packed layout.

use half::bf16;

use super::pack::{tile_offset, PackedWeight, BLOCK_K, BLOCK_N};

/// See [`BlockKernel`](super::BlockKernel) for the contract.
pub(crate) unsafe fn gemm_block_scalar_bf16(
    a: &[bf16],
    m0: usize,
    rows: usize,
    w: &PackedWeight,
    pb0: usize,
    pb1: usize,
    c: &mut [f32],
) {
    let k = w.k;
    let ldc = (pb1 - pb0) * BLOCK_N;
    for r in 0..rows {
        let arow = &a[(m0 + r) * k..(m0 + r + 1) * k];
        for nb in pb0..pb1 {
            let tiles = &w.tiles[nb * w.kb..(nb + 1) * w.kb];
            let mut acc = [0f32; BLOCK_N];
            for (kk, av) in arow.iter().enumerate() {
                let (av, t) = (av.to_f32(), &tiles[kk / BLOCK_K].0);
                for (col, s) in acc.iter_mut().enumerate() {
                    *s += av * t[tile_offset(kk % BLOCK_K, col)].to_f32();
                }
            }
            c[r * ldc + (nb - pb0) * BLOCK_N..][..BLOCK_N].copy_from_slice(&acc);
        }
    }
}
