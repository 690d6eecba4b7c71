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
