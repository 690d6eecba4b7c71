//! GEMM benches on the pool (`TANDEM_THREADS` sets its size): the linears of LLaMA-3-8B and
//! OPT-30B at M ∈ {1, 8, 32, 64, 128, 512, 2048}, bf16 and int8 weights, bf16 activations and
//! output, the epilogue each linear has in a model. Throughput: FLOP (2·M·N·K, printed as
//! elem/s) for M > 8, bytes of packed weight for M ≤ 8 (the weight-streaming regime).
//! `cpu_dram_read` measures the read bandwidth ceiling in the same run, `amx_ceiling` the
//! micro-kernel's (AMX hosts only; see `amx_kernels::gemm::ceiling`).
//!
//! `cargo bench -p amx-kernels --bench gemm -- <filter>`; `TANDEM_CPU_TIER` picks a lower tier.
//! `GEMM_SHAPES=llama3-8b.o,opt-30b.fc1` and `GEMM_MS=128,512` restrict the shapes and Ms
//! built at all (packing every weight takes seconds, whatever the criterion filter), and
//! `GEMM_GROUPS=dram,ceiling,wake,bf16,int8` the groups set up. `GEMM_COLD=1` packs as many copies
//! of each weight as fill 1 GiB (over three times the GPU host's 300 MB L3) and cycles through
//! them call by call, so that the weight comes from DRAM as a model's layers do (groups
//! `cpu_gemm_bf16_cold`, `cpu_gemm_int8_cold`); without it one weight is reused and whatever of
//! it the L3 holds is read from there. An entry `NxK` of `GEMM_SHAPES` (`28672x4096`) adds a
//! plain product of that shape (no epilogue), named `NxK`. `GEMM_CEILING_STEPS` sets the K
//! steps a thread of each `amx_ceiling` call (4096 by default), `GEMM_OVERLAP` the rounds of
//! `amx_fma_overlap` (tile products beside FMAs on each core). `TANDEM_AMX_PROFILE=1` prints
//! after each GEMM cell where its calls' time went (`amx_kernels::gemm::profile`; warm-up
//! included).

use std::time::Duration;

use amx_kernels::{
    gemm_bf16, gemm_int8, Activation, Epilogue, PackedWeight, PackedWeightI8, Residual,
};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use half::bf16;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Packed weight bytes `GEMM_COLD` cycles through: over three times a 300 MB L3.
const COLD_BYTES: usize = 1 << 30;

const MS: [usize; 7] = [1, 8, 32, 64, 128, 512, 2048];

/// Whether `item` is in the comma-separated list `var` (everything when it is unset).
fn selected(var: &str, item: &str) -> bool {
    std::env::var(var).map_or(true, |v| v.split(',').any(|x| x.trim() == item))
}

/// (model.linear, N, K, epilogue kind)
#[derive(Clone, Copy)]
enum Kind {
    Plain,
    SiluMul,
    Bias,
    BiasRelu,
    BiasResidual,
}

const SHAPES: [(&str, usize, usize, Kind); 8] = [
    ("llama3-8b.qkv", 6144, 4096, Kind::Plain),
    ("llama3-8b.o", 4096, 4096, Kind::Plain),
    ("llama3-8b.gate_up", 2 * 14336, 4096, Kind::SiluMul),
    ("llama3-8b.down", 4096, 14336, Kind::Plain),
    ("opt-30b.qkv", 3 * 7168, 7168, Kind::Bias),
    ("opt-30b.out", 7168, 7168, Kind::BiasResidual),
    ("opt-30b.fc1", 28672, 7168, Kind::BiasRelu),
    ("opt-30b.fc2", 7168, 28672, Kind::BiasResidual),
];

/// The selected shapes of [`SHAPES`], then the `NxK` entries of `GEMM_SHAPES` as plain products.
fn shapes() -> Vec<(String, usize, usize, Kind)> {
    let mut v: Vec<_> = SHAPES
        .iter()
        .filter(|s| selected("GEMM_SHAPES", s.0))
        .map(|&(name, n, k, kind)| (name.to_string(), n, k, kind))
        .collect();
    let list = std::env::var("GEMM_SHAPES").unwrap_or_default();
    for item in list.split(',').map(str::trim) {
        let dims = item
            .split_once('x')
            .and_then(|(n, k)| Some((n.parse().ok()?, k.parse().ok()?)));
        match dims {
            Some((n, k)) if n > 0 && k > 0 => v.push((item.to_string(), n, k, Kind::Plain)),
            _ if SHAPES.iter().any(|s| s.0 == item) || item.is_empty() => {}
            _ => eprintln!(
                "gemm bench: GEMM_SHAPES entry {item:?} is neither a known linear nor NxK; skipped"
            ),
        }
    }
    v
}

/// Random bf16 in [-1, 1), filled on the pool (hundreds of MB per weight).
pub fn random_bf16(n: usize, seed: u64) -> Vec<bf16> {
    let mut v = vec![bf16::ZERO; n];
    platform::pool().install(|| {
        v.par_chunks_mut(1 << 16).enumerate().for_each(|(i, c)| {
            let mut rng =
                SmallRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            c.iter_mut()
                .for_each(|x| *x = bf16::from_f32(rng.gen_range(-1.0..1.0)));
        })
    });
    v
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g.sampling_mode(SamplingMode::Flat);
    g
}

/// Which GEMM a bench group runs.
#[derive(Clone, Copy, PartialEq)]
enum Dtype {
    Bf16,
    Int8,
}

fn bench_gemm(c: &mut Criterion, dtype: Dtype) {
    if !selected(
        "GEMM_GROUPS",
        if dtype == Dtype::Bf16 { "bf16" } else { "int8" },
    ) {
        return;
    }
    let cold = std::env::var("GEMM_COLD").is_ok_and(|v| v == "1");
    let group = format!(
        "cpu_gemm_{}{}",
        if dtype == Dtype::Bf16 { "bf16" } else { "int8" },
        if cold { "_cold" } else { "" }
    );
    let mut g = configure(c, &group);
    let mmax = *MS.iter().max().unwrap();
    for (i, (name, n, k, kind)) in shapes().into_iter().enumerate() {
        let name = name.as_str();
        let wv = random_bf16(n * k, i as u64);
        let gate_up = matches!(kind, Kind::SiluMul);
        // One packed copy, or (GEMM_COLD) as many as fill COLD_BYTES.
        let pack = |copies: usize| -> (Vec<PackedWeight>, Vec<PackedWeightI8>) {
            let (mut wb, mut wq) = (Vec::new(), Vec::new());
            for _ in 0..copies {
                match (dtype, gate_up) {
                    (Dtype::Bf16, false) => wb.push(PackedWeight::from_bf16(&wv, n, k).unwrap()),
                    (Dtype::Bf16, true) => {
                        wb.push(PackedWeight::from_bf16_gate_up(&wv, n, k).unwrap())
                    }
                    (Dtype::Int8, false) => wq.push(PackedWeightI8::from_bf16(&wv, n, k).unwrap()),
                    (Dtype::Int8, true) => {
                        wq.push(PackedWeightI8::from_bf16_gate_up(&wv, n, k).unwrap())
                    }
                }
            }
            (wb, wq)
        };
        let (mut wb, mut wq) = pack(1);
        let packed_bytes = wb
            .first()
            .map_or_else(|| wq[0].packed_bytes(), |w| w.packed_bytes());
        if cold {
            let (more_b, more_q) = pack(COLD_BYTES.div_ceil(packed_bytes) - 1);
            wb.extend(more_b);
            wq.extend(more_q);
        }
        drop(wv);
        let out_cols = if gate_up { n / 2 } else { n };
        // A starts on a 64-byte line, as the engine's GEMM inputs do, so that its rows (K a
        // multiple of 32) can be read in place (TANDEM_AMX_A=auto).
        let a_store = random_bf16(mmax * k + 32, 100 + i as u64);
        let off = amx_kernels::scratch::line_offset(a_store.as_ptr());
        let a = &a_store[off..off + mmax * k];
        let bias = random_bf16(n, 200 + i as u64);
        let mut out = random_bf16(mmax * out_cols, 300 + i as u64);
        for &m in MS.iter().filter(|m| selected("GEMM_MS", &m.to_string())) {
            g.throughput(if m <= 8 {
                Throughput::Bytes(packed_bytes as u64)
            } else {
                Throughput::Elements(2 * (m * n * k) as u64)
            });
            let ep = match kind {
                Kind::Plain => Epilogue::default(),
                Kind::SiluMul => Epilogue {
                    activation: Activation::SiluMul,
                    ..Default::default()
                },
                Kind::Bias => Epilogue::bias(&bias),
                Kind::BiasRelu => Epilogue::bias_relu(&bias),
                Kind::BiasResidual => Epilogue {
                    bias: Some(&bias),
                    residual: Residual::Output,
                    ..Default::default()
                },
            };
            amx_kernels::gemm::profile::take();
            g.bench_with_input(BenchmarkId::new(name, m), &m, |b, &m| {
                let (a, out) = (&a[..m * k], &mut out[..m * out_cols]);
                let mut next = 0usize;
                let mut turn = |len: usize| {
                    next = (next + 1) % len;
                    next
                };
                if wb.is_empty() {
                    b.iter(|| gemm_int8(a, m, k, &wq[turn(wq.len())], out, ep).unwrap())
                } else {
                    b.iter(|| gemm_bf16(a, m, k, &wb[turn(wb.len())], out, ep).unwrap())
                }
            });
            if amx_kernels::gemm::profile::enabled() {
                let p = amx_kernels::gemm::profile::take();
                let threads = platform::pool_threads();
                println!("profile {group}/{name}/{m}: {}", p.line(threads));
            }
        }
    }
    g.finish();
}

fn bench_gemm_bf16(c: &mut Criterion) {
    bench_gemm(c, Dtype::Bf16);
}

fn bench_gemm_int8(c: &mut Criterion) {
    bench_gemm(c, Dtype::Int8);
}

/// Read bandwidth of the pool over 2 GiB (far past any L3): the ceiling of the M ≤ 8 cases.
fn bench_dram_read(c: &mut Criterion) {
    if !selected("GEMM_GROUPS", "dram") {
        return;
    }
    let words = (2usize << 30) / 8;
    let mut buf = vec![0u64; words];
    platform::pool().install(|| {
        buf.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(i, ch)| ch.iter_mut().for_each(|x| *x = i as u64));
    });
    let mut g = configure(c, "cpu_dram_read");
    g.throughput(Throughput::Bytes((words * 8) as u64));
    g.bench_function("u64", |b| {
        b.iter(|| {
            platform::pool().install(|| {
                buf.par_chunks(1 << 18)
                    .map(platform::membw::read_words)
                    .reduce(|| 0, |x, y| x ^ y)
            })
        })
    });
    g.finish();
}

/// The AMX micro-kernel's ceilings on every pool thread at once (FLOP/s as elem/s): dot
/// products only, then the 2 × 2 kernel with its operands in L1, in L2, in L2 with prefetch,
/// and with one operand in L1 and the other in L2. Skipped where AMX is not usable.
fn bench_amx_ceiling(c: &mut Criterion) {
    use amx_kernels::gemm::ceiling::{amx_ceiling, Ceiling};
    if !selected("GEMM_GROUPS", "ceiling") {
        return;
    }
    // K steps a thread per call (4096: about 0.13 ms of tile products at 2 GHz). Longer calls
    // (GEMM_CEILING_STEPS) make the pool's hand-off and a late thread's wake-up a smaller part
    // of each timed call.
    let steps = match std::env::var("GEMM_CEILING_STEPS") {
        Err(_) => 4096,
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("amx_ceiling: GEMM_CEILING_STEPS={v:?} is not a positive count; skipped");
                return;
            }
        },
    };
    if amx_ceiling(Ceiling::Tdp, 1).is_err() {
        eprintln!("amx_ceiling: skipped, AMX is not usable here");
        return;
    }
    let mut g = configure(c, "amx_ceiling");
    for (name, kind) in [
        ("tdp_bf16", Ceiling::Tdp),
        ("tdp_int8", Ceiling::TdpInt8),
        ("tdp6_bf16", Ceiling::Tdp6),
        ("l1", Ceiling::L1),
        ("l2", Ceiling::L2),
        ("l2_prefetch", Ceiling::L2Prefetch),
        ("l1a_l2b", Ceiling::L1A),
        ("l2a_l1b", Ceiling::L1B),
        ("tdp2_bf16", Ceiling::Tdp2),
        ("l1_2x1db", Ceiling::L1Db),
        ("l1a_l2b_2x1db", Ceiling::L1ADb),
        ("l2_2x1db", Ceiling::L2Db),
        ("l1_int8", Ceiling::L1Int8),
    ] {
        let Ok(flop) = amx_ceiling(kind, steps) else {
            continue;
        };
        g.throughput(Throughput::Elements(flop));
        g.bench_function(name, |b| b.iter(|| amx_ceiling(kind, steps).unwrap()));
    }
    g.finish();
}

/// The vector units' ceiling on every pool thread at once (FLOP/s as elem/s): 512-bit f32 FMAs
/// on registers. Run with `TANDEM_THREADS` from 1 up, it shows whether the pool's threads share
/// cores' vector ports.
fn bench_fma_ceiling(c: &mut Criterion) {
    use amx_kernels::gemm::ceiling::simd_fma_ceiling;
    const STEPS: usize = 1 << 16;
    if !selected("GEMM_GROUPS", "ceiling") {
        return;
    }
    let Ok(flop) = simd_fma_ceiling(STEPS) else {
        eprintln!("cpu_fma_ceiling: skipped, AVX-512F is not available here");
        return;
    };
    let mut g = configure(c, "cpu_fma_ceiling");
    g.throughput(Throughput::Elements(flop));
    g.bench_function("avx512_f32", |b| {
        b.iter(|| simd_fma_ceiling(STEPS).unwrap())
    });
    g.finish();
}

/// Tile products beside 512-bit FMAs on one core (`amx_kernels::gemm::ceiling::overlap_ceiling`),
/// every pool thread at once: elem/s are rounds a second on each core, so 1e9 / elem/s is ns a
/// round. `GEMM_OVERLAP=F/T/C,...` picks the rounds (F FMAs, T products, C chained multiplies),
/// named `fF_tT_cC`; run with `TANDEM_THREADS=1` for one core alone.
fn bench_overlap_ceiling(c: &mut Criterion) {
    use amx_kernels::gemm::ceiling::{overlap_ceiling, Overlap};
    if !selected("GEMM_GROUPS", "ceiling") {
        return;
    }
    let spec = std::env::var("GEMM_OVERLAP").unwrap_or_else(|_| {
        "128/0/0,0/4/0,64/4/0,128/1/0,128/4/0,256/4/0,128/0/64,128/1/64,1024/1/0,8192/1/0".into()
    });
    let mut mixes = Vec::new();
    for item in spec.split(',') {
        let n: Vec<_> = item.split('/').map(|x| x.trim().parse::<usize>()).collect();
        match n[..] {
            [Ok(fmas), Ok(products), Ok(chain)] => mixes.push(Overlap {
                fmas,
                products,
                chain,
            }),
            _ => {
                eprintln!("amx_fma_overlap: GEMM_OVERLAP entry {item:?} is not F/T/C; skipped");
                return;
            }
        }
    }
    let mut g = configure(c, "amx_fma_overlap");
    for mix in mixes {
        // About two million cycles a call at the parts' own rates (1 ms at 2 GHz).
        let rounds = (2_000_000 / mix.ideal_cycles().max(1)).max(1);
        let n = match overlap_ceiling(mix, rounds) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("amx_fma_overlap: {mix:?} skipped: {e}");
                continue;
            }
        };
        g.throughput(Throughput::Elements(n));
        let name = format!("f{}_t{}_c{}", mix.fmas, mix.products, mix.chain);
        g.bench_function(name, |b| b.iter(|| overlap_ceiling(mix, rounds).unwrap()));
    }
    g.finish();
}

/// What a burst of tile products costs after the core's tile unit sat idle
/// (`amx_kernels::gemm::ceiling::wake_probe`), on the calling thread: one line a gap
/// (`GEMM_WAKE_GAPS`, ns, default 0 to 20000), printed rather than timed by criterion, since
/// the probe times each burst itself. Its own group: `GEMM_GROUPS=wake`.
fn bench_wake(_c: &mut Criterion) {
    use amx_kernels::gemm::ceiling::wake_probe;
    if !selected("GEMM_GROUPS", "wake") {
        return;
    }
    let spec = std::env::var("GEMM_WAKE_GAPS").unwrap_or_else(|_| {
        "0,100,200,300,400,500,600,800,1000,1500,2000,3000,5000,10000,20000".into()
    });
    // A throwaway first run: on the GPU host the first measurement of a process ran 3× slow.
    if let Err(e) = wake_probe(0, 10_000) {
        eprintln!("amx_wake: skipped: {e}");
        return;
    }
    let mut first = None;
    for item in spec.split(',') {
        let Ok(gap) = item.trim().parse::<u64>() else {
            eprintln!("amx_wake: GEMM_WAKE_GAPS entry {item:?} is not a count of ns; skipped");
            continue;
        };
        // About 50 ms a gap.
        let rounds = (50_000_000 / (gap + 500)).clamp(100, 200_000) as usize;
        match wake_probe(gap, rounds) {
            Ok(w) => {
                let base = *first.get_or_insert(w.burst_ns);
                println!(
                    "amx_wake gap {:>6.0} ns: burst {:7.1} ns, {:+7.1} ns against the first gap's",
                    w.gap_ns,
                    w.burst_ns,
                    w.burst_ns - base
                );
            }
            Err(e) => {
                eprintln!("amx_wake: skipped: {e}");
                return;
            }
        }
    }
}

criterion_group!(
    benches,
    bench_dram_read,
    bench_fma_ceiling,
    bench_amx_ceiling,
    bench_overlap_ceiling,
    bench_wake,
    bench_gemm_bf16,
    bench_gemm_int8
);
criterion_main!(benches);
