//! The online softmax of the AMX kernel on AVX-512, for a sub-block of 32 rows and one key block
//! of `nk` (a multiple of 32) keys: scores in, bf16 probabilities and per-row rescale factors
//! out, with the per-row reductions done 16 rows at a time in vectors.
//!
//! Units: the running maximum `m` is kept in `log2` units of the scaled score (`c = scale ·
//! log2 e`), so `p = 2^(s·c − m)` is one FMA and [`exp2`]. Per row:
//!
//! - `b = max_j s_j·c` over the visible keys of the block; the 16 rows' maxima come out of one
//!   transposing reduction ([`reduce16`]) as one vector.
//! - `m` moves only when `b > m + TAU` (`TAU = 8`): then `α = 2^(m − b)` and `m = b`, else
//!   `α = 1` and the block's `p` may reach `2^TAU` (exact in f32, same relative rounding in
//!   bf16). The output rows are rescaled only when some `α ≠ 1`, which after the first blocks is
//!   rare.
//! - `l = l·α + Σ p` (the unrounded `p`), the 16 row sums again from one transposing reduction.

use std::arch::x86_64::*;

use half::bf16;

use crate::simd::lanes;

/// Starting running maximum: finite, so that `α = 2^(M_INIT − b)` is 0, not NaN.
pub(crate) const M_INIT: f32 = -1e30;
/// How far (log2 units) a row's block maximum may exceed its running maximum before the row is
/// rescaled.
const TAU: f32 = 8.0;

/// `2^x` on 16 lanes: `2^n · 2^f`, `n = round(x)`, `2^f` on `|f| ≤ 1/2` by its degree-4 Taylor
/// polynomial (relative error below 1e-4, far below the 2⁻⁹ of the bf16 that `p` is rounded
/// to); `x < −126` gives at most `2^-126`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp2(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-126.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm512_sub_ps(x, n);
    const L: f32 = std::f32::consts::LN_2;
    const C: [f32; 5] = [1.0, L, L * L / 2.0, L * L * L / 6.0, L * L * L * L / 24.0];
    let mut p = _mm512_set1_ps(C[4]);
    for &k in C[..4].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(k));
    }
    _mm512_scalef_ps(p, n)
}

/// Source lanes of step `k` of [`reduce16`] (`hi`: the second half of each row's partials).
const fn reduce_idx(k: u32, hi: bool) -> [i32; 16] {
    let (rows, parts) = (1usize << k, 16usize >> k);
    let half = parts / 2;
    let mut idx = [0i32; 16];
    let mut lane = 0;
    while lane < 16 {
        let (r, p) = (lane / half, lane % half);
        let src = if r < rows {
            r * parts + p
        } else {
            16 + (r - rows) * parts + p
        };
        idx[lane] = (src + if hi { half } else { 0 }) as i32;
        lane += 1;
    }
    idx
}

const IDX: [[[i32; 16]; 2]; 4] = [
    [reduce_idx(0, false), reduce_idx(0, true)],
    [reduce_idx(1, false), reduce_idx(1, true)],
    [reduce_idx(2, false), reduce_idx(2, true)],
    [reduce_idx(3, false), reduce_idx(3, true)],
];

/// Lane `i` of the result is `op` over the 16 lanes of `v[i]`: four halving steps, each
/// pairing vectors so that one vector holds twice the rows with half the partials (15 pairs of
/// two-source permutes instead of 16 horizontal reductions).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn reduce16(mut v: [__m512; 16], op: impl Fn(__m512, __m512) -> __m512) -> __m512 {
    let mut n = 16;
    for idx in &IDX {
        let lo = _mm512_loadu_si512(idx[0].as_ptr() as *const _);
        let hi = _mm512_loadu_si512(idx[1].as_ptr() as *const _);
        for i in 0..n / 2 {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            v[i] = op(
                _mm512_permutex2var_ps(a, lo, b),
                _mm512_permutex2var_ps(a, hi, b),
            );
        }
        n /= 2;
    }
    v[0]
}

/// One key block of one sub-block: `s` holds 32 rows × `nk` raw scores (row stride `nk`), row
/// `r` seeing keys `k0 .. vis[r]` of the block (all `nk` when `FULL`: no masks); writes 32 × `nk` bf16
/// probabilities to `p` (0 where masked), updates `m`, `l`, writes `alpha`. Returns whether some
/// `alpha` is not 1.
///
/// # Safety
/// AVX512-F/BW/VL and AVX512-BF16 are available; `s` and `p` hold `32 · nk` elements; `nk` is
/// a multiple of 32.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(crate) unsafe fn softmax_sub<const FULL: bool>(
    s: *const f32,
    nk: usize,
    vis: &[usize],
    k0: usize,
    c: f32,
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32; 32],
    p: *mut bf16,
) -> bool {
    let cv = _mm512_set1_ps(c);
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let valid = |r: usize| {
        if FULL {
            nk
        } else {
            vis[r].saturating_sub(k0).min(nk)
        }
    };
    let mut any = false;
    for h in 0..2 {
        let mut mx = [ninf; 16];
        for (i, acc) in mx.iter_mut().enumerate() {
            let r = h * 16 + i;
            let (row, n) = (s.add(r * nk), valid(r));
            for j in (0..nk).step_by(16) {
                let x = _mm512_loadu_ps(row.add(j));
                let x = if FULL {
                    _mm512_mul_ps(x, cv)
                } else {
                    _mm512_mask_mul_ps(ninf, lanes(n.saturating_sub(j)), x, cv)
                };
                *acc = _mm512_max_ps(*acc, x);
            }
        }
        let b = reduce16(mx, |x, y| _mm512_max_ps(x, y));
        let mo = _mm512_loadu_ps(m.as_ptr().add(h * 16));
        let upd = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(b, _mm512_add_ps(mo, _mm512_set1_ps(TAU)));
        let mn = _mm512_mask_mov_ps(mo, upd, b);
        let a = _mm512_mask_mov_ps(_mm512_set1_ps(1.0), upd, exp2(_mm512_sub_ps(mo, mn)));
        _mm512_storeu_ps(m.as_mut_ptr().add(h * 16), mn);
        _mm512_storeu_ps(alpha.as_mut_ptr().add(h * 16), a);
        any |= upd != 0;
        let mut sums = [_mm512_setzero_ps(); 16];
        for (i, acc) in sums.iter_mut().enumerate() {
            let r = h * 16 + i;
            let (row, n) = (s.add(r * nk), valid(r));
            let mr = _mm512_set1_ps(m[r]);
            for j in (0..nk).step_by(32) {
                let (k_a, k_b) = (lanes(n.saturating_sub(j)), lanes(n.saturating_sub(j + 16)));
                let xa = _mm512_fmsub_ps(_mm512_loadu_ps(row.add(j)), cv, mr);
                let xb = _mm512_fmsub_ps(_mm512_loadu_ps(row.add(j + 16)), cv, mr);
                let (mut pa, mut pb) = (exp2(xa), exp2(xb));
                if !FULL {
                    pa = _mm512_maskz_mov_ps(k_a, pa);
                    pb = _mm512_maskz_mov_ps(k_b, pb);
                }
                *acc = _mm512_add_ps(*acc, _mm512_add_ps(pa, pb));
                let pp: __m512bh = _mm512_cvtne2ps_pbh(pb, pa);
                _mm512_storeu_si512(
                    p.add(r * nk + j) as *mut _,
                    std::mem::transmute::<__m512bh, __m512i>(pp),
                );
            }
        }
        let sv = reduce16(sums, |x, y| _mm512_add_ps(x, y));
        let lp = l.as_mut_ptr().add(h * 16);
        _mm512_storeu_ps(lp, _mm512_fmadd_ps(_mm512_loadu_ps(lp), a, sv));
    }
    any
}

/// `o[r] *= alpha[r]` for the 32 rows of `d` f32 at `o` (rows with `alpha` 1 untouched).
///
/// # Safety
/// AVX-512F is available; `o` holds `32 · d` f32, `d` a multiple of 16.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn rescale_rows(o: *mut f32, d: usize, alpha: &[f32; 32]) {
    for (r, &a) in alpha.iter().enumerate() {
        if a == 1.0 {
            continue;
        }
        let a = _mm512_set1_ps(a);
        for j in (0..d).step_by(16) {
            let ptr = o.add(r * d + j);
            _mm512_storeu_ps(ptr, _mm512_mul_ps(_mm512_loadu_ps(ptr), a));
        }
    }
}

/// `out[r] = acc[r] / l[r]` for `rows` rows of `d`.
///
/// # Safety
/// `acc` holds `rows · d` f32; `out` and `l` at least `rows · d` and `rows`.
pub(crate) unsafe fn normalize_rows(
    acc: *const f32,
    out: &mut [f32],
    rows: usize,
    d: usize,
    l: &[f32],
) {
    let acc = std::slice::from_raw_parts(acc, rows * d);
    for ((orow, arow), &lr) in out
        .chunks_exact_mut(d)
        .zip(acc.chunks_exact(d))
        .zip(&l[..rows])
    {
        let inv = 1.0 / lr;
        for (x, &y) in orow.iter_mut().zip(arow) {
            *x = y * inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_avx512() -> bool {
        platform::testing::tier_or_skip(platform::CpuTier::Avx512)
    }

    #[test]
    fn reduce16_gives_each_vectors_maximum_and_sum() {
        if !has_avx512() {
            return;
        }
        let vals: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32) - 50.0).collect();
        unsafe {
            let v: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(vals[i * 16..].as_ptr()));
            let (mut mx, mut sm) = ([0f32; 16], [0f32; 16]);
            _mm512_storeu_ps(mx.as_mut_ptr(), reduce16(v, |x, y| _mm512_max_ps(x, y)));
            _mm512_storeu_ps(sm.as_mut_ptr(), reduce16(v, |x, y| _mm512_add_ps(x, y)));
            for i in 0..16 {
                let row = &vals[i * 16..(i + 1) * 16];
                assert_eq!(
                    mx[i],
                    row.iter().cloned().fold(f32::MIN, f32::max),
                    "row {i}"
                );
                assert_eq!(sm[i], row.iter().sum::<f32>(), "row {i}");
            }
        }
    }

    #[test]
    fn exp2_is_within_its_bound() {
        if !has_avx512() {
            return;
        }
        for i in -2000..=1000 {
            let x = i as f32 * 0.01 + 0.003;
            let mut y = [0f32; 16];
            unsafe { _mm512_storeu_ps(y.as_mut_ptr(), exp2(_mm512_set1_ps(x))) };
            let want = (x as f64).exp2();
            assert!(
                ((y[0] as f64 - want) / want).abs() < 1e-4,
                "2^{x}: {} vs {want}",
                y[0]
            );
        }
        let mut y = [1f32; 16];
        unsafe { _mm512_storeu_ps(y.as_mut_ptr(), exp2(_mm512_set1_ps(f32::NEG_INFINITY))) };
        assert!(y[0] <= 2f32.powi(-126));
    }
}
