//! AMX tier of the bf16 GEMM block kernel: `tdpbf16ps` on the shared tile machinery of
//! [`amx_tiles`](super::amx_tiles) (tile allocation documented there). A is read in place,
//! row-major bf16, 32 of K per tile row; a K that is not a multiple of 32 takes the tail path.

use half::bf16;

use super::amx_tiles::{gemm_block_amx, AmxOperands};
use super::pack::{PackedWeight, BLOCK_K, TILE_ELEMS};

/// See [`BlockKernel`](super::BlockKernel) for the contract.
pub(crate) unsafe fn gemm_block_amx_bf16(
    a: &[bf16],
    m0: usize,
    rows: usize,
    w: &PackedWeight,
    pb0: usize,
    pb1: usize,
    c: &mut [f32],
) {
    let op = AmxOperands {
        a: a.as_ptr().add(m0 * w.k) as *const u8,
        lda: w.k * 2,
        tail_bytes: (w.k % BLOCK_K) * 2,
        b: w.block_ptr(0) as *const u8,
        b_stride: w.kb * TILE_ELEMS * 2,
        kb: w.kb,
    };
    gemm_block_amx::<false>(&op, rows, pb0, pb1, c);
}
