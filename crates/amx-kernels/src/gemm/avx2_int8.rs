//! AVX2 tier of the int8 GEMM block kernel: the packed quads widened to i16 and multiplied by
//! a broadcast quad of A with `vpmaddwd`, which leaves two partial sums per column (k 0–1 and
//! k 2–3 of each quad); they are added once at the end of the K loop.
//!
//! A weight row (64 bytes: 16 columns × 4 k) is four 16-byte quarters of 4 columns each; one
//! quarter widened is 16 i16 (one ymm), and `vpmaddwd` with `[a0 a1 a2 a3]×4` gives the 8 i32
//! `c0:(a0w0+a1w1), c0:(a2w2+a3w3), c1:…`. Registers: `MR ≤ 2` rows × 4 quarters of
//! accumulators (8 ymm), 4 widened quarters, one broadcast.

use std::arch::x86_64::*;

use super::int8::QuantA;
use super::pack::BLOCK_N;
use super::pack_int8::{PackedWeightI8, BLOCK_K_INT8};

/// See [`BlockKernelI8`](super::int8::BlockKernelI8) for the contract.
pub(crate) unsafe fn gemm_block_avx2_int8(
    a: &QuantA,
    m0: usize,
    rows: usize,
    w: &PackedWeightI8,
    pb0: usize,
    pb1: usize,
    c: &mut [f32],
) {
    let ldc = (pb1 - pb0) * BLOCK_N;
    let quads = w.kb * BLOCK_K_INT8 / 4;
    for nb in pb0..pb1 {
        for r0 in (0..rows).step_by(2) {
            let ap = a.q.as_ptr().add((m0 + r0) * a.kpad);
            let cp = c.as_mut_ptr().add(r0 * ldc + (nb - pb0) * BLOCK_N);
            // SAFETY: the caller's contract covers rows r0.. of the padded quantized A, block
            // nb of W and its columns of c; AVX2 is available.
            if rows - r0 >= 2 {
                micro::<2>(ap, a.kpad, quads, w.block_ptr(nb), cp, ldc);
            } else {
                micro::<1>(ap, a.kpad, quads, w.block_ptr(nb), cp, ldc);
            }
        }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn micro<const MR: usize>(
    a: *const i8,
    lda: usize,
    quads: usize,
    b: *const i8,
    c: *mut f32,
    ldc: usize,
) {
    let mut acc = [[_mm256_setzero_si256(); 4]; MR];
    for q in 0..quads {
        let mut wv = [_mm256_setzero_si256(); 4];
        for (j, v) in wv.iter_mut().enumerate() {
            // SAFETY: row q of the block is inside the packed tiles.
            *v = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(q * 64 + j * 16) as *const __m128i));
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let quad = a.add(r * lda + 4 * q);
            let lo = (*quad as i16 as u16 as u32) | ((*quad.add(1) as i16 as u16 as u32) << 16);
            let hi =
                (*quad.add(2) as i16 as u16 as u32) | ((*quad.add(3) as i16 as u16 as u32) << 16);
            let av = _mm256_set1_epi64x(((hi as u64) << 32 | lo as u64) as i64);
            for j in 0..4 {
                accr[j] = _mm256_add_epi32(accr[j], _mm256_madd_epi16(av, wv[j]));
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for (j, v) in accr.iter().enumerate() {
            let mut s = [0i32; 8];
            _mm256_storeu_si256(s.as_mut_ptr() as *mut __m256i, *v);
            for cc in 0..4 {
                *c.add(r * ldc + j * 4 + cc) = f32::from_bits((s[2 * cc] + s[2 * cc + 1]) as u32);
            }
        }
    }
}
