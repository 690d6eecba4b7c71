//! The ISPC path against the scalar twin on fresh random data. Slots that a correct kernel must
//! not read (past the context, the new token's slot before the append, blocks outside the
//! tables) hold NaN, and outputs start as NaN, so a stray read or a missed write fails.

use super::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Outputs are bf16: the kernel (f32) and the twin (f64) each round once, and results that sit
/// on either side of a rounding boundary differ by one bf16 ulp, at most 2⁻⁷ of the value.
const TOL_REL: f32 = 1.0 / 128.0;
/// f32 sums of up to 10⁵ unit-scale terms (Σp·v with Σp = 1): rounding error grows like
/// √n·2⁻²⁴ ≈ 2e-5; ten times that.
const TOL_ABS: f32 = 2e-4;

/// The AMX tier with PV on tiles rounds each softmax weight to bf16 for the products (at most
/// 2⁻⁸ of it), so its output may move by up to 2⁻⁸ of Σ p·|v| / Σ p ≤ 2⁻⁸ · max |v|; V here
/// lies in (-1, 1).
const TOL_PV_WEIGHTS: f32 = 1.0 / 256.0;

const NAN: bf16 = bf16::NAN;

fn rng() -> (StdRng, u64) {
    let seed: u64 = rand::random();
    (StdRng::seed_from_u64(seed), seed)
}

fn fill(rng: &mut StdRng, n: usize, amp: f32) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.gen_range(-amp..amp)))
        .collect()
}

/// A cache, tables and inputs for `lens`, block ids shuffled over a cache with spare blocks.
struct Case {
    shape: DecodeShape,
    k: Vec<bf16>,
    v: Vec<bf16>,
    q: Vec<bf16>,
    new_k: Vec<bf16>,
    new_v: Vec<bf16>,
    tables: Vec<i32>,
    max_blocks: usize,
    lens: Vec<i32>,
}

impl Case {
    fn new(rng: &mut StdRng, shape: DecodeShape, lens: &[usize], q_amp: f32) -> Case {
        let (kvh, d) = (shape.num_kv_heads, shape.head_dim);
        let nbs: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).collect();
        let max_blocks = nbs.iter().copied().max().unwrap_or(1) + 1;
        let num_blocks = nbs.iter().sum::<usize>() + 3;
        let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
        ids.shuffle(rng);
        let block = kvh * BLOCK_SIZE * d;
        let mut k = vec![NAN; num_blocks * block];
        let mut v = vec![NAN; num_blocks * block];
        // Unused table entries point outside the cache: reading one would be caught by bounds.
        let mut tables = vec![i32::MAX; lens.len() * max_blocks];
        let mut next = 0;
        for (i, &len) in lens.iter().enumerate() {
            for pos in 0..nbs[i] {
                let id = ids[next];
                next += 1;
                tables[i * max_blocks + pos] = id;
                for kv in 0..kvh {
                    for slot in 0..BLOCK_SIZE {
                        // Tokens before the new one hold data; the new one's slot and later stay NaN.
                        if pos * BLOCK_SIZE + slot + 1 < len {
                            let r = ((id as usize * kvh + kv) * BLOCK_SIZE + slot) * d;
                            for j in 0..d {
                                k[r + j] = bf16::from_f32(rng.gen_range(-1.0..1.0));
                                v[r + j] = bf16::from_f32(rng.gen_range(-1.0..1.0));
                            }
                        }
                    }
                }
            }
        }
        let b = lens.len();
        Case {
            shape,
            k,
            v,
            q: fill(rng, b * shape.num_q_heads * d, q_amp),
            new_k: fill(rng, b * kvh * d, 1.0),
            new_v: fill(rng, b * kvh * d, 1.0),
            tables,
            max_blocks,
            lens: lens.iter().map(|&l| l as i32).collect(),
        }
    }

    fn batch(&self) -> DecodeBatch<'_> {
        DecodeBatch {
            q: &self.q,
            new_k: &self.new_k,
            new_v: &self.new_v,
            block_tables: &self.tables,
            max_blocks: self.max_blocks,
            context_lens: &self.lens,
        }
    }

    /// Runs every ISPC build this CPU can run (`seg_blocks` forced, or chosen), with one KV
    /// head per call and with as many as fit, and the twin on copies of the cache; compares
    /// outputs within tolerance and caches bit for bit.
    fn check(&self, seg_blocks: Option<usize>, seed: u64) {
        for heads in [Some(1), None] {
            self.check_heads(seg_blocks, heads, seed);
        }
    }

    fn check_heads(&self, seg_blocks: Option<usize>, heads: Option<usize>, seed: u64) {
        let n_out = self.q.len();
        let (mut k2, mut v2, mut o2) = (self.k.clone(), self.v.clone(), vec![NAN; n_out]);
        paged_decode_bf16_ref(&self.shape, &self.batch(), &mut k2, &mut v2, &mut o2).unwrap();
        let bits = |x: &[bf16]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let d = self.shape.head_dim;
        for path in paths() {
            let (mut k1, mut v1, mut o1) = (self.k.clone(), self.v.clone(), vec![NAN; n_out]);
            paged_decode_bf16_with(
                &self.shape,
                &self.batch(),
                &mut k1,
                &mut v1,
                &mut o1,
                seg_blocks,
                heads,
                path,
            )
            .unwrap();
            let ctx = format!(
                "seed {seed}, {path:?}, {:?}, seg_blocks {seg_blocks:?}, heads per call {heads:?}, batch {}",
                self.shape,
                self.lens.len()
            );
            assert!(
                bits(&k1) == bits(&k2) && bits(&v1) == bits(&v2),
                "{ctx}: caches differ after the append"
            );
            let extra = match path {
                Path::AmxPv | Path::AmxPvEmu => TOL_PV_WEIGHTS,
                _ => 0.0,
            };
            for (i, (g, w)) in o1.iter().zip(&o2).enumerate() {
                let (g, w) = (g.to_f32(), w.to_f32());
                assert!(
                    (g - w).abs() <= TOL_REL * w.abs() + TOL_ABS + extra,
                    "{ctx}: out[{}][{}] = {g}, reference {w} (sequence length {})",
                    i / d,
                    i % d,
                    self.lens[i / d / self.shape.num_q_heads]
                );
            }
        }
    }
}

/// The ISPC builds to test here: the dispatched one (avx512 where the CPU has it), the
/// avx2-only one, and the AVX512-BF16 one where the CPU has `vdpbf16ps`.
fn paths() -> Vec<Path> {
    let mut p = Vec::new();
    if platform::testing::tier_or_skip(platform::CpuTier::Avx2) {
        p.push(Path::Ispc);
        p.push(Path::IspcAvx2);
    }
    if platform::testing::tier_or_skip(platform::CpuTier::Avx512Bf16) {
        p.push(Path::IspcDot);
    }
    // The AMX tier's code on the tile emulator needs AVX-512 for its softmax; on the hardware,
    // AMX (the GPU host's CPU).
    if platform::testing::tier_or_skip(platform::CpuTier::Avx512) {
        p.push(Path::AmxEmu);
        p.push(Path::AmxPvEmu);
        p.push(Path::AmxBurstEmu);
    }
    if platform::testing::amx_or_skip() {
        p.push(Path::Amx);
        p.push(Path::AmxPv);
        p.push(Path::AmxBurst);
    }
    p
}

#[test]
fn scalar_tier_runs_the_twin() {
    let (mut r, seed) = rng();
    let c = Case::new(&mut r, shape(8, 2, 64), &[1, 17, 40], 2.0);
    let (mut k1, mut v1, mut o1) = (c.k.clone(), c.v.clone(), vec![NAN; c.q.len()]);
    let (mut k2, mut v2, mut o2) = (c.k.clone(), c.v.clone(), vec![NAN; c.q.len()]);
    paged_decode_bf16_with(
        &c.shape,
        &c.batch(),
        &mut k1,
        &mut v1,
        &mut o1,
        None,
        None,
        Path::Scalar,
    )
    .unwrap();
    paged_decode_bf16_ref(&c.shape, &c.batch(), &mut k2, &mut v2, &mut o2).unwrap();
    let bits = |x: &[bf16]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&o1) == bits(&o2) && bits(&k1) == bits(&k2),
        "seed {seed}"
    );
}

fn shape(num_q_heads: usize, num_kv_heads: usize, head_dim: usize) -> DecodeShape {
    DecodeShape {
        num_q_heads,
        num_kv_heads,
        head_dim,
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

#[test]
fn single_token_sequences_return_the_new_value() {
    let (mut r, seed) = rng();
    for d in [64, 128] {
        let c = Case::new(&mut r, shape(8, 2, d), &[1, 1, 1], 2.0);
        c.check(None, seed);
        // With one token the softmax weight is exactly 1: the output is the new V, bit for bit.
        let (mut k, mut v, mut o) = (c.k.clone(), c.v.clone(), vec![NAN; c.q.len()]);
        paged_decode_bf16(&c.shape, &c.batch(), &mut k, &mut v, &mut o).unwrap();
        for i in 0..3 {
            for h in 0..8 {
                let want = &c.new_v[(i * 2 + h / 4) * d..][..d];
                let got = &o[(i * 8 + h) * d..][..d];
                assert!(
                    want.iter()
                        .zip(got)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "seed {seed}: seq {i} head {h}"
                );
            }
        }
    }
}

#[test]
fn ragged_lengths_match_reference() {
    let (mut r, seed) = rng();
    for d in [64, 128] {
        for (qh, kvh) in [(2, 2), (8, 2), (8, 1)] {
            let mut lens: Vec<usize> = (0..5).map(|_| r.gen_range(1..300)).collect();
            lens.extend([15, 16, 17, 33]);
            let c = Case::new(&mut r, shape(qh, kvh, d), &lens, 2.0);
            for s in [Some(1), Some(3), None] {
                c.check(s, seed);
            }
        }
    }
}

#[test]
fn long_sequence_is_split_across_threads() {
    let (mut r, seed) = rng();
    let len = 100_000 - 7;
    let sh = shape(4, 1, 128);
    let s = segment_blocks(&[len], 1, platform::pool_threads());
    let (segs, _) = plan(&[len], 1, 1, s);
    assert!(
        segs.len() > 1,
        "a {len}-token sequence should be cut into segments, got {}",
        segs.len()
    );
    Case::new(&mut r, sh, &[len, 40], 4.0).check(None, seed);
}

#[test]
fn other_head_dims_match_reference() {
    let (mut r, seed) = rng();
    // 32, 96 and 256: one chunk, a chunk count the PV passes do not divide, the largest.
    for d in [32, 96, 256] {
        for (qh, kvh) in [(4, 1), (6, 2), (8, 1)] {
            let c = Case::new(&mut r, shape(qh, kvh, d), &[1, 17, 70], 2.0);
            c.check(Some(2), seed);
            c.check(None, seed);
        }
    }
}

#[test]
fn several_kv_heads_per_call_with_cut_sequences() {
    let (mut r, seed) = rng();
    // 8 KV heads in calls of 3, 3 and 2, sequences cut into segments whose partial results
    // interleave by head; and all 8 heads in one call.
    let c = Case::new(&mut r, shape(32, 8, 128), &[1, 33, 200, 517], 2.0);
    for heads in [Some(3), Some(8)] {
        c.check_heads(Some(4), heads, seed);
    }
    let (segs, parts) = plan(&[200, 5], 8, 3, 4);
    assert_eq!(
        segs.iter().map(|s| s.nh).sum::<usize>(),
        8 * 4 + 8,
        "{segs:?}"
    );
    assert_eq!(
        parts,
        8 * 4,
        "one slot per (KV head, segment) of the cut sequence"
    );
}

#[test]
fn short_batches_keep_the_threads_busy() {
    // OPT-30B at batch 1 (56 KV heads of one query head, 272 tokens): calls of fewer heads, so
    // that all 16 threads get tasks; LLaMA-3-8B at 256 × 1k: all 8 KV heads per call.
    if std::env::var_os("TANDEM_CPU_DECODE_HEADS").is_some() {
        println!(
            "SKIP short_batches_keep_the_threads_busy: TANDEM_CPU_DECODE_HEADS fixes the heads"
        );
        return;
    }
    let (nh, seg) = split(&[272], &shape(56, 56, 128), 1, 16);
    let (segs, _) = plan(&[272], 56, nh, seg);
    assert!(
        segs.len() >= 16,
        "{} tasks for 16 threads (nh {nh})",
        segs.len()
    );
    let lens = vec![1024; 256];
    let (nh, seg) = split(&lens, &shape(32, 8, 128), 4, 16);
    assert_eq!(nh, 8, "a long batch keeps all KV heads per call");
    assert!(plan(&lens, 8, nh, seg).0.len() >= 16 * SEGMENTS_PER_THREAD);
}

#[test]
fn batch_of_512() {
    let (mut r, seed) = rng();
    let lens: Vec<usize> = (0..512).map(|_| r.gen_range(1..=80)).collect();
    Case::new(&mut r, shape(8, 2, 64), &lens, 2.0).check(None, seed);
}

#[test]
fn uneven_and_large_query_groups() {
    let (mut r, seed) = rng();
    // 7 heads per KV head (Qwen-like), and 20, more than one kernel pass takes.
    for (qh, kvh) in [(14, 2), (20, 1)] {
        let c = Case::new(&mut r, shape(qh, kvh, 64), &[1, 50, 129], 2.0);
        c.check(Some(2), seed);
        c.check(None, seed);
    }
}

#[test]
fn peaked_softmax_is_stable() {
    let (mut r, seed) = rng();
    // Scores of tens: exp without the running max would overflow f32.
    let sh = DecodeShape {
        scale: 4.0,
        ..shape(4, 2, 128)
    };
    Case::new(&mut r, sh, &[300, 1000, 7], 4.0).check(Some(5), seed);
}

#[test]
fn negative_scale_matches_reference() {
    // The running max must be taken over the scaled scores, not scaled afterwards.
    let (mut r, seed) = rng();
    let sh = DecodeShape {
        scale: -0.3,
        ..shape(8, 2, 128)
    };
    Case::new(&mut r, sh, &[1, 40, 300], 2.0).check(Some(3), seed);
}

#[test]
fn bad_inputs_are_errors() {
    let (mut r, _) = rng();
    let c = Case::new(&mut r, shape(4, 2, 64), &[20, 40], 1.0);
    let (mut k, mut v, mut o) = (c.k.clone(), c.v.clone(), vec![NAN; c.q.len()]);
    // Both paths refuse with the same message, which names what was wrong.
    let mut refuse = |sh: &DecodeShape,
                      b: &DecodeBatch,
                      kvo: Option<(&mut [bf16], &mut [bf16], &mut [bf16])>,
                      needle: &str| {
        let (k, v, o) = kvo.unwrap_or((&mut k, &mut v, &mut o));
        let e1 = paged_decode_bf16(sh, b, k, v, o).unwrap_err().to_string();
        let e2 = paged_decode_bf16_ref(sh, b, k, v, o)
            .unwrap_err()
            .to_string();
        assert_eq!(e1, e2);
        assert!(e1.contains(needle), "expected `{needle}` in: {e1}");
    };
    let b = c.batch();

    let mut t = c.tables.clone();
    t[1] = (c.k.len() / (2 * 16 * 64)) as i32;
    refuse(
        &c.shape,
        &DecodeBatch {
            block_tables: &t,
            ..b
        },
        None,
        "outside the cache",
    );
    t[1] = -1;
    refuse(
        &c.shape,
        &DecodeBatch {
            block_tables: &t,
            ..b
        },
        None,
        "block -1",
    );
    // Sequence 1 appends into a block that sequence 0 reads.
    let mut t = c.tables.clone();
    t[0] = t[c.max_blocks + 2];
    refuse(
        &c.shape,
        &DecodeBatch {
            block_tables: &t,
            ..b
        },
        None,
        "also read",
    );
    for l in [0, -3, (c.max_blocks * 16 + 1) as i32] {
        refuse(
            &c.shape,
            &DecodeBatch {
                context_lens: &[20, l],
                ..b
            },
            None,
            "context length",
        );
    }
    refuse(&c.shape, &DecodeBatch { q: &c.q[1..], ..b }, None, "q (");
    refuse(
        &c.shape,
        &DecodeBatch {
            new_v: &c.new_v[..5],
            ..b
        },
        None,
        "new_v",
    );
    refuse(
        &c.shape,
        &DecodeBatch {
            block_tables: &c.tables[1..],
            ..b
        },
        None,
        "block_tables",
    );
    let (mut k2, mut v2, mut o2) = (c.k.clone(), c.v.clone(), vec![NAN; c.q.len()]);
    refuse(
        &c.shape,
        &b,
        Some((&mut k2, &mut v2[1..], &mut o2)),
        "v_cache",
    );
    refuse(
        &c.shape,
        &b,
        Some((&mut k2[1..], &mut v2, &mut o2)),
        "k_cache",
    );
    refuse(&c.shape, &b, Some((&mut k2, &mut v2, &mut o2[2..])), "out");
    refuse(&shape(3, 2, 64), &b, None, "num_q_heads");
    refuse(&shape(4, 0, 64), &b, None, "num_q_heads");
    refuse(&shape(4, 2, 48), &b, None, "head_dim");
    refuse(&shape(4, 2, 512), &b, None, "head_dim");
    refuse(
        &DecodeShape {
            scale: f32::NAN,
            ..c.shape
        },
        &b,
        None,
        "scale",
    );
    // Nothing was appended by the refused calls.
    assert!(k.iter().zip(&c.k).all(|(a, b)| a.to_bits() == b.to_bits()));
}
