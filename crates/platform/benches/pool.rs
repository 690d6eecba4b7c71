//! The cost of one pass over the shared pool (`platform::install`), the caller asleep
//! (`block`, rayon's own wait) or spinning (`spin`, the default): 16 items of about 0.3 µs of
//! integer work, handed over back to back, or each after the caller has worked alone for 20 µs
//! (time enough for idle pool threads to go to sleep, as between a model's passes). Time per
//! pass, the gap included; `TANDEM_THREADS` sizes the pool.
//!
//! `cargo bench -p platform --bench pool`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use platform::pool::{install_with, Wait};
use rayon::prelude::*;

/// About 0.3 µs of dependent multiply-adds.
fn work(seed: u64) -> u64 {
    let mut x = seed;
    for i in 0..200 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
    }
    x
}

fn pass(wait: Wait) -> u64 {
    install_with(wait, || (0..16u64).into_par_iter().map(work).sum::<u64>())
}

fn bench_pass(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_pass");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for (name, wait) in [("block", Wait::Block), ("spin", Wait::Spin)] {
        g.bench_function(format!("{name}/back_to_back"), |b| {
            b.iter(|| black_box(pass(wait)))
        });
        g.bench_function(format!("{name}/gap_20us"), |b| {
            b.iter(|| {
                let t = Instant::now();
                let mut x = 1u64;
                while t.elapsed() < Duration::from_micros(20) {
                    x = work(x);
                }
                black_box(x ^ pass(wait))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_pass);
criterion_main!(benches);
