//! Shared by the GPU benches: short criterion settings (the GPU host's time is scarce), the
//! device or a printed skip, and timing with CUDA events around `iters` launches.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, Throughput};
use cuda_kernels::Gpu;
use half::bf16;

pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .without_plots()
}

pub fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("SKIP GPU benches: {e}");
            None
        }
    }
}

/// Device time of `iters` calls of `f` on the GPU's default stream, between two events.
pub fn gpu_time(gpu: &Gpu, iters: u64, mut f: impl FnMut()) -> Duration {
    let s = gpu.stream();
    let (e0, e1) = (gpu.timing_event().unwrap(), gpu.timing_event().unwrap());
    e0.record(s).unwrap();
    for _ in 0..iters {
        f();
    }
    e1.record(s).unwrap();
    let ms = e0.elapsed_ms(&e1).unwrap();
    Duration::from_secs_f64(ms as f64 / 1e3)
}

/// One bench timed with CUDA events, with its throughput.
pub fn bench(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    gpu: &Gpu,
    name: &str,
    tp: Throughput,
    mut f: impl FnMut(),
) {
    g.throughput(tp);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| gpu_time(gpu, iters, &mut f))
    });
}

/// Random bf16 in [-1, 1) from a cheap generator (benches need values, not statistics).
pub fn rand_bf16(n: usize, seed: u64) -> Vec<bf16> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bf16::from_f32((x >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}
