//! The cost of one pass over the shared pool (`platform::install`), the caller asleep
//! (`block`, rayon's own wait) or spinning (`spin`), the pool's threads going idle after a
//! pass or lingering for 500 µs (`spin_linger`, the default; see `platform::pool::linger_us`):
//! 16 items of about 0.3 µs of integer work, handed over back to back, or each after the caller
//! has worked alone for 20 or 200 µs (time enough for idle pool threads to go to sleep, as
//! between a model's passes). Time per pass, the gap included; `TANDEM_THREADS` sizes the pool.
//!
//! `cargo bench -p platform --bench pool`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use platform::pool::{install_lingering, Wait};
use rayon::prelude::*;

/// About 0.3 µs of dependent multiply-adds.
fn work(seed: u64) -> u64 {
    let mut x = seed;
    for i in 0..200 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
    }
    x
}

fn pass(wait: Wait, linger_us: u64) -> u64 {
    install_lingering(wait, linger_us, || {
        (0..16u64).into_par_iter().map(work).sum::<u64>()
    })
}

fn bench_pass(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_pass");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let cases = [
        ("block", Wait::Block, 0),
        ("spin", Wait::Spin, 0),
        ("spin_linger", Wait::Spin, 500),
    ];
    for (name, wait, linger) in cases {
        g.bench_function(format!("{name}/back_to_back"), |b| {
            b.iter(|| black_box(pass(wait, linger)))
        });
        for gap in [20, 200] {
            g.bench_function(format!("{name}/gap_{gap}us"), |b| {
                b.iter(|| {
                    let t = Instant::now();
                    let mut x = 1u64;
                    while t.elapsed() < Duration::from_micros(gap) {
                        x = work(x);
                    }
                    black_box(x ^ pass(wait, linger))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_pass);
criterion_main!(benches);
