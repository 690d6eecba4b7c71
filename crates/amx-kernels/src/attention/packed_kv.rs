//! K and V repacked per (sequence, kv head) into the tile layouts that `tdpbf16ps` and
//! `vdpbf16ps` read, once per call, shared by every query block and q head of the group.
//!
//! Per key block of 32 keys (zero past the sequence's last key), `D/16` Kᵀ tiles then `D/16`
//! V tiles, each 16 rows × 64 bytes:
//!
//! ```text
//! Kᵀ tile (dc, half), dc < D/32, half < 2:  [16 pairs p][16 keys n][2]
//!     = K[key 32·kb + 16·half + n][dim 32·dc + 2p + e]       (B operand of S = Q·Kᵀ)
//! V tile dj, dj < D/16:                      [16 key pairs i][16 dims c][2]
//!     = V[key 32·kb + 2i + e][dim 16·dj + c]                 (B operand of O += P·V)
//! ```
//!
//! Order: `[sequence][kv head][key block][Kᵀ tiles, V tiles]`.

use half::bf16;
use rayon::prelude::*;

use super::{AttnShape, KEY_BLOCK};

/// bf16 elements of one tile.
pub const TILE: usize = 512;

pub(crate) struct PackedKv<'a> {
    pub data: &'a [bf16],
    /// Start of each (sequence, kv head), index `seq · num_kv_heads + kvh`.
    pub offsets: Vec<usize>,
    pub head_dim: usize,
}

impl PackedKv<'_> {
    fn block_elems(&self) -> usize {
        KEY_BLOCK * self.head_dim * 2
    }
    /// Start of key block `kb` of (sequence, kv head) `sk = seq · num_kv_heads + kvh`.
    pub fn block(&self, sk: usize, kb: usize) -> *const bf16 {
        self.data[self.offsets[sk] + kb * self.block_elems()..].as_ptr()
    }
    /// Kᵀ tile (`dc`, `half`) of a key block.
    pub fn kt_tile(&self, block: *const bf16, dc: usize, half: usize) -> *const bf16 {
        block.wrapping_add((dc * 2 + half) * TILE)
    }
    /// V tile `dj` of a key block.
    pub fn v_tile(&self, block: *const bf16, dj: usize) -> *const bf16 {
        block.wrapping_add((self.head_dim / 16 + dj) * TILE)
    }
}

/// Repacks `k`, `v` (`[total_k][num_kv_heads][head_dim]`) into `buf` on the pool.
pub(crate) fn pack<'a>(
    buf: &'a mut Vec<bf16>,
    k: &[bf16],
    v: &[bf16],
    cu_k: &[usize],
    shape: AttnShape,
) -> PackedKv<'a> {
    let (hk, d) = (shape.num_kv_heads, shape.head_dim);
    let nseq = cu_k.len() - 1;
    let block_elems = KEY_BLOCK * d * 2;
    let mut offsets = Vec::with_capacity(nseq * hk);
    let mut total = 0;
    for s in 0..nseq {
        let nkb = (cu_k[s + 1] - cu_k[s]).div_ceil(KEY_BLOCK);
        for _ in 0..hk {
            offsets.push(total);
            total += nkb * block_elems;
        }
    }
    if buf.len() < total {
        buf.resize(total, bf16::ZERO);
    }
    let mut parts = Vec::with_capacity(nseq * hk);
    let mut rest = &mut buf[..total];
    for s in 0..nseq {
        let nkb = (cu_k[s + 1] - cu_k[s]).div_ceil(KEY_BLOCK);
        for kvh in 0..hk {
            let (mine, tail) = rest.split_at_mut(nkb * block_elems);
            parts.push((s, kvh, mine));
            rest = tail;
        }
    }
    platform::install(|| {
        parts.par_iter_mut().for_each(|(s, kvh, dst)| {
            let (k0, klen) = (cu_k[*s], cu_k[*s + 1] - cu_k[*s]);
            let base = |j: usize| (j < klen).then(|| ((k0 + j) * hk + *kvh) * d);
            let zeros = [bf16::ZERO; super::MAX_HEAD_DIM];
            for (kb, blk) in dst.chunks_exact_mut(block_elems).enumerate() {
                let (kt, vt) = blk.split_at_mut(d * KEY_BLOCK);
                for n in 0..KEY_BLOCK {
                    let (half, nn, i, e) = (n / 16, n % 16, n / 2, n % 2);
                    let (krow, vrow) = match base(kb * KEY_BLOCK + n) {
                        Some(b) => (&k[b..b + d], &v[b..b + d]),
                        None => (&zeros[..d], &zeros[..d]),
                    };
                    for dc in 0..d / 32 {
                        let t = &mut kt[(dc * 2 + half) * TILE + nn * 2..];
                        for p in 0..16 {
                            t[p * 32] = krow[dc * 32 + 2 * p];
                            t[p * 32 + 1] = krow[dc * 32 + 2 * p + 1];
                        }
                    }
                    for dj in 0..d / 16 {
                        let t = &mut vt[dj * TILE + i * 32 + e..];
                        for c in 0..16 {
                            t[c * 2] = vrow[dj * 16 + c];
                        }
                    }
                }
            }
        })
    });
    PackedKv {
        data: &buf[..total],
        offsets,
        head_dim: d,
    }
}
