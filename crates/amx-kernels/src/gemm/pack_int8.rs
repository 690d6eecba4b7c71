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
/// row) and writes `x / scale` rounded to the nearest integer, ties to even, into the first
/// `min(x.len(), q.len())` elements of `q`. The one definition every kernel and reference uses:
/// AVX-512 (F, BW, VL) where the CPU has it (the activations of every int8 GEMM call go
/// through here), the scalar loop otherwise; the two give the same bytes
/// (`quantize_row_paths_agree`).
pub fn quantize_row_int8(x: &[bf16], q: &mut [i8]) -> f32 {
    let n = x.len().min(q.len());
    #[cfg(target_arch = "x86_64")]
    {
        let caps = platform::cpu_caps();
        if caps.avx512f && caps.avx512bw && caps.avx512vl {
            // SAFETY: AVX-512 F, BW and VL are present (checked just above).
            return unsafe { quantize_row_avx512(&x[..n], &mut q[..n]) };
        }
    }
    quantize_row_scalar(&x[..n], &mut q[..n])
}

/// The scale of a row whose largest magnitude is `amax`, and its inverse.
fn scale_of(amax: f32) -> (f32, f32) {
    let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
    (scale, 1.0 / scale)
}

/// [`quantize_row_int8`] without SIMD. Rounding adds and subtracts 1.5·2²³: for |y| < 2²²
/// the sum lies where f32 spacing is 1, so the addition rounds y to an integer, ties to even,
/// as `vcvtps2dq` does (and without a libm call per element, which `f32::round` is on the
/// baseline x86-64 target). A NaN input gives 0, as in the AVX-512 path.
pub(crate) fn quantize_row_scalar(x: &[bf16], q: &mut [i8]) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let amax = x.iter().fold(0f32, |m, v| m.max(v.to_f32().abs()));
    let (scale, inv) = scale_of(amax);
    for (d, v) in q.iter_mut().zip(x) {
        *d = ((v.to_f32() * inv + ROUND) - ROUND).clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// [`quantize_row_int8`] on AVX-512, 16 elements a step (the tail masked), `x.len() == q.len()`.
///
/// # Safety
/// AVX-512 F, BW and VL are present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize_row_avx512(x: &[bf16], q: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(q.len());
    let lanes = |i: usize| -> __mmask16 { crate::simd::lanes(n - i) };
    let widen = |i: usize| -> __m512 { crate::simd::load_bf16x16(x.as_ptr().add(i), lanes(i)) };
    let abs = _mm512_set1_epi32(0x7fff_ffff);
    let mut mx = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        let a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(widen(i)), abs));
        // `max(a, mx)` returns mx where a is NaN: NaNs are skipped, as f32::max does.
        mx = _mm512_max_ps(a, mx);
    }
    let (scale, inv) = scale_of(_mm512_reduce_max_ps(mx));
    let (inv, lo, hi) = (
        _mm512_set1_ps(inv),
        _mm512_set1_ps(-127.0),
        _mm512_set1_ps(127.0),
    );
    for i in (0..n).step_by(16) {
        let y = _mm512_mul_ps(widen(i), inv);
        let finite = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y);
        let y = _mm512_maskz_mov_ps(finite, _mm512_min_ps(_mm512_max_ps(y, lo), hi));
        let r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
        let dst = q.as_mut_ptr().add(i);
        if i + 16 <= n {
            _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtepi32_epi8(r));
        } else {
            _mm512_mask_cvtepi32_storeu_epi8(dst as *mut _, lanes(i), r);
        }
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
        platform::install(|| {
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
