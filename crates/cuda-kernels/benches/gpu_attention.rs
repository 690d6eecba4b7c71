//! Attention: paged decode (bytes of K/V read per second, against the HBM copy ceiling) and
//! causal prefill (FLOP/s, against torch SDPA in ci/anchors/cuda_anchor.py on the same shapes).

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cuda_kernels::attention::{
    paged_decode_bf16_scratch, paged_decode_bf16_with, prefill_attention_bf16,
    prefill_attention_bf16_with, DecodeKernel, DecodeScratch, DecodeSeqs, PrefillKernel,
};
use cuda_kernels::kv::{KvShape, BLOCK_TOKENS};
use cuda_kernels::position::HeadRows;
use cuda_kernels::DeviceIds;
use half::bf16;

use common::{bench, rand_bf16};

fn benches(c: &mut Criterion) {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream().clone();
    let mut g = c.benchmark_group("attention");

    // Decode: (batch, context, q heads, kv heads, head_dim).
    for (b, ctx, hq, hkv, d) in [
        (16usize, 4096usize, 32usize, 8usize, 128usize),
        (64, 4096, 32, 8, 128),
        (16, 16384, 32, 8, 128),
        (16, 4096, 64, 8, 128),
        (32, 2048, 32, 32, 128),
        (16, 4096, 32, 8, 64),
        (4, 8192, 32, 8, 128),
    ] {
        let pages = ctx / BLOCK_TOKENS;
        let cache = KvShape {
            num_blocks: b * pages,
            kv_heads: hkv,
            head_dim: d,
        };
        let kc = s.clone_htod(&rand_bf16(cache.elems(), 1)).unwrap();
        let vc = s.clone_htod(&rand_bf16(cache.elems(), 2)).unwrap();
        // Sequences own interleaved blocks, as an allocator that served them in turns would.
        let tables: Vec<i32> = (0..b * pages)
            .map(|i| ((i % pages) * b + i / pages) as i32)
            .collect();
        let dt = DeviceIds::upload(&s, &tables).unwrap();
        let dl = DeviceIds::upload(&s, &vec![ctx as i32; b]).unwrap();
        let q = s.clone_htod(&rand_bf16(b * hq * d, 3)).unwrap();
        let mut out = s.alloc_zeros::<bf16>(b * hq * d).unwrap();
        let kv_bytes = 2 * cache.elems() as u64 * 2;
        for (kname, kernel) in [
            ("cuda", DecodeKernel::CudaCores),
            ("mma", DecodeKernel::TensorCores),
        ] {
            let name = format!("gpu_paged_decode_bf16/{kname}_b{b}_ctx{ctx}_h{hq}_kv{hkv}_d{d}");
            bench(&mut g, &gpu, &name, Throughput::Bytes(kv_bytes), || {
                let seqs = DecodeSeqs {
                    block_tables: &dt,
                    table_width: pages,
                    context_lens: &dl,
                };
                let rows = HeadRows::packed(b, hq, d);
                paged_decode_bf16_with(
                    &gpu, &s, &q, rows, cache, &kc, &vc, seqs, 0.088, &mut out, kernel,
                )
                .unwrap()
            });
        }
        // The engine's path: a scratch planned once (no allocation per call), as a captured
        // CUDA graph replays it.
        let kernel = DecodeKernel::TensorCores;
        let mut sc = DecodeScratch::new(&gpu, &s, b, hq, cache, pages, kernel).unwrap();
        let (splits, fused) = sc.splits();
        eprintln!(
            "b{b}_ctx{ctx}_h{hq}_kv{hkv}_d{d}: mma plan {splits} splits, fused merge {fused}"
        );
        let name = format!("gpu_paged_decode_bf16/mma_planned_b{b}_ctx{ctx}_h{hq}_kv{hkv}_d{d}");
        bench(&mut g, &gpu, &name, Throughput::Bytes(kv_bytes), || {
            let seqs = DecodeSeqs {
                block_tables: &dt,
                table_width: pages,
                context_lens: &dl,
            };
            let rows = HeadRows::packed(b, hq, d);
            paged_decode_bf16_scratch(
                &gpu,
                &s,
                &q,
                rows,
                cache,
                &kc,
                &vc,
                seqs,
                0.088,
                &mut out,
                kernel,
                Some(&mut sc),
            )
            .unwrap()
        });
    }

    // Decode over a ragged batch: one sequence of 65536 tokens among fifteen of 1024 (32 q / 8
    // kv heads x 128), one-shot launches (planned from the host's context lengths).
    {
        let (hq, hkv, d) = (32usize, 8usize, 128usize);
        let lens: Vec<usize> = std::iter::once(65536).chain([1024; 15]).collect();
        let b = lens.len();
        let width = lens.iter().max().unwrap() / BLOCK_TOKENS;
        let total: usize = lens.iter().map(|l| l / BLOCK_TOKENS).sum();
        let cache = KvShape {
            num_blocks: total,
            kv_heads: hkv,
            head_dim: d,
        };
        let kc = s.clone_htod(&rand_bf16(cache.elems(), 1)).unwrap();
        let vc = s.clone_htod(&rand_bf16(cache.elems(), 2)).unwrap();
        // Each sequence's blocks back to back; table rows padded with block 0 past the context.
        let mut tables = vec![0i32; b * width];
        let mut next = 0i32;
        for (i, l) in lens.iter().enumerate() {
            for p in 0..l / BLOCK_TOKENS {
                tables[i * width + p] = next;
                next += 1;
            }
        }
        let dt = DeviceIds::upload(&s, &tables).unwrap();
        let ctx: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let dl = DeviceIds::upload(&s, &ctx).unwrap();
        let q = s.clone_htod(&rand_bf16(b * hq * d, 3)).unwrap();
        let mut out = s.alloc_zeros::<bf16>(b * hq * d).unwrap();
        let kv_bytes = 2 * cache.elems() as u64 * 2;
        let name =
            format!("gpu_paged_decode_bf16/mma_ragged_b{b}_ctx64kx1_1kx15_h{hq}_kv{hkv}_d{d}");
        bench(&mut g, &gpu, &name, Throughput::Bytes(kv_bytes), || {
            let seqs = DecodeSeqs {
                block_tables: &dt,
                table_width: width,
                context_lens: &dl,
            };
            let rows = HeadRows::packed(b, hq, d);
            paged_decode_bf16_with(
                &gpu,
                &s,
                &q,
                rows,
                cache,
                &kc,
                &vc,
                seqs,
                0.088,
                &mut out,
                DecodeKernel::TensorCores,
            )
            .unwrap()
        });
    }

    // Prefill: one sequence of `len` tokens, 32 heads of 128 (the anchor's SDPA shape), a
    // packed batch of 8 x 1024 with GQA, and heads of 64.
    for (lens, hq, hkv, d) in [
        (vec![1024usize], 32usize, 32usize, 128usize),
        (vec![2048], 32, 32, 128),
        (vec![4096], 32, 32, 128),
        (vec![8192], 32, 32, 128),
        (vec![1024; 8], 32, 8, 128),
        (vec![4096], 32, 32, 64),
    ] {
        let t: usize = lens.iter().sum();
        let mut cu = vec![0i32];
        lens.iter()
            .for_each(|&l| cu.push(cu.last().unwrap() + l as i32));
        let dcu = DeviceIds::upload(&s, &cu).unwrap();
        let q = s.clone_htod(&rand_bf16(t * hq * d, 4)).unwrap();
        let k = s.clone_htod(&rand_bf16(t * hkv * d, 5)).unwrap();
        let v = s.clone_htod(&rand_bf16(t * hkv * d, 6)).unwrap();
        let mut out = s.alloc_zeros::<bf16>(t * hq * d).unwrap();
        // Causal: half of the S x S score matrix, two matmuls of 2·S·S·D each per head.
        let flops: u64 = lens.iter().map(|&l| 2 * (l * l * hq * d) as u64).sum();
        let name = format!(
            "gpu_prefill_bf16/{}x{}_h{hq}_kv{hkv}_d{d}",
            lens.len(),
            lens[0]
        );
        let (qr, kr) = (HeadRows::packed(t, hq, d), HeadRows::packed(t, hkv, d));
        bench(&mut g, &gpu, &name, Throughput::Elements(flops), || {
            prefill_attention_bf16(&gpu, &s, &q, qr, &k, kr, &v, kr, &dcu, 0.088, &mut out).unwrap()
        });
        // The mma.sync kernel on the same inputs, for the side-by-side (the default is wgmma
        // on compute capability 9.0).
        let name = name.replace("gpu_prefill_bf16/", "gpu_prefill_mma_bf16/");
        bench(&mut g, &gpu, &name, Throughput::Elements(flops), || {
            prefill_attention_bf16_with(
                &gpu,
                &s,
                &q,
                qr,
                &k,
                kr,
                &v,
                kr,
                &dcu,
                0.088,
                &mut out,
                PrefillKernel::Mma,
            )
            .unwrap()
        });
    }
    g.finish();
}

criterion_group! { name = group; config = common::config(); targets = benches }
criterion_main!(group);
