//! CPU matrix kernels: AMX tile GEMM and attention, with AVX-512, AVX2 and scalar twins.
//!
//! Kernel entry points take slices and shapes, check them, and compute; they know nothing of
//! models. Dispatch follows `platform::cpu_tier()` (detected once, AMX only with the OS
//! permission), so `TANDEM_CPU_TIER` forces a lower path; every entry also has an `_on(tier, …)`
//! form and a `_ref` twin of the same signature.
//!
//! # bf16 GEMM
//!
//! ```ignore
//! // At load, once per linear: W is the HF weight [n, k] (out_features × in_features).
//! let w = PackedWeight::from_bf16(&w_hf, n, k)?;
//! // LLaMA MLP: gate_proj rows then up_proj rows, [2·inter, k].
//! let gu = PackedWeight::from_bf16_gate_up(&gate_up_hf, 2 * inter, k)?;
//! // Per step: out[m, n] = epilogue(A[m, k] · Wᵀ), out f32 or bf16.
//! gemm_bf16(&a, m, k, &w, &mut out, Epilogue::default())?;
//! gemm_bf16(&x, m, k, &fc1, &mut h, Epilogue::bias_relu(&b1))?;                     // OPT FC1
//! gemm_bf16(&h, m, ffn, &fc2, &mut x, Epilogue { bias: Some(&b2), residual: Residual::Output, ..Default::default() })?;
//! gemm_bf16(&x, m, k, &gu, &mut act, Epilogue::silu_mul())?;                          // [m, inter]
//! ```
//!
//! # int8 GEMM
//!
//! The same call shape with a weight quantized at load, per output channel, and activations
//! quantized per row on each call: `PackedWeightI8::from_bf16(&w_hf, n, k)?` (or
//! `from_bf16_gate_up`), then `gemm_int8(&a, m, k, &w8, &mut out, epilogue)?`.
//!
//! # Attention
//!
//! Causal flash attention for prefill over packed variable-length sequences (flash-attn's
//! varlen layout: `q [total_q, heads, head_dim]`, `k`, `v [total_k, kv_heads, head_dim]`,
//! `cu_seqlens`), and a decode-shaped entry with one query per sequence:
//!
//! ```ignore
//! let shape = AttnShape { num_heads: 32, num_kv_heads: 8, head_dim: 128 };
//! attention_prefill_bf16(&q, &k, &v, &cu_q, &cu_k, shape, 1.0 / 128f32.sqrt(), &mut out)?;
//! attention_decode_bf16(&q1, &k, &v, &cu_k, shape, 1.0 / 128f32.sqrt(), &mut out1)?;
//! ```
//!
//! Threads: every kernel runs on `platform::pool()`, the pinned pool.

pub mod attention;
pub mod gemm;
pub mod scratch;
pub mod simd;
pub mod tile;
pub mod tile_ops;

pub use attention::{
    attention_decode_bf16, attention_decode_bf16_on, attention_decode_bf16_ref,
    attention_prefill_bf16, attention_prefill_bf16_on, attention_prefill_bf16_ref, AttnShape,
};
pub use gemm::{
    gemm_bf16, gemm_bf16_on, gemm_bf16_ref, gemm_int8, gemm_int8_on, gemm_int8_ref,
    quantize_row_int8, Activation, Epilogue, OutElem, PackedWeight, PackedWeightI8, Residual,
    WeightKind,
};

/// Shape and slice errors: every kernel checks its inputs and says which one is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{what}: expected {expected} elements, got {got}")]
    Len {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{0}")]
    Shape(String),
    #[error("this kernel needs {needed}, which this machine cannot run (best tier: {have})")]
    Unsupported {
        needed: &'static str,
        have: platform::CpuTier,
    },
    #[error("packed weight memory: {0}")]
    Alloc(String),
}

impl From<platform::Error> for Error {
    fn from(e: platform::Error) -> Self {
        Error::Alloc(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Len {
            what,
            expected,
            got,
        })
    }
}
