//! CPU paged decode attention in ISPC (NEO's CPU half) and the small kernel that proves the
//! chain. The KV cache it reads (block pools, sequences, block tables) belongs to the engine
//! (`engine::kv`), which shares one block allocator between host and GPU pools. The ISPC objects are compiled for avx2 and avx512
//! targets with ISPC's own runtime dispatch; this crate wraps each export in a checked, safe
//! function with a Rust twin.

use half::bf16;

pub mod paged_decode;

pub use paged_decode::{
    paged_decode_bf16, paged_decode_bf16_ref, DecodeBatch, DecodeShape, BLOCK_SIZE,
};

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    clippy::all
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/ispc_sys.rs"));
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{what}: expected {expected} elements, got {got}")]
    Len {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn bits(x: &[bf16]) -> *const u16 {
    x.as_ptr() as *const u16
}

/// `Σ a[i]·b[i]` with f32 accumulation, in ISPC.
pub fn dot_bf16(a: &[bf16], b: &[bf16]) -> Result<f32> {
    if a.len() != b.len() {
        return Err(Error::Len {
            what: "dot_bf16: b",
            expected: a.len(),
            got: b.len(),
        });
    }
    // SAFETY: both slices hold a.len() bf16 values (u16-sized, same layout) and ISPC reads
    // exactly n elements of each.
    Ok(unsafe { sys::ispc_dot_bf16(bits(a), bits(b), a.len() as i64) })
}

/// Reference twin of [`dot_bf16`], accumulated in f64.
pub fn dot_bf16_ref(a: &[bf16], b: &[bf16]) -> Result<f32> {
    if a.len() != b.len() {
        return Err(Error::Len {
            what: "dot_bf16_ref: b",
            expected: a.len(),
            got: b.len(),
        });
    }
    Ok(a.iter()
        .zip(b)
        .map(|(x, y)| x.to_f64() * y.to_f64())
        .sum::<f64>() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// f32 accumulation of n products in lanes, against f64: relative error grows like
    /// n·eps_f32 in the worst case; |a|,|b| < 1 and n ≤ 10k keep it under 1e-3 of Σ|a·b|.
    const TOL_REL: f64 = 1e-4;

    #[test]
    fn ispc_dot_matches_reference() {
        let mut rng = rand::rngs::StdRng::from_entropy();
        for n in [0usize, 1, 7, 16, 17, 1000, 10_001] {
            let a: Vec<bf16> = (0..n)
                .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
                .collect();
            let b: Vec<bf16> = (0..n)
                .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
                .collect();
            let got = dot_bf16(&a, &b).unwrap() as f64;
            let want = dot_bf16_ref(&a, &b).unwrap() as f64;
            let scale: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x.to_f64() * y.to_f64()).abs())
                .sum::<f64>()
                .max(1e-30);
            assert!(
                (got - want).abs() / scale <= TOL_REL,
                "n={n}: ispc {got} vs reference {want}"
            );
        }
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let a = vec![bf16::ONE; 4];
        assert!(dot_bf16(&a, &a[..3]).is_err());
    }
}
