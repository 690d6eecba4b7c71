//! Reference twin of [`gemm_bf16`](super::gemm_bf16): same signature, one thread, f64
//! accumulation and f64 epilogue, no blocking. Slow on purpose; tests compare every tier to it.

use half::bf16;

use super::epilogue::{Activation, Epilogue, OutElem, Residual};
use super::pack::{PackedWeight, WeightKind};
use crate::Result;

pub fn gemm_bf16_ref<O: OutElem>(
    a: &[bf16],
    m: usize,
    k: usize,
    w: &PackedWeight,
    out: &mut [O],
    ep: Epilogue,
) -> Result<()> {
    super::check_args(a, m, k, w, out.len(), &ep)?;
    let out_cols = w.out_cols();
    let dot = |row: usize, wrow: usize| -> f64 {
        let bias = ep.bias.map_or(0.0, |b| b[wrow].to_f64());
        (0..k)
            .map(|kk| a[row * k + kk].to_f64() * w.get(wrow, kk).to_f64())
            .sum::<f64>()
            + bias
    };
    for row in 0..m {
        for col in 0..out_cols {
            let mut x = match (ep.activation, w.kind) {
                (Activation::SiluMul, WeightKind::GateUp { inter }) => {
                    let g = dot(row, col);
                    g / (1.0 + (-g).exp()) * dot(row, inter + col)
                }
                (Activation::Relu, _) => dot(row, col).max(0.0),
                _ => dot(row, col),
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
    Ok(())
}
