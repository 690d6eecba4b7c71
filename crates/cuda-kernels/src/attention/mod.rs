//! Attention on the GPU (`kernels/attention/*.cu`): paged decode attention (flash-decoding over
//! the paged KV cache) and causal prefill attention over a packed variable-length batch (flash
//! attention on tensor cores).
//!
//! GQA everywhere: q head `h` reads kv head `h / (q_heads / kv_heads)`. Head dims 64 and 128.

pub mod paged_decode;
pub mod prefill;

pub use paged_decode::{
    paged_decode_bf16, paged_decode_bf16_ref, paged_decode_bf16_scratch, paged_decode_bf16_with,
    DecodeKernel, DecodeScratch, DecodeSeqs,
};
pub use prefill::{
    prefill_attention_append_bf16, prefill_attention_bf16, prefill_attention_bf16_ref,
    prefill_attention_bf16_with, PrefillKernel,
};

use crate::position::HeadRows;
use crate::{shape_err, Result};

/// Checks a q/kv head pairing and returns the group size (q heads per kv head).
pub(crate) fn gqa_group(
    what: &'static str,
    q: HeadRows,
    kv_heads: usize,
    head_dim: usize,
) -> Result<usize> {
    if head_dim != 64 && head_dim != 128 {
        return Err(shape_err(format!(
            "{what}: head_dim {head_dim} is not 64 or 128"
        )));
    }
    if q.head_dim != head_dim {
        return Err(shape_err(format!(
            "{what}: q head_dim {} differs from the kv head_dim {head_dim}",
            q.head_dim
        )));
    }
    if kv_heads == 0 || q.heads == 0 || q.heads % kv_heads != 0 {
        return Err(shape_err(format!(
            "{what}: {} q heads are not a multiple of {kv_heads} kv heads",
            q.heads
        )));
    }
    Ok(q.heads / kv_heads)
}

/// `x · log2(e)`: the kernels work with exp2.
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
