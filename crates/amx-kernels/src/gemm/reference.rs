//! Reference twins of [`gemm_bf16`](super::gemm_bf16) and [`gemm_int8`](super::gemm_int8):
//! same signatures, one thread, no blocking, f64 accumulation (exact integer sums for int8) and
//! an f64 epilogue. Slow on purpose; tests compare every tier to them.

use half::bf16;

use super::epilogue::{Activation, Epilogue, OutElem, Residual};
use super::pack::{PackedWeight, WeightKind};
use super::pack_int8::{quantize_row_int8, PackedWeightI8};
use super::WeightShape;
use crate::Result;

pub fn gemm_bf16_ref<O: OutElem>(
    a: &[bf16],
    m: usize,
    k: usize,
    w: &PackedWeight,
    out: &mut [O],
    ep: Epilogue,
) -> Result<()> {
    let shape = w.shape();
    super::check_args(a, m, k, &shape, out.len(), &ep)?;
    let dot = |row: usize, wrow: usize| -> f64 {
        (0..k)
            .map(|kk| a[row * k + kk].to_f64() * w.get(wrow, kk).to_f64())
            .sum::<f64>()
    };
    reference_epilogue(m, &shape, out, &ep, dot);
    Ok(())
}

pub fn gemm_int8_ref<O: OutElem>(
    a: &[bf16],
    m: usize,
    k: usize,
    w: &PackedWeightI8,
    out: &mut [O],
    ep: Epilogue,
) -> Result<()> {
    let shape = w.shape();
    super::check_args(a, m, k, &shape, out.len(), &ep)?;
    let mut q = vec![0i8; m * k];
    let sa: Vec<f32> = (0..m)
        .map(|r| quantize_row_int8(&a[r * k..(r + 1) * k], &mut q[r * k..(r + 1) * k]))
        .collect();
    let dot = |row: usize, wrow: usize| -> f64 {
        let s: i64 = (0..k)
            .map(|kk| q[row * k + kk] as i64 * w.get(wrow, kk).0 as i64)
            .sum();
        s as f64 * sa[row] as f64 * w.get(wrow, 0).1 as f64
    };
    reference_epilogue(m, &shape, out, &ep, dot);
    Ok(())
}

/// `out = epilogue(dot(row, weight_row))` in f64, element by element.
fn reference_epilogue<O: OutElem>(
    m: usize,
    w: &WeightShape,
    out: &mut [O],
    ep: &Epilogue,
    dot: impl Fn(usize, usize) -> f64,
) {
    let out_cols = w.out_cols();
    let lin = |row: usize, wrow: usize| dot(row, wrow) + ep.bias.map_or(0.0, |b| b[wrow].to_f64());
    for row in 0..m {
        for col in 0..out_cols {
            let mut x = match (ep.activation, w.kind) {
                (Activation::SiluMul, WeightKind::GateUp { inter }) => {
                    let g = lin(row, col);
                    g / (1.0 + (-g).exp()) * lin(row, inter + col)
                }
                (Activation::Relu, _) => lin(row, col).max(0.0),
                _ => lin(row, col),
            };
            let idx = row * out_cols + col;
            x += match ep.residual {
                Residual::None => 0.0,
                Residual::Bf16(r) => r[idx].to_f64(),
                Residual::F32(r) => r[idx] as f64,
                Residual::Output => out[idx].to_f32() as f64,
            };
            out[idx] = O::from_f32(x as f32);
        }
    }
}
