//! Fused epilogues: what happens to the f32 accumulators of a block before they reach the
//! output. Shared by every tier (the accumulators are the same; this is O(M·N) next to the
//! O(M·N·K) product).
//!
//! Order: `x = acc + bias`, then the activation (ReLU, or SiLU(gate)·up over a fused gate/up
//! weight), then `+ residual`, then conversion to the output type.

use std::arch::x86_64::*;

use half::bf16;
use platform::CpuTier;

use crate::simd::{exp512, lanes, load_bf16x16, store_bf16x16};

/// The activation after bias.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    #[default]
    None,
    /// `max(x, 0)` (OPT FC1).
    Relu,
    /// `silu(gate) · up` over a weight packed by
    /// [`PackedWeight::from_bf16_gate_up`](super::PackedWeight::from_bf16_gate_up) (LLaMA MLP);
    /// the output has half the weight's rows as columns.
    SiluMul,
}

/// What is added after the activation.
#[derive(Clone, Copy, Debug, Default)]
pub enum Residual<'a> {
    #[default]
    None,
    /// A separate `[M, out_cols]` bf16 tensor.
    Bf16(&'a [bf16]),
    /// A separate `[M, out_cols]` f32 tensor.
    F32(&'a [f32]),
    /// The output's own prior contents (`out += …`, the residual stream updated in place).
    Output,
}

/// Everything fused after the product. `Epilogue::default()` is the plain product.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// One value per weight row (`N`; for gate/up: gate biases, then up biases).
    pub bias: Option<&'a [bf16]>,
    pub activation: Activation,
    pub residual: Residual<'a>,
}

impl<'a> Epilogue<'a> {
    pub fn bias(bias: &'a [bf16]) -> Self {
        Epilogue {
            bias: Some(bias),
            ..Default::default()
        }
    }
    pub fn bias_relu(bias: &'a [bf16]) -> Self {
        Epilogue {
            bias: Some(bias),
            activation: Activation::Relu,
            ..Default::default()
        }
    }
    pub fn residual(residual: Residual<'a>) -> Self {
        Epilogue {
            residual,
            ..Default::default()
        }
    }
    pub fn silu_mul() -> Self {
        Epilogue {
            activation: Activation::SiluMul,
            ..Default::default()
        }
    }
}

/// Element types a GEMM may write.
pub trait OutElem: Copy + Send + Sync + 'static {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl OutElem for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl OutElem for bf16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Where one block's raw accumulators go.
pub(crate) struct BlockDst<O> {
    /// Output base pointer, `[M, out_cols]` row-major.
    pub out: *mut O,
    pub out_cols: usize,
    /// First row of the block.
    pub m0: usize,
    /// First output column of the block.
    pub col0: usize,
}

/// [`apply`] on AVX-512 when the kernel tier has it, else scalar.
///
/// # Safety
/// As [`apply`]; `tier` is available on this CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn apply_on<O: OutElem>(
    tier: CpuTier,
    acc: &[f32],
    ldc: usize,
    rows: usize,
    cols: usize,
    gate_up: bool,
    n: usize,
    ep: &Epilogue,
    dst: &BlockDst<O>,
) {
    if tier >= CpuTier::Avx512 {
        apply_avx512(acc, ldc, rows, cols, gate_up, n, ep, dst)
    } else {
        apply(acc, ldc, rows, cols, gate_up, n, ep, dst)
    }
}

/// [`apply`] 16 columns at a time on AVX-512 (SiLU through a polynomial `e^x`).
///
/// # Safety
/// As [`apply`]; AVX-512F/BW/VL are available; `acc` rows hold whole packed blocks (so full
/// 16-lane loads of the accumulators stay inside).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn apply_avx512<O: OutElem>(
    acc: &[f32],
    ldc: usize,
    rows: usize,
    cols: usize,
    gate_up: bool,
    n: usize,
    ep: &Epilogue,
    dst: &BlockDst<O>,
) {
    let out_bf16 = std::mem::size_of::<O>() == 2;
    let one = _mm512_set1_ps(1.0);
    for r in 0..rows {
        let m = dst.m0 + r;
        let arow = acc.as_ptr().add(r * ldc);
        for c0 in (0..cols).step_by(16) {
            let mask = lanes(cols - c0);
            let col = dst.col0 + c0;
            let bias = |off: usize| {
                ep.bias.map_or(_mm512_setzero_ps(), |b| {
                    load_bf16x16(b.as_ptr().add(off), mask)
                })
            };
            let mut x = if gate_up {
                // Output columns c0.. are packed blocks 2j (gate) and 2j + 1 (up), j = c0 / 16.
                let g = _mm512_add_ps(_mm512_loadu_ps(arow.add(2 * c0)), bias(col));
                let u = _mm512_add_ps(_mm512_loadu_ps(arow.add(2 * c0 + 16)), bias(n / 2 + col));
                let sig = _mm512_div_ps(
                    one,
                    _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))),
                );
                _mm512_mul_ps(_mm512_mul_ps(g, sig), u)
            } else {
                let x = _mm512_add_ps(_mm512_loadu_ps(arow.add(c0)), bias(col));
                if ep.activation == Activation::Relu {
                    _mm512_max_ps(x, _mm512_setzero_ps())
                } else {
                    x
                }
            };
            let idx = m * dst.out_cols + col;
            let slot = dst.out.add(idx);
            x = match ep.residual {
                Residual::None => x,
                Residual::Bf16(res) => _mm512_add_ps(x, load_bf16x16(res.as_ptr().add(idx), mask)),
                Residual::F32(res) => {
                    _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(idx)))
                }
                Residual::Output if out_bf16 => {
                    _mm512_add_ps(x, load_bf16x16(slot as *const bf16, mask))
                }
                Residual::Output => {
                    _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, slot as *const f32))
                }
            };
            if out_bf16 {
                store_bf16x16(slot as *mut bf16, mask, x);
            } else {
                _mm512_mask_storeu_ps(slot as *mut f32, mask, x);
            }
        }
    }
}

/// Applies `ep` to `rows` rows of raw accumulators `acc` (row stride `ldc`, columns in packed
/// order starting at packed block `pb0`) and writes them to `dst`.
///
/// # Safety
/// `dst.out` must be valid for `[M, out_cols]` and no other thread may touch rows
/// `m0..m0+rows` × the columns this block covers.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn apply<O: OutElem>(
    acc: &[f32],
    ldc: usize,
    rows: usize,
    cols: usize,
    gate_up: bool,
    n: usize,
    ep: &Epilogue,
    dst: &BlockDst<O>,
) {
    let bias = |c: usize| ep.bias.map_or(0.0, |b| b[c].to_f32());
    for r in 0..rows {
        let m = dst.m0 + r;
        let arow = &acc[r * ldc..];
        for c in 0..cols {
            let col = dst.col0 + c;
            let mut x = if gate_up {
                // Packed blocks alternate gate, up; `c` counts output columns.
                let (j, cc) = (c / 16, c % 16);
                let g = arow[2 * j * 16 + cc] + bias(col);
                let u = arow[(2 * j + 1) * 16 + cc] + bias(n / 2 + col);
                silu(g) * u
            } else {
                let x = arow[c] + bias(col);
                if ep.activation == Activation::Relu {
                    x.max(0.0)
                } else {
                    x
                }
            };
            let idx = m * dst.out_cols + col;
            // SAFETY: idx < M·out_cols and this block owns it (caller's contract).
            let slot = dst.out.add(idx);
            match ep.residual {
                Residual::None => {}
                Residual::Bf16(r) => x += r[idx].to_f32(),
                Residual::F32(r) => x += r[idx],
                Residual::Output => x += slot.read().to_f32(),
            }
            slot.write(O::from_f32(x));
        }
    }
}
