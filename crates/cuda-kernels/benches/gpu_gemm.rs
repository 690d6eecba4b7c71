//! cuBLASLt bf16 linear (`y = x · wᵀ`): FLOP/s on the shapes of a llama3-8b layer at decode
//! (M = 16) and prefill (M = 4096) and the 8192³ ceiling; torch.matmul runs the same shapes in
//! ci/anchors/cuda_anchor.py.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cuda_kernels::gemm::{Blas, Epilogue};
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
}

criterion_group! { name = group; config = common::config(); targets = benches }
criterion_main!(group);
