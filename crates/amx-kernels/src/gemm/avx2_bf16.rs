//! AVX2 + FMA tier of the bf16 GEMM block kernel: the AVX-512F kernel's arithmetic on ymm.
//!
//! A 16-column block's weight row `p` is two ymm (columns 0–7, 8–15), each split into the
//! even-k and odd-k f32 vectors by a shift and a mask.
//!
//! Registers: `MR ≤ 4` rows × one block (2 ymm) of accumulators (8 ymm; with `MR ≤ 2`, the
//! even-k and odd-k products in separate ones, 4 or 8 ymm), four widened weight vectors, two
//! broadcasts: at most 14 of the 16 ymm.

use std::arch::x86_64::*;

use half::bf16;

use super::pack::PackedWeight;
use super::{a_pair_bits, simd_block};

/// See [`BlockKernel`](super::BlockKernel) for the contract.
pub(crate) unsafe fn gemm_block_avx2_bf16(
    a: &[bf16],
    m0: usize,
    rows: usize,
    w: &PackedWeight,
    pb0: usize,
    pb1: usize,
    c: &mut [f32],
) {
    // SAFETY: the caller's contract (see BlockKernel) covers every micro-tile of this block,
    // and this tier is available.
    simd_block(a, m0, rows, w, pb0, pb1, c, 1, |mr, nr, p| unsafe {
        let _ = nr;
        match mr {
            1 => micro::<1>(p.a, p.k, p.b, p.c, p.ldc),
            2 => micro::<2>(p.a, p.k, p.b, p.c, p.ldc),
            3 => micro::<3>(p.a, p.k, p.b, p.c, p.ldc),
            _ => micro::<4>(p.a, p.k, p.b, p.c, p.ldc),
        }
    });
}

#[target_feature(enable = "avx2,fma")]
unsafe fn micro<const MR: usize>(
    a: *const bf16,
    k: usize,
    b: *const bf16,
    c: *mut f32,
    ldc: usize,
) {
    let hi = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    // Accumulators `[row][half][even-k, odd-k]`. With at most 2 rows the even and odd products
    // go to separate registers, so that no accumulator takes two dependent FMAs a pair: with
    // one shared register, MR = 1 ran 2 chains of 2 FMAs (8 cycles of latency a 64-byte weight
    // row) and streamed the weight slower than one core reads it. With 3 or 4 rows the shared
    // registers already give 6 or 8 chains, and separate ones would not fit the 16 ymm.
    let np = if MR <= 2 { 2 } else { 1 };
    let mut acc = [[[_mm256_setzero_ps(); 2]; 2]; MR];
    let pairs = k.div_ceil(2);
    for p in 0..pairs {
        let mut even = [_mm256_setzero_ps(); 2];
        let mut odd = [_mm256_setzero_ps(); 2];
        for h in 0..2 {
            // SAFETY: row p of the block is inside the packed tiles (K padded to 32).
            let v = _mm256_loadu_si256(b.add(p * 32 + h * 16) as *const __m256i);
            even[h] = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
            odd[h] = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let bits = a_pair_bits(a.add(r * k), k, p);
            let a0 = _mm256_set1_ps(f32::from_bits(bits << 16));
            let a1 = _mm256_set1_ps(f32::from_bits(bits & 0xFFFF_0000));
            for h in 0..2 {
                accr[h][0] = _mm256_fmadd_ps(a0, even[h], accr[h][0]);
                accr[h][np - 1] = _mm256_fmadd_ps(a1, odd[h], accr[h][np - 1]);
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for (h, v) in accr.iter().enumerate() {
            let sum = if np == 2 {
                _mm256_add_ps(v[0], v[1])
            } else {
                v[0]
            };
            _mm256_storeu_ps(c.add(r * ldc + h * 8), sum);
        }
    }
}
