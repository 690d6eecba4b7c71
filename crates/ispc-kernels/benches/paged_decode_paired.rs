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

mod common;

use common::{cases, read_all, read_in_order, Data};
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
        for round in 0..rounds + 2 {
            let tk = secs(|| {
                d.decode(&mut out);
                0
            });
            let tr = secs(|| read_all([&d.k, &d.v]));
            let to = secs(|| read_in_order(&d));
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
    }
}
