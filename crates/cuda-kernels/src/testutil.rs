//! Test helpers: seeded random inputs (seed from entropy, printed on failure), poisoned
//! outputs, and closeness checks with named tolerances.

use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A fresh generator and its seed (print the seed in every assertion message).
pub fn rng() -> (StdRng, u64) {
    let seed: u64 = rand::random();
    (StdRng::seed_from_u64(seed), seed)
}

pub fn rand_bf16(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.gen_range(lo..hi)))
        .collect()
}

pub fn rand_f32(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

/// bf16 NaN: what device outputs are filled with before a kernel runs, so that an element the
/// kernel forgets to write fails the comparison.
pub const POISON: bf16 = bf16::NAN;

pub fn poisoned(n: usize) -> Vec<bf16> {
    vec![POISON; n]
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise (NaN in `got` always fails).
pub fn assert_close(what: &str, seed: u64, got: &[bf16], want: &[bf16], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths (seed {seed})");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        let err = (g - w).abs();
        let ok = err <= atol + rtol * w.abs();
        assert!(ok, "{what}: element {i}: got {g}, want {w} (|diff| {err}; atol {atol}, rtol {rtol}; seed {seed})");
    }
}

pub fn assert_close_f32(what: &str, seed: u64, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths (seed {seed})");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g}, want {w} (seed {seed})"
        );
    }
}

/// One bf16 rounding step relative to the value: bf16 keeps 8 significant bits, so one step is
/// at most 2^-7 of the value. Two computations that agree to a few f32 ulps can still round to
/// neighbouring bf16 values when they straddle a rounding boundary.
pub const BF16_ULP: f32 = 1.0 / 128.0;

/// The check for cuBLASLt's `y = x·wᵀ + bias` and `y += x·wᵀ (+ bias)` (beta = 1) into a bf16
/// `y`: it was seen to round more than once on the way (the product to bf16 before adding the
/// old y; with a bias, the product alone and again with its bias, so a bias that cancels a
/// large product leaves the product's rounding in a small result: 14 steps at |y| = 0.018,
/// k 8, accumulating; 0.0029 at |y| = 0.11, k 4100, bias alone). Allowed: one bf16
/// step of each intermediate it may round (`rounded[i]`: |x·w| and |x·w + bias|), two of the
/// result's, over an absolute floor `atol`.
pub fn assert_accumulated(
    what: &str,
    seed: u64,
    got: &[bf16],
    want: &[bf16],
    rounded: &[f32],
    atol: f32,
) {
    assert_eq!(got.len(), want.len(), "{what}: lengths (seed {seed})");
    assert_eq!(rounded.len(), want.len(), "{what}: lengths (seed {seed})");
    for (i, ((g, w), r)) in got.iter().zip(want).zip(rounded).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        let tol = atol + BF16_ULP * (2.0 * w.abs() + r);
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (rounded intermediates {r}, tol {tol}; seed {seed})"
        );
    }
}

/// `rounded` for [`assert_accumulated`]: |x·w| + |x·w with `epilogue`|, per output.
pub fn lt_intermediates(
    m: usize,
    n: usize,
    k: usize,
    x: &[bf16],
    w: &[bf16],
    epilogue: crate::gemm::EpilogueRef<'_>,
) -> Vec<f32> {
    use crate::gemm::{linear_bf16_ref, EpilogueRef};
    let (mut plain, mut with) = (vec![bf16::ZERO; m * n], vec![bf16::ZERO; m * n]);
    linear_bf16_ref(m, n, k, x, w, EpilogueRef::None, false, &mut plain).unwrap();
    linear_bf16_ref(m, n, k, x, w, epilogue, false, &mut with).unwrap();
    plain
        .iter()
        .zip(&with)
        .map(|(a, b)| a.to_f32().abs() + b.to_f32().abs())
        .collect()
}
