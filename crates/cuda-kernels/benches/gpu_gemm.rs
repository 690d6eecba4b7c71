//! cuBLASLt bf16 linear (`y = x · wᵀ`): FLOP/s on the shapes of a llama3-8b layer at decode
//! (M = 16) and prefill (M = 4096) and the 8192³ ceiling; torch.matmul runs the same shapes in
//! ci/anchors/cuda_anchor.py.
//!
//! Decode GEMV (M = 1, 4, 8): `gpu_gemv_bf16/{shape}/m{M}` (the GEMV kernel) against
//! `gpu_gemv_bf16_lt/{shape}/m{M}` (cuBLASLt on the same call), throughput in weight bytes
//! streamed (x and y are noise beside them), so criterion's GB/s compares with HBM bandwidth.
//! `gate_up_silu` is the fused gate/up + SiLU·mul (vs cuBLASLt + silu_mul_bf16).

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cuda_kernels::gemm::{Blas, Epilogue};
use cuda_kernels::gemv::Gemv;
use half::bf16;

use common::{bench, rand_bf16};

fn benches(c: &mut Criterion) {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream().clone();
    let blas = Blas::new(&gpu, s.clone()).unwrap();
    let mut g = c.benchmark_group("gemm");
    for (m, n, k, bias) in [
        (16usize, 6144usize, 4096usize, false),
        (16, 28672, 4096, false),
        (16, 4096, 14336, false),
        (4096, 6144, 4096, false),
        (4096, 28672, 4096, false),
        (4096, 4096, 14336, false),
        (8192, 8192, 8192, false),
        (4096, 28672, 7168, true),
    ] {
        let x = s.clone_htod(&rand_bf16(m * k, 1)).unwrap();
        let w = s.clone_htod(&rand_bf16(n * k, 2)).unwrap();
        let b = s.clone_htod(&rand_bf16(n, 3)).unwrap();
        let mut y = s.alloc_zeros::<bf16>(m * n).unwrap();
        let bv = b.as_view();
        let epi = if bias {
            Epilogue::BiasRelu(&bv)
        } else {
            Epilogue::None
        };
        let name = format!(
            "gpu_linear_bf16/{m}x{n}x{k}{}",
            if bias { "_bias_relu" } else { "" }
        );
        bench(
            &mut g,
            &gpu,
            &name,
            Throughput::Elements(2 * (m * n * k) as u64),
            || {
                blas.linear_bf16(m, n, k, &x, &w, epi, false, &mut y)
                    .unwrap()
            },
        );
    }
    g.finish();
    gemv_benches(c, &gpu, &blas);
}

/// (name, n, k, epilogue) of decode linears: n output features, k input features.
const GEMV_SHAPES: &[(&str, usize, usize, GemvCase)] = &[
    ("llama3-8b_qkv", 6144, 4096, GemvCase::Plain),
    ("llama3-8b_o", 4096, 4096, GemvCase::Accumulate),
    ("llama3-8b_gate_up", 28672, 4096, GemvCase::Plain),
    ("llama3-8b_gate_up_silu", 28672, 4096, GemvCase::Silu),
    ("llama3-8b_down", 4096, 14336, GemvCase::Accumulate),
    ("llama3-8b_lm_head", 128256, 4096, GemvCase::Plain),
    ("opt-30b_qkv", 21504, 7168, GemvCase::Bias),
    ("opt-30b_fc1", 28672, 7168, GemvCase::BiasRelu),
    ("opt-30b_fc2", 7168, 28672, GemvCase::Bias),
];

#[derive(Clone, Copy, PartialEq)]
enum GemvCase {
    Plain,
    Bias,
    BiasRelu,
    Accumulate,
    /// n = 2f rows of a fused gate/up weight, output [m, f].
    Silu,
}

fn gemv_benches(c: &mut Criterion, gpu: &std::sync::Arc<cuda_kernels::Gpu>, blas: &Blas) {
    let s = gpu.stream().clone();
    let gemv = Gemv::new(gpu).unwrap();
    let mut g = c.benchmark_group("gemv");
    for &(shape, n, k, case) in GEMV_SHAPES {
        let w = s.clone_htod(&rand_bf16(n * k, 2)).unwrap();
        let b = s.clone_htod(&rand_bf16(n, 3)).unwrap();
        let bv = b.as_view();
        let epi = match case {
            GemvCase::Bias => Epilogue::Bias(&bv),
            GemvCase::BiasRelu => Epilogue::BiasRelu(&bv),
            _ => Epilogue::None,
        };
        let acc = case == GemvCase::Accumulate;
        let tp = Throughput::Bytes((n * k * 2) as u64);
        for m in [1usize, 4, 8] {
            let x = s.clone_htod(&rand_bf16(m * k, 1)).unwrap();
            let mut y = s.clone_htod(&rand_bf16(m * n, 4)).unwrap();
            if case == GemvCase::Silu {
                let f = n / 2;
                let mut act = s.alloc_zeros::<bf16>(m * f).unwrap();
                bench(
                    &mut g,
                    gpu,
                    &format!("gpu_gemv_bf16/{shape}/m{m}"),
                    tp.clone(),
                    || {
                        gemv.linear_silu_mul_bf16(&s, m, f, k, &x, &w, &mut act)
                            .unwrap()
                    },
                );
                bench(
                    &mut g,
                    gpu,
                    &format!("gpu_gemv_bf16_lt/{shape}/m{m}"),
                    tp.clone(),
                    || {
                        blas.linear_silu_mul_bf16_lt(m, f, k, &x, &w, &mut y, &mut act)
                            .unwrap()
                    },
                );
                continue;
            }
            bench(
                &mut g,
                gpu,
                &format!("gpu_gemv_bf16/{shape}/m{m}"),
                tp.clone(),
                || {
                    gemv.linear_bf16(&s, m, n, k, &x, &w, epi, acc, &mut y)
                        .unwrap()
                },
            );
            bench(
                &mut g,
                gpu,
                &format!("gpu_gemv_bf16_lt/{shape}/m{m}"),
                tp.clone(),
                || {
                    blas.linear_bf16_lt(m, n, k, &x, &w, epi, acc, &mut y)
                        .unwrap()
                },
            );
        }
    }
    g.finish();
}

criterion_group! { name = group; config = common::config(); targets = benches }
criterion_main!(group);
