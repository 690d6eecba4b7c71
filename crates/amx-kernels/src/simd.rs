//! AVX-512 helpers shared by the kernels: `e^x` on 16 lanes and bf16 ↔ f32 on 16 lanes.

use std::arch::x86_64::*;

use half::bf16;

/// `e^x` for 16 lanes: `2^n · e^f` with `n = round(x·log2 e)`, `|f| ≤ ln2/2`, `e^f` by its
/// degree-6 Taylor polynomial (error below 2e-7 relative); `-inf` gives 0, overflow `+inf`.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn exp512(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(std::f32::consts::LN_2));
    const C: [f32; 7] = [
        1.0,
        1.0,
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
    ];
    let mut p = _mm512_set1_ps(C[6]);
    for &c in C[..6].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// The first lanes of `mask` from 16 bf16 at `p`, widened to f32 (others 0).
///
/// # Safety
/// The CPU has AVX-512F/BW/VL; the lanes of `mask` at `p` are readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn load_bf16x16(p: *const bf16, mask: __mmask16) -> __m512 {
    let h = _mm256_maskz_loadu_epi16(mask, p as *const i16);
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// Rounds 16 f32 to bf16 (to nearest even, NaN kept quiet): the bits in the low half of each
/// 32-bit lane, the high half zero.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn bf16_bits(x: __m512) -> __m512i {
    let bits = _mm512_castps_si512(x);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
        bits,
        _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)),
    ));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(0x40));
    _mm512_mask_mov_epi32(rounded, nan, quiet)
}

/// Rounds 16 f32 to bf16 (as [`bf16_bits`]) and stores the lanes of `mask`.
///
/// # Safety
/// The CPU has AVX-512F/BW/VL; the lanes of `mask` at `p` are writable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn store_bf16x16(p: *mut bf16, mask: __mmask16, x: __m512) {
    let h = _mm512_cvtepi32_epi16(bf16_bits(x));
    _mm256_mask_storeu_epi16(p as *mut i16, mask, h);
}

/// Lane mask of the first `n ≤ 16` lanes.
#[inline(always)]
pub fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}
