//! AVX512-BF16 tier of the bf16 GEMM block kernel (`vdpbf16ps`).
//!
//! Reads the packed weight as the AMX kernel does: row `p` of a column block's tiles (64 bytes,
//! one zmm) holds the pairs `W[n][2p], W[n][2p+1]` of its 16 columns, so
//! `vdpbf16ps acc, bcast(A[m][2p..2p+2]), row` adds both products of the pair to 16 columns.
//!
//! Registers of one micro-kernel call: `MR ≤ 4` rows × `NR ≤ 4` column blocks of accumulators
//! (up to 16 zmm), `NR` zmm of weight rows, one broadcast A pair; K walked one pair at a time
//! with no blocking (this tier is the fallback where AMX is missing, and what CI proves).

use std::arch::x86_64::*;

use half::bf16;

use super::pack::{PackedWeight, BLOCK_N};
use super::{a_pair_bits, simd_block};

/// See [`BlockKernel`](super::BlockKernel) for the contract.
pub(crate) unsafe fn gemm_block_avx512bf16_bf16(
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

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn micro<const MR: usize, const NR: usize>(
    a: *const bf16,
    k: usize,
    b: *const bf16,
    bstride: usize,
    c: *mut f32,
    ldc: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let pairs = k.div_ceil(2);
    for p in 0..pairs {
        let mut bv = [_mm512_setzero_ps(); NR];
        for (j, v) in bv.iter_mut().enumerate() {
            // SAFETY: row p of block nb0 + j is inside the packed tiles (K padded to 32).
            *v = _mm512_castsi512_ps(_mm512_loadu_si512(b.add(j * bstride + p * 32) as *const _));
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let av: __m512bh =
                std::mem::transmute(_mm512_set1_epi32(a_pair_bits(a.add(r * k), k, p) as i32));
            for j in 0..NR {
                accr[j] =
                    _mm512_dpbf16_ps(accr[j], av, std::mem::transmute::<__m512, __m512bh>(bv[j]));
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for (j, v) in accr.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc + j * BLOCK_N), *v);
        }
    }
}
