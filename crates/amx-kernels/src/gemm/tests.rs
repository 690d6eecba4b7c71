//! Every tier of the bf16 GEMM against the f64 reference, on fresh random inputs, odd shapes and
//! every epilogue; outputs poisoned with NaN first so that an unwritten element fails.

use half::bf16;
use platform::CpuTier;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::tile_ops::{Emu, Hw, Tiles};
use amx_tiles::ASrc;

/// Unit roundoff of f32.
const U32: f64 = f32::EPSILON as f64 / 2.0;
/// Rounding errors of a K-term f32 sum add like a random walk; this many times `sqrt(K)·u`
/// of the sum of |terms| bounds them with a wide margin (the partial sums are far smaller than
/// the sum of |terms| on random-sign data), yet a single lost product of typical size fails.
const ACC_SIGMAS: f64 = 4.0;
/// int8: the integer sums are exact; dequantization rounds three times (i32 → f32, the
/// product of the two scales, the product with the sum).
const INT8_DEQUANT_ROUNDINGS: f64 = 4.0;
/// bf16 output: half an ulp of the value (8 significant bits), relative.
const BF16_HALF_ULP: f64 = 1.0 / 256.0;
/// Absolute floor for values that cancel to near zero.
const ABS_FLOOR: f64 = 1e-6;

fn random_bf16(rng: &mut impl Rng, n: usize) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
        .collect()
}

/// Sum of |A[m, :]|·|W[row, :]| + |bias[row]|: the scale of the accumulation error.
fn magnitude(a: &[f64], k: usize, w: &[f64], bias: Option<&[bf16]>, m: usize, row: usize) -> f64 {
    let s: f64 = (0..k)
        .map(|kk| (a[m * k + kk] * w[row * k + kk]).abs())
        .sum();
    s + bias.map_or(0.0, |b| b[row].to_f64().abs())
}

#[derive(Clone, Copy, Debug)]
enum Case {
    Plain,
    Bias,
    BiasRelu,
    ResidualBf16,
    ResidualF32,
    ResidualOutput,
    SiluMul,
}

const CASES: [Case; 7] = [
    Case::Plain,
    Case::Bias,
    Case::BiasRelu,
    Case::ResidualBf16,
    Case::ResidualF32,
    Case::ResidualOutput,
    Case::SiluMul,
];

/// Which GEMM a check runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dtype {
    Bf16,
    Int8,
}

/// The operands a kernel multiplies, as f64: bf16 values, or dequantized int8 values.
fn as_multiplied(dtype: Dtype, x: &[bf16], rows: usize, k: usize) -> Vec<f64> {
    match dtype {
        Dtype::Bf16 => x.iter().map(|v| v.to_f64()).collect(),
        Dtype::Int8 => {
            let mut q = vec![0i8; k];
            let mut out = Vec::with_capacity(rows * k);
            for r in 0..rows {
                let s = quantize_row_int8(&x[r * k..(r + 1) * k], &mut q) as f64;
                out.extend(q.iter().map(|&v| v as f64 * s));
            }
            out
        }
    }
}

/// What runs a GEMM: a tier's public entry, or the AMX driver with the given knobs on emulated
/// tiles or on the hardware (the epilogue on this CPU's best tier).
#[derive(Clone, Copy, Debug)]
enum Via {
    Tier(CpuTier),
    AmxEmu(amx_tiles::Knobs),
    AmxHw(amx_tiles::Knobs),
}

/// The AMX bf16 driver on tiles `T` with knobs `kn`, after the public entry's checks.
fn amx_bf16_on<T: Tiles, O: OutElem>(
    kn: &amx_tiles::Knobs,
    a: &[bf16],
    m: usize,
    w: &PackedWeight,
    out: &mut [O],
    ep: &Epilogue,
) {
    check_args(a, m, w.k, &w.shape(), out.len(), ep).unwrap();
    // SAFETY: the arguments passed check_args, m > 0 (every test shape), and `T` is the
    // emulator (runs anywhere) or the hardware on a CPU whose AMX tier is available (checked
    // by the caller); the epilogue runs on this CPU's best tier.
    unsafe { amx_bf16::gemm_amx_bf16::<T, O>(emu_ep_tier(), kn, a, m, w, out, ep) }
}

/// The AMX int8 driver on tiles `T` with knobs `kn`, as [`amx_bf16_on`].
fn amx_int8_on<T: Tiles, O: OutElem>(
    kn: &amx_tiles::Knobs,
    a: &[bf16],
    m: usize,
    w: &PackedWeightI8,
    out: &mut [O],
    ep: &Epilogue,
) {
    check_args(a, m, w.k, &w.shape(), out.len(), ep).unwrap();
    // SAFETY: as in amx_bf16_on (AMX-INT8 with the AMX tier on the GPU host's CPUs).
    unsafe { int8::gemm_amx_int8::<T, O>(emu_ep_tier(), kn, a, m, w.k, w, out, ep) }
}

/// Runs one (dtype, path, shape, case, output type) against the reference; panics with the seed.
#[allow(clippy::too_many_arguments)]
fn check<O: OutElem + std::fmt::Debug>(
    dtype: Dtype,
    via: Via,
    m: usize,
    n: usize,
    k: usize,
    case: Case,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let gate_up = matches!(case, Case::SiluMul);
    let n = if gate_up { n + n % 2 } else { n };
    let a = random_bf16(&mut rng, m * k);
    let wv = random_bf16(&mut rng, n * k);
    let w = if gate_up {
        PackedWeight::from_bf16_gate_up(&wv, n, k)
    } else {
        PackedWeight::from_bf16(&wv, n, k)
    }
    .unwrap();
    let out_cols = w.shape().out_cols();
    let bias = random_bf16(&mut rng, n);
    let res_bf16 = random_bf16(&mut rng, m * out_cols);
    let res_f32: Vec<f32> = res_bf16.iter().map(|v| v.to_f32()).collect();
    let bias_used =
        matches!(case, Case::Bias | Case::BiasRelu | Case::SiluMul).then_some(&bias[..]);
    let ep = Epilogue {
        bias: bias_used,
        activation: match case {
            Case::BiasRelu => Activation::Relu,
            Case::SiluMul => Activation::SiluMul,
            _ => Activation::None,
        },
        residual: match case {
            Case::ResidualBf16 => Residual::Bf16(&res_bf16),
            Case::ResidualF32 => Residual::F32(&res_f32),
            Case::ResidualOutput => Residual::Output,
            _ => Residual::None,
        },
    };
    let (mut out, mut want): (Vec<O>, Vec<f32>) = if matches!(case, Case::ResidualOutput) {
        (
            res_bf16.iter().map(|v| O::from_f32(v.to_f32())).collect(),
            res_f32.clone(),
        )
    } else {
        (
            vec![O::from_f32(f32::NAN); m * out_cols],
            vec![f32::NAN; m * out_cols],
        )
    };
    let acc_tol = match dtype {
        Dtype::Bf16 => {
            let w = if gate_up {
                PackedWeight::from_bf16_gate_up(&wv, n, k)
            } else {
                PackedWeight::from_bf16(&wv, n, k)
            };
            let w = w.unwrap();
            match via {
                Via::Tier(tier) => gemm_bf16_on(tier, &a, m, k, &w, &mut out, ep).unwrap(),
                Via::AmxEmu(kn) => amx_bf16_on::<Emu, O>(&kn, &a, m, &w, &mut out, &ep),
                Via::AmxHw(kn) => amx_bf16_on::<Hw, O>(&kn, &a, m, &w, &mut out, &ep),
            }
            gemm_bf16_ref(&a, m, k, &w, &mut want, ep).unwrap();
            ACC_SIGMAS * (k as f64).sqrt() * U32
        }
        Dtype::Int8 => {
            let w = if gate_up {
                PackedWeightI8::from_bf16_gate_up(&wv, n, k)
            } else {
                PackedWeightI8::from_bf16(&wv, n, k)
            };
            let w = w.unwrap();
            match via {
                Via::Tier(tier) => gemm_int8_on(tier, &a, m, k, &w, &mut out, ep).unwrap(),
                Via::AmxEmu(kn) => amx_int8_on::<Emu, O>(&kn, &a, m, &w, &mut out, &ep),
                Via::AmxHw(kn) => amx_int8_on::<Hw, O>(&kn, &a, m, &w, &mut out, &ep),
            }
            gemm_int8_ref(&a, m, k, &w, &mut want, ep).unwrap();
            INT8_DEQUANT_ROUNDINGS * U32
        }
    };
    let (a, wv) = (
        as_multiplied(dtype, &a, m, k),
        as_multiplied(dtype, &wv, n, k),
    );
    let out_is_bf16 = std::mem::size_of::<O>() == 2;
    for row in 0..m {
        for col in 0..out_cols {
            let idx = row * out_cols + col;
            let (got, exp) = (out[idx].to_f32() as f64, want[idx] as f64);
            let mut tol = ABS_FLOOR + 8.0 * U32 * exp.abs();
            if gate_up {
                let inter = n / 2;
                let mg = magnitude(&a, k, &wv, bias_used, row, col);
                let mu = magnitude(&a, k, &wv, bias_used, row, inter + col);
                // d(silu(g)·u) ≤ |silu'(g)|·|u|·dg + |silu(g)|·du, |silu'| < 1.1, |silu(g)| ≤ |g|.
                tol += acc_tol * (1.1 * mg * (mu + 1.0) + mu * (mg + 1.0));
            } else {
                tol += acc_tol * magnitude(&a, k, &wv, bias_used, row, col);
            }
            if out_is_bf16 {
                tol += BF16_HALF_ULP * exp.abs();
            }
            assert!(
                (got - exp).abs() <= tol,
                "{dtype:?} {via:?} m={m} n={n} k={k} {case:?} out={}: [{row},{col}] got {got}, reference {exp}, tol {tol:.3e} (seed {seed})",
                std::any::type_name::<O>()
            );
        }
    }
}

/// Shapes (m, n, k): tile edges, M = 1, M past one work block, K chunks, K ≥ 8192, and a
/// decode-sized batch (two row groups over many column pairs, three K chunks, a K tail).
const SHAPES: [(usize, usize, usize); 10] = [
    (1, 16, 32),
    (1, 17, 33),
    (3, 40, 95),
    (16, 32, 64),
    (33, 50, 70),
    (31, 33, 2049),
    (150, 48, 100),
    (2, 20, 8195),
    (4, 130, 256),
    (64, 300, 4170),
];

fn check_tier(dtype: Dtype, tier: CpuTier) {
    if !platform::testing::tier_or_skip(tier) {
        return;
    }
    for &(m, n, k) in &SHAPES {
        for case in CASES {
            let seed: u64 = rand::random();
            check::<f32>(dtype, Via::Tier(tier), m, n, k, case, seed);
            check::<bf16>(dtype, Via::Tier(tier), m, n, k, case, seed);
        }
    }
}

/// The tier the emulated AMX GEMM's epilogue runs on: the best this CPU has.
fn emu_ep_tier() -> CpuTier {
    platform::cpu_caps().best_tier()
}

/// Knob settings the emulated AMX GEMM is checked with: the defaults, and two that cut every
/// shape below into several K chunks, work blocks of several row groups (blocks starting past
/// row 0), both loop orders and the other item orders (each thread's own panel too), with
/// prefetch on and off, set widths of small-M blocks, and the B-stationary kernel for blocks of
/// 16 to 64 rows (a multiple of 16; other small blocks fall back to the 2 × 2 one); A read in
/// place (where K is whole tiles) or from the panel (int8: quantized into it, or into rows and
/// copied), the panel written by the blocks' items or by a pass of its own, one panel or two
/// alternating; wider blocks where A (up to 64 rows) is
/// past 4 KiB; K cut into slices (automatic, by A's size or by items a thread, and fixed
/// counts), whose partial sums the last slice adds before the epilogue.
const EMU_KNOBS: [amx_tiles::Knobs; 5] = [
    amx_tiles::Knobs::DEFAULT,
    amx_tiles::Knobs {
        kc: 3,
        rows_outer: Some(true),
        pf_a: 1,
        pf_b: 1,
        pf_a2: 3,
        pf_b2: 3,
        m_block: 64,
        n_block: 4,
        n_block_small: None,
        order: Order::Skewed,
        t1: 1,
        b_stationary: false,
        a_src: ASrc::Direct,
        prep_in_items: true,
        panels: 2,
        n_block_deep: None,
        deep_a_bytes: 4096,
        k_split: 0,
        split_items: 64,
    },
    amx_tiles::Knobs {
        kc: 5,
        rows_outer: Some(false),
        pf_a: 0,
        pf_b: 0,
        pf_a2: 0,
        pf_b2: 0,
        m_block: 32,
        n_block: 2,
        n_block_small: Some(2),
        order: Order::Rows,
        t1: 2,
        b_stationary: false,
        a_src: ASrc::Auto,
        prep_in_items: true,
        panels: 2,
        n_block_deep: Some(4),
        deep_a_bytes: 4096,
        k_split: 3,
        split_items: 32,
    },
    amx_tiles::Knobs {
        kc: 4,
        rows_outer: None,
        pf_a: 0,
        pf_b: 0,
        pf_a2: 0,
        pf_b2: 4,
        m_block: 64,
        n_block: 2,
        n_block_small: Some(4),
        order: Order::RowsOwn,
        t1: 0,
        b_stationary: false,
        a_src: ASrc::Copy,
        prep_in_items: true,
        panels: 2,
        n_block_deep: Some(2),
        deep_a_bytes: 4096,
        k_split: 0,
        split_items: 1,
    },
    amx_tiles::Knobs {
        kc: 3,
        rows_outer: None,
        pf_a: 0,
        pf_b: 1,
        pf_a2: 0,
        pf_b2: 3,
        m_block: 128,
        n_block: 8,
        n_block_small: Some(6),
        order: Order::Columns,
        t1: 0,
        b_stationary: true,
        a_src: ASrc::Panel,
        prep_in_items: true,
        panels: 2,
        n_block_deep: Some(8),
        deep_a_bytes: 4096,
        k_split: 2,
        split_items: 32,
    },
];

/// Shapes for the emulated AMX GEMM (m, n, k): M = 1, rows not filling a tile or a group, an
/// odd number of column blocks, K tails in bf16 (K % 32) and int8 (K % 64), M past one
/// work block, K over many chunks, and 16, 48 and 64 rows (the B-stationary kernel's); K of
/// whole tiles (64, 128, 96), which A read in place needs, also past one work block of rows.
const EMU_SHAPES: [(usize, usize, usize); 11] = [
    (1, 17, 33),
    (3, 40, 95),
    (16, 32, 64),
    (33, 50, 70),
    (150, 48, 100),
    (64, 300, 200),
    (97, 70, 330),
    (2, 20, 2085),
    (48, 90, 150),
    (64, 40, 128),
    (130, 36, 96),
];

/// Every knob setting of [`EMU_KNOBS`] on every shape of [`EMU_SHAPES`], through `via`.
fn check_amx_knobs(dtype: Dtype, via: fn(amx_tiles::Knobs) -> Via) {
    for kn in EMU_KNOBS {
        for &(m, n, k) in &EMU_SHAPES {
            for case in [Case::Plain, Case::ResidualOutput, Case::SiluMul] {
                let seed: u64 = rand::random();
                check::<f32>(dtype, via(kn), m, n, k, case, seed);
                check::<bf16>(dtype, via(kn), m, n, k, case, seed);
            }
        }
    }
}

fn check_amx_emu(dtype: Dtype) {
    check_amx_knobs(dtype, Via::AmxEmu);
}

/// With each thread's own panel, a second call on the same A buffer with new contents repacks
/// it: the panels of the first call are not reused.
#[test]
fn own_panels_are_not_reused_across_calls() {
    // One row block (M = 100 < 128 rows a block, past M_SMALL): every block of every call
    // starts at row 0, so only the call tells the panels apart.
    let kn = amx_tiles::Knobs {
        m_block: 128,
        ..EMU_KNOBS[3]
    };
    assert_eq!(kn.order, Order::RowsOwn);
    let (m, n, k) = (100, 64, 96);
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let w = PackedWeight::from_bf16(&random_bf16(&mut rng, n * k), n, k).unwrap();
    let mut a = random_bf16(&mut rng, m * k);
    for round in 0..3 {
        if round > 0 {
            a.copy_from_slice(&random_bf16(&mut rng, m * k));
        }
        let (mut out, mut want) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
        let ep = Epilogue::default();
        // SAFETY: shapes as check_args wants them (checked), m > 0, emulated tiles.
        unsafe {
            check_args(&a, m, k, &w.shape(), out.len(), &ep).unwrap();
            amx_bf16::gemm_amx_bf16::<Emu, f32>(emu_ep_tier(), &kn, &a, m, &w, &mut out, &ep);
        }
        gemm_bf16_ref(&a, m, k, &w, &mut want, ep).unwrap();
        for (i, (g, e)) in out.iter().zip(&want).enumerate() {
            let tol = 1e-3 + 1e-3 * e.abs();
            assert!(
                (g - e).abs() <= tol,
                "round {round}, out[{i}] = {g}, reference {e}"
            );
        }
    }
}

/// int8 K slices add their i32 partial sums exactly and dequantize once: a sliced product
/// equals the unsliced one bit for bit (f32 and bf16 out, every slice count up to the most),
/// where summing dequantized slices would round differently.
#[test]
fn amx_int8_k_slices_sum_exactly() {
    // 130 rows (past M_SMALL: slices for items) and 2 rows (slices by A's size, 512 bytes a
    // slice), K over 14 tiles of 64 cut into chunks of 2.
    for (m, n, k) in [(130, 40, 900), (2, 70, 900)] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let w = PackedWeightI8::from_bf16(&random_bf16(&mut rng, n * k), n, k).unwrap();
        let a = random_bf16(&mut rng, m * k);
        let ep = Epilogue::default();
        let kn = |k_split| amx_tiles::Knobs {
            kc: 2,
            k_split,
            split_items: 64,
            deep_a_bytes: 512,
            ..amx_tiles::Knobs::DEFAULT
        };
        let kpad = w.kb * BLOCK_K_INT8;
        for k_split in [0, 2, 3, 7] {
            let b = kn(k_split).blocking(m, m * kpad, w.kb);
            let plan = Plan::new(m, w.shape().nblocks, platform::pool_threads(), b);
            assert!(
                plan.slices() > 1,
                "k_split {k_split} leaves K whole: {plan:?}"
            );
        }
        let mut whole = vec![f32::NAN; m * n];
        amx_int8_on::<Emu, f32>(&kn(1), &a, m, &w, &mut whole, &ep);
        let mut whole16 = vec![bf16::NAN; m * n];
        amx_int8_on::<Emu, bf16>(&kn(1), &a, m, &w, &mut whole16, &ep);
        for k_split in [0, 2, 3, 7] {
            let mut out = vec![f32::NAN; m * n];
            amx_int8_on::<Emu, f32>(&kn(k_split), &a, m, &w, &mut out, &ep);
            let mut out16 = vec![bf16::NAN; m * n];
            amx_int8_on::<Emu, bf16>(&kn(k_split), &a, m, &w, &mut out16, &ep);
            for i in 0..m * n {
                assert_eq!(
                    (out[i].to_bits(), out16[i].to_bits()),
                    (whole[i].to_bits(), whole16[i].to_bits()),
                    "m {m} n {n} k {k}, k_split {k_split}: out[{i}] = {} / {}, unsliced {} / {}",
                    out[i],
                    out16[i],
                    whole[i],
                    whole16[i]
                );
            }
        }
    }
}

/// The AMX driver (A panel, work blocks, K chunks, loop orders, tile rows, C round trips) on
/// the tile emulator: runs on any x86-64.
#[test]
fn amx_bf16_on_emulated_tiles_matches_reference() {
    check_amx_emu(Dtype::Bf16);
}

#[test]
fn amx_int8_on_emulated_tiles_matches_reference() {
    check_amx_emu(Dtype::Int8);
}

/// The same knob settings on the hardware (the AMX host; elsewhere the test says why it
/// skips): every kernel a knob selects, the B-stationary one too, runs its real instructions.
#[test]
fn amx_knobs_on_hardware_match_reference() {
    if !platform::testing::tier_or_skip(CpuTier::Amx) {
        return;
    }
    check_amx_knobs(Dtype::Bf16, Via::AmxHw);
    if platform::cpu_caps().amx_int8_usable() {
        check_amx_knobs(Dtype::Int8, Via::AmxHw);
    }
}

#[test]
fn amx_bf16_matches_reference() {
    check_tier(Dtype::Bf16, CpuTier::Amx);
}

#[test]
fn amx_int8_matches_reference() {
    check_tier(Dtype::Int8, CpuTier::Amx);
}

#[test]
fn avx512bf16_bf16_matches_reference() {
    check_tier(Dtype::Bf16, CpuTier::Avx512Bf16);
}

#[test]
fn avx512bf16_int8_matches_reference() {
    check_tier(Dtype::Int8, CpuTier::Avx512Bf16);
}

#[test]
fn avx512_bf16_matches_reference() {
    check_tier(Dtype::Bf16, CpuTier::Avx512);
}

#[test]
fn avx512_int8_matches_reference() {
    check_tier(Dtype::Int8, CpuTier::Avx512);
}

#[test]
fn avx2_bf16_matches_reference() {
    check_tier(Dtype::Bf16, CpuTier::Avx2);
}

#[test]
fn avx2_int8_matches_reference() {
    check_tier(Dtype::Int8, CpuTier::Avx2);
}

#[test]
fn scalar_bf16_matches_reference() {
    check_tier(Dtype::Bf16, CpuTier::Scalar);
}

#[test]
fn scalar_int8_matches_reference() {
    check_tier(Dtype::Int8, CpuTier::Scalar);
}

#[test]
fn plan_covers_every_block_once() {
    let split = |slices, items| SplitK {
        kb: 10,
        chunk: 3,
        slices,
        a_bytes: 5000,
        a_max: 1000,
        items,
    };
    for &(m, nblocks, threads) in &[
        (1, 1, 16),
        (1, 257, 16),
        (64, 40, 2),
        (65, 9, 16),
        (2048, 896, 16),
        (130, 3, 1),
    ] {
        for b in [
            Blocking::SIMD,
            Blocking {
                m_block: 32,
                n_block_max: 2,
                n_block_small: None,
                order: Order::Rows,
                split: Some(split(0, 8)),
            },
            Blocking {
                n_block_small: Some(2),
                ..Blocking::SIMD
            },
            Blocking {
                n_block_small: Some(2),
                split: Some(split(3, 1)),
                ..Blocking::SIMD
            },
            Blocking {
                m_block: 256,
                n_block_max: 16,
                n_block_small: None,
                order: Order::Skewed,
                split: Some(split(20, 1)),
            },
            Blocking {
                m_block: 128,
                n_block_max: 8,
                n_block_small: None,
                order: Order::Skewed,
                split: Some(split(0, 1)),
            },
            Blocking {
                m_block: 64,
                n_block_max: 4,
                n_block_small: None,
                order: Order::RowsOwn,
                split: None,
            },
        ] {
            let plan = Plan::new(m, nblocks, threads, b);
            if m <= M_SMALL && b.n_block_small == Some(2) {
                assert!((0..plan.items()).all(|i| {
                    let it = plan.item(i);
                    it.pb1 - it.pb0 <= 2
                }));
            }
            // Every (row, column block, K tile) exactly once; K tiles only where K is sliced.
            let kb = if plan.slices() > 1 { 10 } else { 1 };
            assert!(plan.slices() <= 4, "at most one slice a chunk: {plan:?}");
            if let Some(sp) = b.split.filter(|sp| sp.slices == 3) {
                assert_eq!(plan.slices(), sp.slices, "{plan:?}");
            }
            let mut seen = vec![0u8; m * nblocks * kb];
            for i in 0..plan.items() {
                let it = plan.item(i);
                let (m0, rows, pb0, pb1) = (it.m0, it.rows, it.pb0, it.pb1);
                assert!(
                    rows > 0 && pb0 < pb1 && pb1 <= nblocks && m0 + rows <= m,
                    "{plan:?} item {i}"
                );
                assert!(pb0 % 2 == 0, "items start on a pair of blocks");
                assert!(m0 % 32 == 0, "items start on a row group (the AMX panel's)");
                assert!(rows * (pb1 - pb0) * BLOCK_N <= plan.block_len());
                let (k0, k1) = it.k.unwrap_or((0, 1));
                assert_eq!(it.k.is_some(), plan.slices() > 1);
                assert!(
                    k0 < k1 && k1 <= kb && (k0 % 3 == 0 || kb == 1),
                    "{plan:?} item {i}"
                );
                for r in m0..m0 + rows {
                    for b in pb0..pb1 {
                        for t in k0..k1 {
                            seen[(r * nblocks + b) * kb + t] += 1;
                        }
                    }
                }
            }
            assert!(
                seen.iter().all(|&s| s == 1),
                "m={m} nblocks={nblocks}: {plan:?}"
            );
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    let (m, n, k) = (3, 20, 40);
    let a = random_bf16(&mut rng, m * k);
    let wv = random_bf16(&mut rng, n * k);
    let w = PackedWeight::from_bf16(&wv, n, k).unwrap();
    let gu = PackedWeight::from_bf16_gate_up(&wv, n, k).unwrap();
    let mut out = vec![0f32; m * n];
    let tier = platform::cpu_tier();
    let e = |r: Result<()>| r.unwrap_err().to_string();
    assert!(e(gemm_bf16_on(
        tier,
        &a,
        m,
        k + 1,
        &w,
        &mut out,
        Epilogue::default()
    ))
    .contains("K = 41"));
    assert!(e(gemm_bf16_on(
        tier,
        &a[1..],
        m,
        k,
        &w,
        &mut out,
        Epilogue::default()
    ))
    .contains("A[m, k]"));
    assert!(e(gemm_bf16_on(
        tier,
        &a,
        m,
        k,
        &w,
        &mut out[1..],
        Epilogue::default()
    ))
    .contains("out[m, out_cols]"));
    let short_bias = vec![bf16::ZERO; n - 1];
    assert!(e(gemm_bf16_on(
        tier,
        &a,
        m,
        k,
        &w,
        &mut out,
        Epilogue::bias(&short_bias)
    ))
    .contains("bias[n]"));
    let short_res = vec![0f32; m * n - 1];
    assert!(e(gemm_bf16_on(
        tier,
        &a,
        m,
        k,
        &w,
        &mut out,
        Epilogue::residual(Residual::F32(&short_res))
    ))
    .contains("residual"));
    assert!(e(gemm_bf16_on(
        tier,
        &a,
        m,
        k,
        &w,
        &mut out,
        Epilogue::silu_mul()
    ))
    .contains("gate/up"));
    assert!(e(gemm_bf16_on(
        tier,
        &a,
        m,
        k,
        &gu,
        &mut out[..m * n / 2],
        Epilogue::default()
    ))
    .contains("gate/up"));
    // The fused weight with SiLU·mul writes n/2 columns, not n.
    assert!(e(gemm_bf16_on(
        tier,
        &a,
        m,
        k,
        &gu,
        &mut out,
        Epilogue::silu_mul()
    ))
    .contains("out[m, out_cols]"));
    if !CpuTier::Amx.available() {
        assert!(matches!(
            gemm_bf16_on(CpuTier::Amx, &a, m, k, &w, &mut out, Epilogue::default()),
            Err(Error::Unsupported { .. })
        ));
    }
    // M = 0 is a no-op, not an error.
    gemm_bf16_on(
        tier,
        &[],
        0,
        k,
        &w,
        &mut [] as &mut [f32],
        Epilogue::default(),
    )
    .unwrap();
}

/// The int8 GEMM against the exact bf16 product: the difference is the quantization error,
/// bounded by Σ_k (|a|·δw + |w|·δa + δa·δw) with δ half a quantization step of each operand.
#[test]
fn int8_stays_within_quantization_error_of_bf16() {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let (m, n, k) = (5, 40, 300);
    let a = random_bf16(&mut rng, m * k);
    let wv = random_bf16(&mut rng, n * k);
    let w = PackedWeightI8::from_bf16(&wv, n, k).unwrap();
    let mut out = vec![f32::NAN; m * n];
    gemm_int8(&a, m, k, &w, &mut out, Epilogue::default()).unwrap();
    let step = |x: &[bf16]| x.iter().fold(0f64, |s, v| s.max(v.to_f64().abs())) / 127.0 / 2.0;
    for r in 0..m {
        let da = step(&a[r * k..(r + 1) * k]);
        for c in 0..n {
            let dw = step(&wv[c * k..(c + 1) * k]);
            let (mut exact, mut bound) = (0f64, 1e-5);
            for kk in 0..k {
                let (x, y) = (a[r * k + kk].to_f64(), wv[c * k + kk].to_f64());
                exact += x * y;
                bound += x.abs() * dw + y.abs() * da + da * dw;
            }
            let got = out[r * n + c] as f64;
            assert!(
                (got - exact).abs() <= bound,
                "[{r},{c}] int8 {got} vs exact {exact}, bound {bound} (seed {seed})"
            );
        }
    }
}

/// Many GEMM calls at once from jobs of the pool itself (as an engine overlapping two
/// sub-batches would make them): each must equal the same call made alone.
#[test]
fn concurrent_calls_from_pool_jobs_agree() {
    use rayon::prelude::*;
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let (m, n, k) = (9, 70, 130);
    let a = random_bf16(&mut rng, m * k);
    let wv = random_bf16(&mut rng, n * k);
    let (w, w8) = (
        PackedWeight::from_bf16(&wv, n, k).unwrap(),
        PackedWeightI8::from_bf16(&wv, n, k).unwrap(),
    );
    let mut alone = vec![f32::NAN; m * n];
    let mut alone8 = vec![f32::NAN; m * n];
    gemm_bf16(&a, m, k, &w, &mut alone, Epilogue::default()).unwrap();
    gemm_int8(&a, m, k, &w8, &mut alone8, Epilogue::default()).unwrap();
    let outs: Vec<(Vec<f32>, Vec<f32>)> = platform::pool().install(|| {
        (0..16)
            .into_par_iter()
            .map(|_| {
                let (mut o, mut o8) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                gemm_bf16(&a, m, k, &w, &mut o, Epilogue::default()).unwrap();
                gemm_int8(&a, m, k, &w8, &mut o8, Epilogue::default()).unwrap();
                (o, o8)
            })
            .collect()
    });
    for (o, o8) in outs {
        assert_eq!(o, alone, "bf16 (seed {seed})");
        assert_eq!(o8, alone8, "int8 (seed {seed})");
    }
}

/// The AVX-512 activation quantizer gives the scalar one's scale and bytes: random rows of every
/// length up to 100 (masked tails), rows whose scaled values land on exact halves (ties round
/// to even in both), an all-zero row, and a row with a NaN (that element becomes 0). The output
/// past the row is poisoned and must stay untouched.
#[test]
fn quantize_row_paths_agree() {
    let c = platform::cpu_caps();
    if !platform::testing::skip_unless(
        c.avx512f && c.avx512bw && c.avx512vl,
        "avx512",
        "this CPU lacks AVX-512 F/BW/VL",
    ) {
        return;
    }
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut rows: Vec<Vec<bf16>> = (1..=100).map(|n| random_bf16(&mut rng, n)).collect();
    // max |x| = 127: the scale is 1 and x.5 values are ties.
    let mut ties: Vec<bf16> = (0..40).map(|i| bf16::from_f32(i as f32 - 19.5)).collect();
    ties.push(bf16::from_f32(-127.0));
    rows.push(ties);
    rows.push(vec![bf16::ZERO; 37]);
    let mut nan = random_bf16(&mut rng, 33);
    nan[5] = bf16::NAN;
    rows.push(nan);
    for x in &rows {
        let n = x.len();
        let (mut qs, mut qv) = (vec![0x5a_i8; n + 16], vec![0x5a_i8; n + 16]);
        let ss = pack_int8::quantize_row_scalar(x, &mut qs[..n]);
        // SAFETY: AVX-512 F, BW and VL are present (checked above).
        let sv = unsafe { pack_int8::quantize_row_avx512(x, &mut qv[..n]) };
        assert_eq!(ss.to_bits(), sv.to_bits(), "scale of a row of {n}");
        assert_eq!(qs, qv, "bytes of a row of {n}");
        assert!(
            qv[n..].iter().all(|&b| b == 0x5a),
            "wrote past a row of {n}"
        );
        assert!(qs[..n].iter().all(|&b| (-127..=127).contains(&b)));
    }
    // Ties: -19.5 -> -20, -18.5 -> -18, 0.5 -> 0, 1.5 -> 2.
    let mut q = [0i8; 41];
    quantize_row_int8(&rows[100], &mut q);
    assert_eq!((q[0], q[1], q[19], q[20], q[21]), (-20, -18, 0, 0, 2));
}

/// A's jobs run by the items: every job runs once however many items ensure them at once, all
/// writes are visible to each item after `ensure`, and a job's panic reaches the threads that
/// wait for it instead of leaving them spinning.
#[test]
fn a_prep_runs_each_job_once_and_passes_on_a_panic() {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    let jobs = 37;
    let runs: Vec<AtomicU32> = (0..jobs).map(|_| AtomicU32::new(0)).collect();
    let job = |j: usize| {
        runs[j].fetch_add(1, Ordering::Relaxed);
    };
    let prep = amx_tiles::APrep::new(jobs, &job);
    platform::install(|| {
        (0..64).into_par_iter().for_each(|_| {
            prep.ensure();
            assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
        })
    });
    assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
    // Ran already: ensure returns at once, running nothing again.
    prep.ensure();
    assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));

    let failing = |j: usize| {
        if j == 5 {
            panic!("job 5 fails");
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let prep = amx_tiles::APrep::new(jobs, &failing);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        platform::install(|| (0..8).into_par_iter().for_each(|_| prep.ensure()))
    }));
    assert!(
        caught.is_err(),
        "a failing job must fail the pass, not hang it"
    );
}
