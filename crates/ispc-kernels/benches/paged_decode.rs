//! Paged decode attention on the shared CPU pool, over batch × context, beside a plain parallel
//! read of the same number of bytes on the same pool (the DRAM ceiling this kernel is held to).
//!
//! Shapes are LLaMA-3-8B's attention (32 query heads, 8 KV heads, head_dim 128): one token of
//! one layer's K and V is 4 KiB. Cases of 1 GiB and more measure DRAM on the GPU host (its L3 is
//! 300 MB); the smaller ones measure the caches. Thread scaling: run with `TANDEM_THREADS=n`.
//! `Throughput` is bytes of KV read per call.
//!
//! Beside the ceiling, two diagnostics: `b1_ctx256` (1 MiB, inside one core's 2 MiB L2) run
//! with `TANDEM_THREADS=1` is the kernel's compute rate on one core with no DRAM in the way; and
//! `cpu_read_kvorder_bf16` reads the KV in the kernel's order (tasks of a group of KV heads'
//! run of blocks, each block's K rows of the group then its V rows, XORed as `cpu_read_bf16`
//! does; `TANDEM_CPU_DECODE_HEADS` sets the group as for the kernel), so that where the kernel
//! falls short of the plain read, it says how much of the gap the reading order alone explains.

mod common;

use common::{cases, read_all, read_in_order, Data};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use half::bf16;
use std::time::Duration;

/// Short runs: ten flat samples, so a 1 GiB case on one thread still ends in seconds.
fn settings(g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
}

fn bench(c: &mut Criterion) {
    let threads = platform::pool_threads();
    for (name, lens) in cases() {
        let mut d = Data::new(&lens);
        let bytes = d.kv_bytes() as u64;
        let id = format!("{name}_t{threads}");
        let mut out = vec![bf16::ZERO; d.q.len()];
        let mut g = c.benchmark_group("cpu_paged_decode_bf16");
        settings(&mut g);
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(&id, |b| b.iter(|| d.decode(&mut out)));
        g.finish();

        // The same cache bytes (exactly the KV read above, plus the unused tail of last blocks).
        let (k, v) = (&d.k[..], &d.v[..]);
        let mut g = c.benchmark_group("cpu_read_bf16");
        settings(&mut g);
        g.throughput(Throughput::Bytes(((k.len() + v.len()) * 2) as u64));
        g.bench_function(&id, |b| b.iter(|| std::hint::black_box(read_all([k, v]))));
        g.finish();

        let mut g = c.benchmark_group("cpu_read_kvorder_bf16");
        settings(&mut g);
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(&id, |b| b.iter(|| std::hint::black_box(read_in_order(&d))));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
