//! Reference twins of the attention entries: same signatures, one thread, f64, the full
//! softmax of every (query, head) row computed directly (no blocks, no online rescaling).

use half::bf16;

use super::{check_args, AttnShape, Queries};
use crate::gemm::OutElem;
use crate::Result;

#[allow(clippy::too_many_arguments)]
pub fn attention_prefill_bf16_ref<O: OutElem>(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    cu_seqlens_q: &[usize],
    cu_seqlens_k: &[usize],
    shape: AttnShape,
    scale: f32,
    out: &mut [O],
) -> Result<()> {
    if cu_seqlens_q.len() != cu_seqlens_k.len() {
        return Err(crate::Error::Shape(
            "attention: cu_seqlens_q and cu_seqlens_k differ in length".into(),
        ));
    }
    reference(
        q,
        k,
        v,
        Queries::VarLen(cu_seqlens_q),
        cu_seqlens_k,
        shape,
        scale,
        out,
    )
}

#[allow(clippy::too_many_arguments)]
pub fn attention_decode_bf16_ref<O: OutElem>(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    cu_seqlens_k: &[usize],
    shape: AttnShape,
    scale: f32,
    out: &mut [O],
) -> Result<()> {
    reference(q, k, v, Queries::OnePerSeq, cu_seqlens_k, shape, scale, out)
}

#[allow(clippy::too_many_arguments)]
fn reference<O: OutElem>(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    queries: Queries,
    cu_k: &[usize],
    shape: AttnShape,
    scale: f32,
    out: &mut [O],
) -> Result<()> {
    let nseq = check_args(q, k, v, queries, cu_k, shape, out.len())?;
    let AttnShape {
        num_heads: nh,
        num_kv_heads: hk,
        head_dim: d,
    } = shape;
    for s in 0..nseq {
        let (q0, q1) = queries.range(s);
        let (k0, klen) = (cu_k[s], cu_k[s + 1] - cu_k[s]);
        for t in 0..q1 - q0 {
            let visible = klen - (q1 - q0) + t + 1;
            for h in 0..nh {
                let kvh = h / (nh / hk);
                let qr = &q[((q0 + t) * nh + h) * d..][..d];
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        let kr = &k[((k0 + j) * hk + kvh) * d..][..d];
                        qr.iter()
                            .zip(kr)
                            .map(|(a, b)| a.to_f64() * b.to_f64())
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
                let sum: f64 = w.iter().sum();
                for c in 0..d {
                    let x: f64 = (0..visible)
                        .map(|j| w[j] * v[((k0 + j) * hk + kvh) * d + c].to_f64())
                        .sum::<f64>()
                        / sum;
                    out[((q0 + t) * nh + h) * d + c] = O::from_f32(x as f32);
                }
            }
        }
    }
    Ok(())
}
