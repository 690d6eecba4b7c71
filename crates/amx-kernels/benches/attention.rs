//! Attention benches on the pool (`TANDEM_THREADS` sets its size), LLaMA-3-8B heads (32 q
//! heads, 8 kv heads, head_dim 128): causal prefill of one sequence of 512 … 8192 tokens, and
//! decode of 16 sequences × 2048 keys. Throughput: FLOP of QKᵀ and PV over the visible keys
//! (printed as elem/s).
//!
//! `cargo bench -p amx-kernels --bench attention -- <filter>`; `TANDEM_CPU_TIER` picks a lower
//! tier.

use std::time::Duration;

use amx_kernels::{attention_decode_bf16, attention_prefill_bf16, AttnShape};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use half::bf16;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SHAPE: AttnShape = AttnShape {
    num_heads: 32,
    num_kv_heads: 8,
    head_dim: 128,
};
const LENS: [usize; 5] = [512, 1024, 2048, 4096, 8192];

fn random_bf16(n: usize, seed: u64) -> Vec<bf16> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
        .collect()
}

fn bench_attention(c: &mut Criterion) {
    let AttnShape {
        num_heads: h,
        num_kv_heads: hk,
        head_dim: d,
    } = SHAPE;
    let scale = 1.0 / (d as f32).sqrt();
    let mut g = c.benchmark_group("cpu_attention_bf16");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g.sampling_mode(SamplingMode::Flat);
    for &l in &LENS {
        let (q, k, v) = (
            random_bf16(l * h * d, 1),
            random_bf16(l * hk * d, 2),
            random_bf16(l * hk * d, 3),
        );
        let mut out = vec![bf16::ZERO; l * h * d];
        let cu = [0, l];
        // Causal: query i sees i + 1 keys; two products of 2·D FLOP per (query, key, head).
        g.throughput(Throughput::Elements(
            (2 * 2 * d * h * l * (l + 1) / 2) as u64,
        ));
        g.bench_with_input(BenchmarkId::new("prefill", l), &l, |b, _| {
            b.iter(|| attention_prefill_bf16(&q, &k, &v, &cu, &cu, SHAPE, scale, &mut out).unwrap())
        });
    }
    let (nseq, ctx) = (16, 2048);
    let (q, k, v) = (
        random_bf16(nseq * h * d, 4),
        random_bf16(nseq * ctx * hk * d, 5),
        random_bf16(nseq * ctx * hk * d, 6),
    );
    let cu: Vec<usize> = (0..=nseq).map(|s| s * ctx).collect();
    let mut out = vec![bf16::ZERO; nseq * h * d];
    g.throughput(Throughput::Bytes((2 * k.len() * 2) as u64));
    g.bench_function(BenchmarkId::new("decode16x", ctx), |b| {
        b.iter(|| attention_decode_bf16(&q, &k, &v, &cu, SHAPE, scale, &mut out).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_attention);
criterion_main!(benches);
