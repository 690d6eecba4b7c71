//! Every attention tier against the f64 reference on fresh random inputs: packed sequences of
//! different lengths, GQA ratios 1, 4 and 6, head_dim 64 and 128, chunked prefill (more keys
//! than queries), decode; outputs poisoned with NaN first. The AMX kernel also runs under the
//! tile emulator ([`Emu`]) with every blocking it takes, on any machine with AVX512-BF16.

use half::bf16;
use platform::CpuTier;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::tile_ops::{Emu, Hw};

/// The AMX and AVX512-BF16 tiers round the probabilities P to bf16 before P·V (relative error
/// ≤ 2⁻⁹ each; the normalizer uses the unrounded values), which moves an output by at most
/// 2⁻⁹·max|V|; twice that for margin. |V| ≤ 1 here.
const P_BF16_TOL: f64 = 1.0 / 256.0;
/// f32 tiers: scores of ≤ 128 products and softmax sums of a few hundred terms in f32.
const F32_TOL: f64 = 2e-5;
/// bf16 output: half an ulp of the value, relative.
const BF16_HALF_ULP: f64 = 1.0 / 256.0;

fn random_bf16(rng: &mut impl Rng, n: usize, amp: f32) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.gen_range(-amp..amp)))
        .collect()
}

fn cu(lens: &[usize]) -> Vec<usize> {
    std::iter::once(0)
        .chain(lens.iter().scan(0, |s, &l| {
            *s += l;
            Some(*s)
        }))
        .collect()
}

/// What computes the attention under test.
#[derive(Clone, Copy, Debug)]
enum Runner {
    /// The public entries on a tier.
    Tier(CpuTier),
    /// The AMX item kernel with this blocking (prefill only), on the tile emulator or (`hw`)
    /// on AMX.
    Amx { hw: bool, tuning: Tuning },
}

/// Runs prefill (or decode when `q_lens` is None) with `runner` and checks it.
fn check<O: OutElem>(
    runner: Runner,
    shape: AttnShape,
    q_lens: Option<&[usize]>,
    k_lens: &[usize],
    seed: u64,
) {
    check_ramp::<O>(runner, shape, q_lens, k_lens, seed, 0.0)
}

/// [`check`] with key token `j` (of all sequences) scaled by `1 + ramp·j`, so that the scores
/// grow along the keys and the running maxima keep moving.
fn check_ramp<O: OutElem>(
    runner: Runner,
    shape: AttnShape,
    q_lens: Option<&[usize]>,
    k_lens: &[usize],
    seed: u64,
    ramp: f32,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let AttnShape {
        num_heads: h,
        num_kv_heads: hk,
        head_dim: d,
    } = shape;
    let cu_k = cu(k_lens);
    let total_q = q_lens.map_or(k_lens.len(), |l| l.iter().sum());
    // Queries up to ±2 with scale 2/sqrt(D) spread the scores over several units, so that the
    // running maximum changes between key blocks and the rescaling is exercised.
    let q = random_bf16(&mut rng, total_q * h * d, 2.0);
    let mut k = random_bf16(&mut rng, cu_k[k_lens.len()] * hk * d, 1.0);
    for (j, row) in k.chunks_exact_mut(hk * d).enumerate() {
        row.iter_mut()
            .for_each(|x| *x = bf16::from_f32(x.to_f32() * (1.0 + ramp * j as f32)));
    }
    let v = random_bf16(&mut rng, cu_k[k_lens.len()] * hk * d, 1.0);
    let scale = 2.0 / (d as f32).sqrt();
    let mut out = vec![O::from_f32(f32::NAN); total_q * h * d];
    let mut want = vec![f32::NAN; total_q * h * d];
    match q_lens {
        Some(ql) => {
            let cu_q = cu(ql);
            match runner {
                Runner::Tier(tier) => attention_prefill_bf16_on(
                    tier, &q, &k, &v, &cu_q, &cu_k, shape, scale, &mut out,
                ),
                Runner::Amx { hw, tuning } => attention_prefill_with(
                    if hw {
                        amx_bf16::attention_item_amx_bf16::<Hw>
                    } else {
                        amx_bf16::attention_item_amx_bf16::<Emu>
                    },
                    tuning,
                    &q,
                    &k,
                    &v,
                    &cu_q,
                    &cu_k,
                    shape,
                    scale,
                    &mut out,
                ),
            }
            .unwrap();
            attention_prefill_bf16_ref(&q, &k, &v, &cu_q, &cu_k, shape, scale, &mut want).unwrap();
        }
        None => {
            let Runner::Tier(tier) = runner else {
                unreachable!("decode runs on a tier")
            };
            attention_decode_bf16_on(tier, &q, &k, &v, &cu_k, shape, scale, &mut out).unwrap();
            attention_decode_bf16_ref(&q, &k, &v, &cu_k, shape, scale, &mut want).unwrap();
        }
    }
    let tol = if matches!(
        runner,
        Runner::Tier(CpuTier::Amx | CpuTier::Avx512Bf16) | Runner::Amx { .. }
    ) {
        P_BF16_TOL
    } else {
        F32_TOL
    };
    let out_bf16 = std::mem::size_of::<O>() == 2;
    for (i, (g, w)) in out.iter().zip(&want).enumerate() {
        let (g, w) = (g.to_f32() as f64, *w as f64);
        let t = tol
            + if out_bf16 {
                BF16_HALF_ULP * w.abs()
            } else {
                0.0
            };
        assert!(
            (g - w).abs() <= t,
            "{runner:?} {shape:?} q_lens {q_lens:?} k_lens {k_lens:?}: out[{i}] (token {}, head {}, dim {}) = {g}, reference {w} (seed {seed})",
            i / (h * d),
            (i / d) % h,
            i % d
        );
    }
}

const fn sh(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> AttnShape {
    AttnShape {
        num_heads,
        num_kv_heads,
        head_dim,
    }
}

const SHAPES: [AttnShape; 3] = [sh(4, 4, 64), sh(8, 2, 128), sh(6, 1, 64)];

fn check_tier(tier: CpuTier) {
    if !platform::testing::tier_or_skip(tier) {
        return;
    }
    for shape in SHAPES {
        let seed: u64 = rand::random();
        // Prefill: lengths around the key block (32) and row block (16) edges, one long one.
        let lens = [1, 17, 40, 5, 130];
        let run = Runner::Tier(tier);
        check::<f32>(run, shape, Some(&lens), &lens, seed);
        check::<bf16>(run, shape, Some(&lens[..3]), &lens[..3], seed);
        // Chunked prefill: the queries are the last tokens of longer sequences.
        check::<f32>(run, shape, Some(&[3, 20]), &[50, 33], seed);
        // Decode: one query per sequence.
        check::<f32>(run, shape, None, &[1, 33, 100], seed);
    }
}

#[test]
fn amx_attention_matches_reference() {
    check_tier(CpuTier::Amx);
}

/// The AMX kernel with explicit blockings: GQA 1, 4 and 8, head_dim 64 and 128, every key
/// block size and row counts from one sub-block to items larger than a sequence; packed
/// sequences of lengths off the block edges, chunked prefill, scores that grow along the keys.
fn check_amx_blockings(hw: bool) {
    let shapes = [sh(2, 2, 64), sh(8, 2, 128), sh(8, 1, 64), sh(8, 1, 128)];
    let tunings = [(32, 32), (64, 64), (128, 96), (96, 128), (512, 64)];
    for (i, shape) in shapes.into_iter().enumerate() {
        for (j, &(rows, keys)) in tunings.iter().enumerate() {
            // Not every pair under the emulator: enough that each shape meets several.
            if !hw && (i + j) % 2 == 1 && rows != 64 {
                continue;
            }
            let seed: u64 = rand::random();
            let tuning = Tuning {
                rows,
                keys,
                prefetch: j % 2 == 0,
            };
            let run = Runner::Amx { hw, tuning };
            let lens = [1, 17, 100, 5, 130];
            check::<f32>(run, shape, Some(&lens), &lens, seed);
            check::<bf16>(run, shape, Some(&[33, 2]), &[33, 2], seed);
            check::<f32>(run, shape, Some(&[3, 20, 1]), &[50, 33, 70], seed);
            check::<f32>(run, shape, Some(&[100]), &[170], seed);
            // Scores growing along the keys: rows rescaled in most key blocks.
            check_ramp::<f32>(run, shape, Some(&[150, 7]), &[150, 7], seed, 0.1);
        }
    }
}

#[test]
fn amx_kernel_on_emulated_tiles_matches_reference() {
    // The softmax between the tile products runs natively.
    if !platform::testing::tier_or_skip(CpuTier::Avx512Bf16) {
        return;
    }
    check_amx_blockings(false);
}

#[test]
fn amx_kernel_blockings_match_reference() {
    if !platform::testing::amx_or_skip() {
        return;
    }
    check_amx_blockings(true);
}

#[test]
fn avx512bf16_attention_matches_reference() {
    check_tier(CpuTier::Avx512Bf16);
}

#[test]
fn avx512_attention_matches_reference() {
    check_tier(CpuTier::Avx512);
}

#[test]
fn scalar_attention_matches_reference() {
    check_tier(CpuTier::Scalar);
}

#[test]
fn bad_attention_arguments_are_errors() {
    let shape = sh(4, 2, 64);
    let (q, k, v) = (
        vec![bf16::ONE; 3 * 4 * 64],
        vec![bf16::ONE; 3 * 2 * 64],
        vec![bf16::ONE; 3 * 2 * 64],
    );
    let mut out = vec![0f32; 3 * 4 * 64];
    let e = |r: Result<()>| r.unwrap_err().to_string();
    let run = |q: &[bf16], cu_q: &[usize], cu_k: &[usize], shape: AttnShape, out: &mut [f32]| {
        attention_prefill_bf16(q, &k, &v, cu_q, cu_k, shape, 0.125, out)
    };
    assert!(e(run(
        &q,
        &[0, 3],
        &[0, 3],
        AttnShape {
            num_kv_heads: 3,
            ..shape
        },
        &mut out
    ))
    .contains("multiple"));
    assert!(e(run(
        &q,
        &[0, 3],
        &[0, 3],
        AttnShape {
            head_dim: 48,
            ..shape
        },
        &mut out
    ))
    .contains("head_dim"));
    assert!(e(run(&q[1..], &[0, 3], &[0, 3], shape, &mut out)).contains("q[total_q"));
    assert!(e(run(&q, &[0, 3], &[0, 3], shape, &mut out[1..])).contains("out[total_q"));
    assert!(e(run(&q, &[0, 3], &[0, 2], shape, &mut out)).contains("at least as many keys"));
    assert!(e(run(&q, &[0, 2, 1], &[0, 2, 3], shape, &mut out)).contains("never decrease"));
    assert!(e(run(&q, &[0, 3], &[0, 1, 3], shape, &mut out)).contains("entries"));
    assert!(e(attention_decode_bf16(
        &q[..4 * 64],
        &k,
        &v,
        &[0, 3],
        shape,
        0.1,
        &mut out
    ))
    .contains("out[total_q"));
}
