//! KV block copies between pinned host memory and the GPU: bytes per second over PCIe for
//! scattered blocks (one copy each) and for runs of neighbours (merged into one copy).

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cuda_kernels::transfer::{copy_blocks_d2h, copy_blocks_h2d, PinnedBuf};
use half::bf16;

use common::bench;

fn benches(c: &mut Criterion) {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream().clone();
    let mut g = c.benchmark_group("transfer");
    // One llama3-8b layer's K blocks: 8 kv heads x 16 tokens x 128 = 32 KiB per block.
    let block = 8 * 16 * 128;
    let blocks = 4096usize;
    let mut host = PinnedBuf::<bf16>::alloc(&gpu, blocks * block).unwrap();
    let mut dev = s.alloc_zeros::<bf16>(blocks * block).unwrap();
    let bytes = Throughput::Bytes((blocks * block * 2) as u64);
    let scattered: Vec<(usize, usize)> = (0..blocks).map(|i| (i, (i * 7) % blocks)).collect();
    let runs: Vec<(usize, usize)> = (0..blocks).map(|i| (i, i)).collect();
    for (name, pairs) in [("scattered", &scattered), ("contiguous", &runs)] {
        bench(
            &mut g,
            &gpu,
            &format!("gpu_h2d_blocks_bf16/{name}"),
            bytes.clone(),
            || copy_blocks_h2d(&s, &host, &mut dev, block, pairs).unwrap(),
        );
        let rev: Vec<(usize, usize)> = pairs.iter().map(|&(h, d)| (d, h)).collect();
        bench(
            &mut g,
            &gpu,
            &format!("gpu_d2h_blocks_bf16/{name}"),
            bytes.clone(),
            || copy_blocks_d2h(&s, &dev, &mut host, block, &rev).unwrap(),
        );
    }
    g.finish();
}

criterion_group! { name = group; config = common::config(); targets = benches }
criterion_main!(group);
