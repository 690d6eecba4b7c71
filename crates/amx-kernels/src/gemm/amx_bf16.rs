//! AMX tier of the bf16 GEMM: `tdpbf16ps` on the shared tile machinery of
//! [`amx_tiles`](super::amx_tiles) (tile allocation and blocking documented there). A is copied
//! into the tile panel first (32 of K per tile row, the last tile zero-padded past K).

use half::bf16;
use platform::CpuTier;

use super::amx_tiles::{gemm_amx, APrep, ASource, Knobs};
use super::pack::{PackedWeight, TILE_ELEMS};
use super::{Epilogue, OutElem};
use crate::tile_ops::Tiles;

/// The AMX bf16 GEMM on tiles `T`, the epilogue on `ep_tier`.
///
/// # Safety
/// The arguments passed `check_args` (A holds `m × w.k`, `out` and the epilogue's operands
/// fit), `m > 0`, the tiles `T` are usable on the pool's threads and `ep_tier` is available.
pub(crate) unsafe fn gemm_amx_bf16<T: Tiles, O: OutElem>(
    ep_tier: CpuTier,
    kn: &Knobs,
    a: &[bf16],
    m: usize,
    w: &PackedWeight,
    out: &mut [O],
    ep: &Epilogue,
) {
    let src = ASource {
        a: a.as_ptr() as *const u8,
        lda: w.k * 2,
        row_bytes: w.k * 2,
        m,
        kb: w.kb,
        packed: false,
    };
    gemm_amx::<T, O, false>(
        ep_tier,
        kn,
        &src,
        &w.shape(),
        w.block_ptr(0) as *const u8,
        w.kb * TILE_ELEMS * 2,
        out,
        ep,
        &APrep::none(),
        |_, _| {},
    )
}
