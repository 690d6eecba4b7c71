//! AVX-512 VNNI tier of the int8 GEMM block kernel (`vpdpbusd`).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so A's quads are shifted by +128
//! (`a ^ 0x80` per byte) and the extra `128 · Σ_k q[n][k]` is subtracted at the end with the
//! column sums stored beside the packed weight. Row `q` of a column block's tiles (64 bytes,
//! one zmm) holds the quads `W[n][4q..4q+4]` of its 16 columns.
//!
//! Registers: `MR ≤ 4` rows × `NR ≤ 4` column blocks of i32 accumulators (16 zmm), `NR` weight
//! rows, one broadcast quad.

use std::arch::x86_64::*;

use super::int8::QuantA;
use super::pack::BLOCK_N;
use super::pack_int8::{PackedWeightI8, BLOCK_K_INT8};

/// See [`BlockKernelI8`](super::int8::BlockKernelI8) for the contract.
pub(crate) unsafe fn gemm_block_avx512vnni_int8(
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
    let bs = w.kb * 1024;
    for nb0 in (pb0..pb1).step_by(4) {
        let nr = (pb1 - nb0).min(4);
        for r0 in (0..rows).step_by(4) {
            let mr = (rows - r0).min(4);
            let p = (
                a.q.as_ptr().add((m0 + r0) * a.kpad),
                a.kpad,
                quads,
                w.block_ptr(nb0),
                bs,
                w.col_sums.as_ptr().add(nb0 * BLOCK_N),
                c.as_mut_ptr().add(r0 * ldc + (nb0 - pb0) * BLOCK_N),
                ldc,
            );
            // SAFETY (all arms): the caller's contract covers rows r0..r0+mr of the padded
            // quantized A, blocks nb0..nb0+nr of W and their columns of c; VNNI is present.
            dispatch_micro!(micro, mr, nr, (p.0, p.1, p.2, p.3, p.4, p.5, p.6, p.7));
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const MR: usize, const NR: usize>(
    a: *const i8,
    lda: usize,
    quads: usize,
    b: *const i8,
    bstride: usize,
    col_sums: *const i32,
    c: *mut f32,
    ldc: usize,
) {
    let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
    let mut acc = [[_mm512_setzero_si512(); NR]; MR];
    for q in 0..quads {
        let mut bv = [_mm512_setzero_si512(); NR];
        for (j, v) in bv.iter_mut().enumerate() {
            // SAFETY: row q of block nb0 + j is inside the packed tiles.
            *v = _mm512_loadu_si512(b.add(j * bstride + q * 64) as *const _);
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let quad = (a.add(r * lda + 4 * q) as *const i32).read_unaligned();
            let av = _mm512_xor_si512(_mm512_set1_epi32(quad), flip);
            for j in 0..NR {
                accr[j] = _mm512_dpbusd_epi32(accr[j], av, bv[j]);
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for (j, v) in accr.iter().enumerate() {
            let sums = _mm512_loadu_si512(col_sums.add(j * BLOCK_N) as *const _);
            let fixed = _mm512_sub_epi32(*v, _mm512_slli_epi32::<7>(sums));
            _mm512_storeu_si512(c.add(r * ldc + j * BLOCK_N) as *mut _, fixed);
        }
    }
}
