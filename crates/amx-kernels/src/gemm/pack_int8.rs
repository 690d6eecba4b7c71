//! The prepacked int8 weight: an HF bf16 linear weight `W[N, K]` quantized at load with one
//! scale per output channel (`s[n] = max|W[n, :]| / 127`, `q = round(W / s)`, symmetric), then
//! rearranged into AMX B tiles for `tdpbssd`.
//!
//! Layout: `tiles[nb][kb]`, one 1 KiB tile per (16-column block `nb`, 64-deep K block `kb`),
//! the K blocks of one column block contiguous:
//!
//! ```text
//! tile (nb, kb) = [16 k-quads][16 columns][4]   i8, 16 rows × 64 bytes
//! element (k, n) lives in tile (n / 16, k / 64) at row (k % 64) / 4, column n % 16, slot k % 4
//! ```
//!
//! One tile row is one zmm: a 32-bit lane holds the quad `vpdpbusd` multiplies with a
//! broadcast quad of A. N is padded to 16 and K to 64 with zeros. Scales and the column sums
//! of `q` (which the AVX-512 VNNI twin needs to undo its +128 shift of A) are stored in packed
//! column order. Gate/up weights interleave their blocks as the bf16 packing does.

use half::bf16;
use rayon::prelude::*;

use super::pack::{check_shape, WeightKind, BLOCK_N};
use super::WeightShape;
use crate::Result;

/// K depth of one int8 tile.
pub const BLOCK_K_INT8: usize = 64;
const TILE_BYTES: usize = 1024;

/// One 1 KiB B tile of int8 quads, cache-line aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct TileI8(pub [i8; TILE_BYTES]);

/// Symmetric int8 quantization of one row: returns the scale `max|x| / 127` (1 for an all-zero
/// row) and writes `round(x / scale)`. The one definition every kernel and reference uses.
pub fn quantize_row_int8(x: &[bf16], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.to_f32().abs()));
    let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    for (d, v) in q.iter_mut().zip(x) {
        *d = (v.to_f32() * inv).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

#[inline(always)]
pub(crate) fn tile_offset_int8(kk: usize, c: usize) -> usize {
    (kk / 4) * (4 * BLOCK_N) + c * 4 + (kk % 4)
}

/// A bf16 weight quantized to int8 per output channel and prepacked (layout in the module
/// header).
pub struct PackedWeightI8 {
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) kind: WeightKind,
    /// K tiles per column block: `ceil(K / 64)`.
    pub(crate) kb: usize,
    pub(crate) nblocks: usize,
    pub(crate) tiles: Vec<TileI8>,
    /// Per packed column: the dequantization scale (0 for padding).
    pub(crate) scales: Vec<f32>,
    /// Per packed column: `Σ_k q[n][k]`.
    pub(crate) col_sums: Vec<i32>,
}

impl PackedWeightI8 {
    /// Quantizes and packs `w`, row-major `[n, k]` (an HF linear weight).
    pub fn from_bf16(w: &[bf16], n: usize, k: usize) -> Result<Self> {
        Self::pack(w, n, k, false)
    }

    /// Quantizes and packs a fused gate/up weight `[2·inter, k]` for the SiLU·mul epilogue.
    pub fn from_bf16_gate_up(w: &[bf16], n: usize, k: usize) -> Result<Self> {
        Self::pack(w, n, k, true)
    }

    fn pack(w: &[bf16], n: usize, k: usize, gate_up: bool) -> Result<Self> {
        check_shape(w, n, k)?;
        let (kind, nblocks) = WeightKind::layout(gate_up, n)?;
        let kb = k.div_ceil(BLOCK_K_INT8);
        let mut tiles = vec![TileI8([0; TILE_BYTES]); nblocks * kb];
        let mut scales = vec![0f32; nblocks * BLOCK_N];
        let mut col_sums = vec![0i32; nblocks * BLOCK_N];
        platform::pool().install(|| {
            tiles
                .par_chunks_mut(kb)
                .zip(scales.par_chunks_mut(BLOCK_N))
                .zip(col_sums.par_chunks_mut(BLOCK_N))
                .enumerate()
                .for_each(|(nb, ((col_tiles, sc), cs))| {
                    let mut q = vec![0i8; k];
                    for c in 0..BLOCK_N {
                        let Some(row) = kind.row_of(n, nb, c) else {
                            continue;
                        };
                        sc[c] = quantize_row_int8(&w[row * k..(row + 1) * k], &mut q);
                        cs[c] = q.iter().map(|&v| v as i32).sum();
                        for (kk, &v) in q.iter().enumerate() {
                            col_tiles[kk / BLOCK_K_INT8].0
                                [tile_offset_int8(kk % BLOCK_K_INT8, c)] = v;
                        }
                    }
                })
        });
        Ok(PackedWeightI8 {
            n,
            k,
            kind,
            kb,
            nblocks,
            tiles,
            scales,
            col_sums,
        })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes of packed storage (padding included).
    pub fn packed_bytes(&self) -> usize {
        self.tiles.len() * TILE_BYTES
    }

    /// Quantized `W[row][col]` and its row's scale (for references and tests).
    pub fn get(&self, row: usize, col: usize) -> (i8, f32) {
        let (nb, c) = self.kind.block_of(row);
        let q = self.tiles[nb * self.kb + col / BLOCK_K_INT8].0
            [tile_offset_int8(col % BLOCK_K_INT8, c)];
        (q, self.scales[nb * BLOCK_N + c])
    }

    pub(crate) fn shape(&self) -> WeightShape {
        WeightShape {
            n: self.n,
            k: self.k,
            kind: self.kind,
            nblocks: self.nblocks,
        }
    }

    /// Start of column block `nb`'s K tiles.
    pub(crate) fn block_ptr(&self, nb: usize) -> *const i8 {
        self.tiles[nb * self.kb..].as_ptr() as *const i8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_packing_round_trips_within_half_a_step() {
        let (n, k) = (19, 130);
        let w: Vec<bf16> = (0..n * k)
            .map(|i| bf16::from_f32(((i * 37) % 101) as f32 / 50.0 - 1.0))
            .collect();
        let p = PackedWeightI8::from_bf16(&w, n, k).unwrap();
        for r in 0..n {
            for c in 0..k {
                let (q, s) = p.get(r, c);
                let x = w[r * k + c].to_f32();
                assert!(
                    (q as f32 * s - x).abs() <= s * 0.5 + 1e-6,
                    "({r},{c}): {q}·{s} vs {x}"
                );
            }
        }
        // Padding (columns past N, K past 130) is zero: everything in the tiles is accounted for.
        let in_tiles: i64 = p
            .tiles
            .iter()
            .flat_map(|t| t.0.iter())
            .map(|&v| (v as i64).abs())
            .sum();
        let real: i64 = (0..n)
            .flat_map(|r| (0..k).map(move |c| (r, c)))
            .map(|(r, c)| (p.get(r, c).0 as i64).abs())
            .sum();
        assert_eq!(in_tiles, real);
    }
}
