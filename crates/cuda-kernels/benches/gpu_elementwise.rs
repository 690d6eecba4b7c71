//! Memory-bound kernels: bytes moved per second (read + written), next to a device-to-device
//! copy of the same order of size, the HBM ceiling they are judged against.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cuda_kernels::elementwise::{cast_bf16_f32, silu_mul_bf16, GateUp};
use cuda_kernels::embedding::embedding_bf16;
use cuda_kernels::kv::{kv_append_bf16, KvShape};
use cuda_kernels::norm::{add_layer_norm_bf16, add_rms_norm_bf16};
use cuda_kernels::position::{rope_bf16, rope_inv_freq, HeadRows};
use cuda_kernels::sampling::argmax_bf16;
use cuda_kernels::unpack::{unpack_vnni_bf16, vnni_packed_len};
use cuda_kernels::DeviceIds;
use half::bf16;

use common::{bench, rand_bf16};

fn benches(c: &mut Criterion) {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream().clone();
    let mut g = c.benchmark_group("elementwise");
    const B: u64 = 2; // bytes per bf16

    // HBM ceiling: 512 MiB device-to-device copy.
    let n = 256 << 20;
    let src = s.clone_htod(&rand_bf16(n, 1)).unwrap();
    let mut dst = s.alloc_zeros::<bf16>(n).unwrap();
    bench(
        &mut g,
        &gpu,
        "gpu_copy_bf16",
        Throughput::Bytes(2 * B * n as u64),
        || s.memcpy_dtod(&src, &mut dst).unwrap(),
    );

    // Unpack of AMX-packed weights streamed from the host into the row-major [N, K] the GEMM
    // takes (the bytes are random: the kernel is a permutation). OPT-30B FC1 and LLaMA-3-8B's
    // fused gate/up.
    for (name, n, k, gate_up) in [
        (
            "gpu_unpack_vnni_bf16/opt30b_fc1",
            28672usize,
            7168usize,
            false,
        ),
        ("gpu_unpack_vnni_bf16/llama3_8b_gate_up", 28672, 4096, true),
    ] {
        let packed = src.slice(..vnni_packed_len(n, k, gate_up));
        let bytes = B * (packed.len() + n * k) as u64;
        bench(&mut g, &gpu, name, Throughput::Bytes(bytes), || {
            unpack_vnni_bf16(&gpu, &s, &packed, n, k, gate_up, &mut dst).unwrap()
        });
    }
    drop(dst);

    let n = 64 << 20;
    let mut f32buf = s.alloc_zeros::<f32>(n).unwrap();
    let x = src.slice(..n);
    bench(
        &mut g,
        &gpu,
        "gpu_cast_bf16_f32",
        Throughput::Bytes(6 * n as u64),
        || cast_bf16_f32(&gpu, &s, &x, &mut f32buf).unwrap(),
    );
    drop(f32buf);

    // llama3-8b shapes: hidden 4096, intermediate 14336, 32 q / 8 kv heads of 128.
    let (rows, inter, hidden) = (4096usize, 14336usize, 4096usize);
    let gate_up = src.slice(..rows * 2 * inter);
    let mut out = s.alloc_zeros::<bf16>(rows * inter).unwrap();
    bench(
        &mut g,
        &gpu,
        "gpu_silu_mul_bf16",
        Throughput::Bytes(3 * B * (rows * inter) as u64),
        || {
            silu_mul_bf16(
                &gpu,
                &s,
                rows,
                inter,
                &gate_up,
                GateUp::fused(inter),
                &mut out,
            )
            .unwrap()
        },
    );
    drop(out);

    let rows = 16384usize;
    let mut res = s.clone_htod(&rand_bf16(rows * hidden, 2)).unwrap();
    let delta = src.slice(..rows * hidden);
    let w = s.clone_htod(&rand_bf16(hidden, 3)).unwrap();
    let mut out = s.alloc_zeros::<bf16>(rows * hidden).unwrap();
    let bytes = Throughput::Bytes(4 * B * (rows * hidden) as u64);
    bench(&mut g, &gpu, "gpu_add_rms_norm_bf16", bytes.clone(), || {
        add_rms_norm_bf16(&gpu, &s, rows, hidden, &mut res, &delta, &w, 1e-5, &mut out).unwrap()
    });
    bench(&mut g, &gpu, "gpu_add_layer_norm_bf16", bytes, || {
        add_layer_norm_bf16(
            &gpu, &s, rows, hidden, &mut res, &delta, &w, &w, 1e-5, &mut out,
        )
        .unwrap()
    });

    let pos: Vec<i32> = (0..rows as i32).collect();
    let dpos = DeviceIds::upload(&s, &pos).unwrap();
    let inv = s.clone_htod(&rope_inv_freq(500_000.0, 128)).unwrap();
    bench(
        &mut g,
        &gpu,
        "gpu_rope_bf16",
        Throughput::Bytes(2 * B * (rows * hidden) as u64),
        || {
            rope_bf16(
                &gpu,
                &s,
                &mut out,
                HeadRows::packed(rows, 32, 128),
                &dpos,
                &inv,
            )
            .unwrap()
        },
    );

    let vocab = 128256usize;
    let table = s.clone_htod(&rand_bf16(vocab * hidden, 4)).unwrap();
    let ids: Vec<i32> = (0..rows as i32)
        .map(|i| (i * 7919) % vocab as i32)
        .collect();
    let dids = DeviceIds::upload(&s, &ids).unwrap();
    bench(
        &mut g,
        &gpu,
        "gpu_embedding_bf16",
        Throughput::Bytes(2 * B * (rows * hidden) as u64),
        || embedding_bf16(&gpu, &s, &table, hidden, &dids, &mut out).unwrap(),
    );

    // A decode step's logits (256 rows, 66 MB: about the L2's size) and a large batch's
    // (2048 rows, 525 MB: well past it, the size the memory-bound target is set at).
    for (batch, name) in [
        (256usize, "gpu_argmax_bf16"),
        (2048, "gpu_argmax_bf16_2048"),
    ] {
        let logits = table.slice(..batch * vocab);
        let mut am = s.alloc_zeros::<i32>(batch).unwrap();
        bench(
            &mut g,
            &gpu,
            name,
            Throughput::Bytes(B * (batch * vocab) as u64),
            || argmax_bf16(&gpu, &s, &logits, vocab, &mut am).unwrap(),
        );
    }
    drop(table);

    // KV append of 16k prefill tokens (8 kv heads x 128) into a cache of 2048 blocks.
    let cache = KvShape {
        num_blocks: 2048,
        kv_heads: 8,
        head_dim: 128,
    };
    let (mut kc, mut vc) = (
        s.alloc_zeros::<bf16>(cache.elems()).unwrap(),
        s.alloc_zeros::<bf16>(cache.elems()).unwrap(),
    );
    let slots: Vec<i32> = (0..rows as i32).map(|t| (t * 3) % (2048 * 16)).collect();
    let dslots = DeviceIds::upload(&s, &slots).unwrap();
    let kv_rows = HeadRows::packed(rows, 8, 128);
    let (k, v) = (
        src.slice(..rows * 1024),
        src.slice(rows * 1024..2 * rows * 1024),
    );
    bench(
        &mut g,
        &gpu,
        "gpu_kv_append_bf16",
        Throughput::Bytes(4 * B * (rows * 1024) as u64),
        || {
            kv_append_bf16(
                &gpu, &s, &k, kv_rows, &v, kv_rows, &dslots, cache, &mut kc, &mut vc,
            )
            .unwrap()
        },
    );
    g.finish();
}

criterion_group! { name = group; config = common::config(); targets = benches }
criterion_main!(group);
