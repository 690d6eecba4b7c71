//! AVX-512F tier of the bf16 GEMM block kernel: bf16 data widened to f32, FMA in f32.
//!
//! A weight row `p` (one zmm of 16 bf16 pairs) splits into two f32 vectors without a shuffle:
//! shifting each 32-bit lane left by 16 gives `W[n][2p]`, masking its low half gives
//! `W[n][2p+1]`. Each is multiplied by a broadcast of `A[m][2p]` or `A[m][2p+1]`.
//!
//! Registers: `MR ≤ 4` rows × `NR ≤ 4` blocks of accumulators (16 zmm), `2·NR` widened weight
//! vectors, two broadcasts.

use std::arch::x86_64::*;

use half::bf16;

use super::pack::{PackedWeight, BLOCK_N};
use super::{a_pair_bits, simd_block};

/// See [`BlockKernel`](super::BlockKernel) for the contract.
pub(crate) unsafe fn gemm_block_avx512_bf16(
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
    simd_block(a, m0, rows, w, pb0, pb1, c, 4, |mr, nr, p| unsafe {
        dispatch_micro!(micro, mr, nr, (p.a, p.k, p.b, p.bs, p.c, p.ldc))
    });
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn micro<const MR: usize, const NR: usize>(
    a: *const bf16,
    k: usize,
    b: *const bf16,
    bstride: usize,
    c: *mut f32,
    ldc: usize,
) {
    let hi = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let pairs = k.div_ceil(2);
    for p in 0..pairs {
        let mut even = [_mm512_setzero_ps(); NR];
        let mut odd = [_mm512_setzero_ps(); NR];
        for j in 0..NR {
            // SAFETY: row p of block nb0 + j is inside the packed tiles (K padded to 32).
            let v = _mm512_loadu_si512(b.add(j * bstride + p * 32) as *const _);
            even[j] = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
            odd[j] = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let bits = a_pair_bits(a.add(r * k), k, p);
            let a0 = _mm512_set1_ps(f32::from_bits(bits << 16));
            let a1 = _mm512_set1_ps(f32::from_bits(bits & 0xFFFF_0000));
            for j in 0..NR {
                accr[j] = _mm512_fmadd_ps(a0, even[j], accr[j]);
                accr[j] = _mm512_fmadd_ps(a1, odd[j], accr[j]);
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for (j, v) in accr.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc + j * BLOCK_N), *v);
        }
    }
}
