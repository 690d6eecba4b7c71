//! The online-softmax step of one key block on AVX-512, shared by the AMX and AVX512-BF16
//! attention kernels: scores in, bf16 probabilities and per-row rescale factors out.
//!
//! Per row `r` (scores `s[r][0..32]`, the first `valid[r]` of them visible):
//! `m' = max(m, max s·scale)`, `α = e^(m - m')`, `p = e^(s·scale - m')` (0 where masked),
//! `l' = l·α + Σp`. The caller multiplies its output rows by `α` before adding `P·V`.

use std::arch::x86_64::*;

use half::bf16;

use super::KEY_BLOCK;

pub(crate) use crate::simd::exp512;

/// Running state of up to 16 rows.
pub(crate) struct RowState {
    pub m: [f32; 16],
    pub l: [f32; 16],
    pub alpha: [f32; 16],
}

impl RowState {
    pub fn new() -> Self {
        RowState {
            m: [f32::NEG_INFINITY; 16],
            l: [0.0; 16],
            alpha: [1.0; 16],
        }
    }
}

/// One key block: `s` is `rows × 32` raw scores (row stride 32), `p` receives `rows × 32` bf16.
///
/// # Safety
/// AVX512-F and AVX512-BF16 are available; `s` and `p` hold `rows · 32` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(crate) unsafe fn online_block(
    s: &[f32],
    rows: usize,
    valid: &[usize; 16],
    scale: f32,
    st: &mut RowState,
    p: &mut [bf16],
) {
    let sc = _mm512_set1_ps(scale);
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    for r in 0..rows {
        let vmask = |h: usize| -> __mmask16 {
            let n = valid[r].saturating_sub(16 * h).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        let (k0, k1) = (vmask(0), vmask(1));
        let s0 = _mm512_mask_mul_ps(ninf, k0, _mm512_loadu_ps(s.as_ptr().add(r * KEY_BLOCK)), sc);
        let s1 = _mm512_mask_mul_ps(
            ninf,
            k1,
            _mm512_loadu_ps(s.as_ptr().add(r * KEY_BLOCK + 16)),
            sc,
        );
        let bmax = _mm512_reduce_max_ps(_mm512_max_ps(s0, s1));
        let m_new = st.m[r].max(bmax);
        if m_new == f32::NEG_INFINITY {
            // Nothing visible yet in this row: keep the state, add nothing.
            st.alpha[r] = 1.0;
            _mm512_storeu_si512(
                p.as_mut_ptr().add(r * KEY_BLOCK) as *mut _,
                _mm512_setzero_si512(),
            );
            continue;
        }
        let alpha = (st.m[r] - m_new).exp();
        let mv = _mm512_set1_ps(m_new);
        let p0 = _mm512_maskz_mov_ps(k0, exp512(_mm512_sub_ps(s0, mv)));
        let p1 = _mm512_maskz_mov_ps(k1, exp512(_mm512_sub_ps(s1, mv)));
        st.l[r] = st.l[r] * alpha + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
        st.m[r] = m_new;
        st.alpha[r] = alpha;
        let pb: __m512bh = _mm512_cvtne2ps_pbh(p1, p0);
        _mm512_storeu_si512(
            p.as_mut_ptr().add(r * KEY_BLOCK) as *mut _,
            std::mem::transmute::<__m512bh, __m512i>(pb),
        );
    }
}

/// `o[r] *= alpha[r]` for `rows` rows of `d` f32.
///
/// # Safety
/// AVX-512F is available; `o` holds `rows · d` elements, `d` a multiple of 16.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn rescale_rows(o: &mut [f32], rows: usize, d: usize, alpha: &[f32; 16]) {
    for r in 0..rows {
        if alpha[r] == 1.0 {
            continue;
        }
        let a = _mm512_set1_ps(alpha[r]);
        for j in (0..d).step_by(16) {
            let ptr = o.as_mut_ptr().add(r * d + j);
            _mm512_storeu_ps(ptr, _mm512_mul_ps(_mm512_loadu_ps(ptr), a));
        }
    }
}

/// `o[r] /= l[r]`.
pub(crate) fn normalize_rows(o: &mut [f32], rows: usize, d: usize, st: &RowState) {
    for (r, row) in o.chunks_exact_mut(d).take(rows).enumerate() {
        let inv = 1.0 / st.l[r];
        row.iter_mut().for_each(|x| *x *= inv);
    }
}
