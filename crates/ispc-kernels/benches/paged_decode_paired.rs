//! The kernel against its ceiling in alternating rounds: for each case of at least 1 GiB of KV,
//! `ROUNDS` rounds of (kernel call, plain read of the same bytes, read in the kernel's page
//! order), each timed alone, in one process on one pool. The DRAM read rate of a shared host
//! drifts between seconds (the criterion groups of `paged_decode` measured 119 to 159 GiB/s
//! for the same read in one call); pairing each kernel call with reads taken right beside it
//! makes the ratio robust to that drift. Prints, per case, the medians and the median of the
//! per-round ratios; `TANDEM_CPU_DECODE_PREFETCH` and `TANDEM_THREADS` apply as to the kernel.
//!
//! `cargo bench -p ispc-kernels --bench paged_decode_paired [-- FILTER]` (a substring of the
//! case name), `PAIRED_ROUNDS` to change the round count (default 25).
//!
//! Two diagnostics of what a compute-heavy reader loses, in the same rounds (AVX-512 hosts):
//! `PAIRED_FMAS=4,8,16` adds the plain read with that many 512-bit FMAs after each 64-byte line
//! (the kernel's compute per byte, without its dependences: g = 4 issues some 12 vector µops a
//! line); `PAIRED_BESIDE=1` adds the plain read by half the pool while the other half idles,
//! runs FMAs or runs tile products. Each prints its median rate and its median ratio to the
//! plain read of the same round.

mod common;

use common::{cases, read_all, read_half, read_in_order, read_with_fmas, Beside, Data};
use half::bf16;
use std::time::Instant;

const ROUNDS: usize = 25;
/// Only cases of at least this much KV: smaller ones measure the 300 MB L3 of the GPU host.
const MIN_BYTES: usize = 1 << 30;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A diagnostic read beside the kernel's rounds (`None`: it cannot run on this host).
type Extra = Box<dyn Fn([&[bf16]; 2]) -> Option<u64>>;

fn secs(f: impl FnOnce() -> u64) -> f64 {
    let t = Instant::now();
    std::hint::black_box(f());
    t.elapsed().as_secs_f64()
}

fn main() {
    // Ignore cargo bench's own flags (`--bench`); the first other argument filters cases.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let rounds = std::env::var("PAIRED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(ROUNDS);
    let fmas: Vec<usize> = match std::env::var("PAIRED_FMAS") {
        Err(_) => Vec::new(),
        Ok(v) => match v
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(f) if f.iter().all(|&x: &usize| x % 4 == 0) => f,
            _ => {
                eprintln!("PAIRED_FMAS={v:?} is not a list of multiples of 4");
                std::process::exit(2);
            }
        },
    };
    let beside = std::env::var("PAIRED_BESIDE").is_ok_and(|v| v == "1");
    let mut extras: Vec<(String, Extra)> = Vec::new();
    for f in fmas {
        extras.push((
            format!("read, {f} FMAs a line"),
            Box::new(move |b| read_with_fmas(b, f)),
        ));
    }
    if beside {
        for (tag, m) in [
            ("idle", Beside::Idle),
            ("FMAs", Beside::Fmas),
            ("tiles", Beside::Tiles),
        ] {
            extras.push((
                format!("half reads, half {tag}"),
                Box::new(move |b| read_half(b, m)),
            ));
        }
    }
    let threads = platform::pool_threads();
    let gib = (1u64 << 30) as f64;
    println!(
        "{:<18} {:>3} {:>10} {:>10} {:>10} {:>9} {:>9} {:>15}",
        "case", "thr", "kernel", "read", "kv-order", "k/read", "k/order", "k/read min..max"
    );
    for (name, lens) in cases() {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let mut d = Data::new(&lens);
        let bytes = d.kv_bytes();
        if bytes < MIN_BYTES {
            continue;
        }
        let read_bytes = ((d.k.len() + d.v.len()) * 2) as f64;
        let mut out = vec![bf16::ZERO; d.q.len()];
        let (mut kr, mut rr, mut or, mut ratio, mut oratio) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Per extra: rates and ratios to the round's plain read (None: cannot run here).
        let mut ex: Vec<(Vec<f64>, Vec<f64>, bool)> = extras
            .iter()
            .map(|_| (Vec::new(), Vec::new(), true))
            .collect();
        for round in 0..rounds + 2 {
            let tk = secs(|| {
                d.decode(&mut out);
                0
            });
            let tr = secs(|| read_all([&d.k, &d.v]));
            let to = secs(|| read_in_order(&d));
            let te: Vec<Option<f64>> = extras
                .iter()
                .map(|(_, f)| {
                    let t = Instant::now();
                    let x = f([&d.k, &d.v])?;
                    std::hint::black_box(x);
                    Some(t.elapsed().as_secs_f64())
                })
                .collect();
            if round < 2 {
                continue; // warm-up: page faults, pool start, caches
            }
            let (k, r, o) = (
                bytes as f64 / tk / gib,
                read_bytes / tr / gib,
                bytes as f64 / to / gib,
            );
            kr.push(k);
            rr.push(r);
            or.push(o);
            ratio.push(k / r);
            oratio.push(k / o);
            for (e, t) in ex.iter_mut().zip(&te) {
                match t {
                    Some(t) => {
                        e.0.push(read_bytes / t / gib);
                        e.1.push(read_bytes / t / gib / r);
                    }
                    None => e.2 = false,
                }
            }
        }
        let (lo, hi) = ratio
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        println!(
            "{:<18} {:>3} {:>6.1} GiB {:>6.1} GiB {:>6.1} GiB {:>8.1}% {:>8.1}% {:>6.1}..{:.1}%",
            name,
            threads,
            median(&mut kr),
            median(&mut rr),
            median(&mut or),
            100.0 * median(&mut ratio),
            100.0 * median(&mut oratio),
            100.0 * lo,
            100.0 * hi
        );
        for ((tag, _), (mut rate, mut rel, ran)) in extras.iter().zip(ex) {
            if ran {
                println!(
                    "  {tag:<28} {:>6.1} GiB/s {:>6.1}% of the read",
                    median(&mut rate),
                    100.0 * median(&mut rel)
                );
            } else {
                println!("  {tag:<28} not run: this host lacks AVX-512 (or AMX for tiles)");
            }
        }
    }
}
