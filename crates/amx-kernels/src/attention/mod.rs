//! CPU attention over bf16 Q, K, V with f32 accumulation: causal prefill of sequences of
//! different lengths packed in one batch (flash attention: key blocks of 32 with an online
//! softmax, nothing of size `L²` materialized), and a decode-shaped entry (one query per
//! sequence over its contiguous KV). GQA with any q-heads-per-kv-head ratio.
//!
//! Layouts (row-major, tokens of all sequences back to back, `cu_seqlens` as in flash-attn's
//! varlen API: sequence `s` owns tokens `cu[s] .. cu[s+1]`):
//!
//! ```text
//! q, out  [total_q][num_heads][head_dim]
//! k, v    [total_k][num_kv_heads][head_dim]
//! ```
//!
//! Causality is aligned at the end: query `i` of a sequence with `q_len` queries and `k_len ≥
//! q_len` keys sees keys `0 ..= k_len - q_len + i` (plain prefill has `q_len = k_len`).
//!
//! Work items: (sequence, kv head, up to 16 rows), a row being one (query token, q head of the
//! kv head's group) pair, so that the heads of a GQA group share every K/V load. For prefill
//! on the AMX and AVX512-BF16 tiers K and V are first repacked per (sequence, kv head) into the
//! tile layouts (see [`packed_kv`]) in a buffer of the calling thread, grown once and reused.
//! Decode (one query per sequence, each key read by one row group) runs the AVX-512 kernel on
//! the raw layout on those tiers: the repacking would cost more than it saves.

mod amx_bf16;
mod avx512_bf16;
mod avx512bf16_bf16;
mod packed_kv;
mod reference;
mod scalar_bf16;
mod softmax_avx512;

use std::cell::RefCell;

use half::bf16;
use platform::CpuTier;
use rayon::prelude::*;

pub use reference::{attention_decode_bf16_ref, attention_prefill_bf16_ref};

use crate::gemm::{OutElem, SharedMut};
use crate::{check_len, Error, Result};

/// Keys per block of the online softmax (one AMX tile of K depth for PV).
pub const KEY_BLOCK: usize = 32;
/// Rows (query × head pairs) per work item: one AMX tile of rows.
pub const ROW_BLOCK: usize = 16;
/// Largest head_dim the kernels take (their per-item buffers are sized for it).
pub const MAX_HEAD_DIM: usize = 256;

/// Head counts and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn check(&self) -> Result<()> {
        let AttnShape {
            num_heads: h,
            num_kv_heads: hk,
            head_dim: d,
        } = *self;
        if h == 0 || hk == 0 || h % hk != 0 {
            return Err(Error::Shape(format!(
                "attention: {h} query heads must be a positive multiple of {hk} kv heads"
            )));
        }
        if d == 0 || d % 32 != 0 || d > MAX_HEAD_DIM {
            return Err(Error::Shape(format!(
                "attention: head_dim {d} must be a multiple of 32 up to {MAX_HEAD_DIM} (64 and 128 are the model sizes)"
            )));
        }
        Ok(())
    }
    fn group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

/// Where each sequence's queries are.
#[derive(Clone, Copy)]
pub(crate) enum Queries<'a> {
    /// `cu_seqlens_q`.
    VarLen(&'a [usize]),
    /// One query per sequence (decode).
    OnePerSeq,
}

impl Queries<'_> {
    fn range(&self, s: usize) -> (usize, usize) {
        match self {
            Queries::VarLen(cu) => (cu[s], cu[s + 1]),
            Queries::OnePerSeq => (s, s + 1),
        }
    }
}

/// Everything a tier's item kernel reads.
pub(crate) struct Ctx<'a> {
    pub q: &'a [bf16],
    pub k: &'a [bf16],
    pub v: &'a [bf16],
    pub shape: AttnShape,
    pub scale: f32,
    pub queries: Queries<'a>,
    pub cu_k: &'a [usize],
    /// Repacked K and V (AMX, AVX512-BF16 tiers), with each (sequence, kv head)'s offset.
    pub packed: Option<packed_kv::PackedKv<'a>>,
}

/// One work item: sequence `seq`, kv head `kvh`, query tokens `t0 .. t1` (relative to the
/// sequence) × q heads `g0 .. g1` of the group; row `r` is token `t0 + r / (g1 - g0)`, head
/// `g0 + r % (g1 - g0)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub seq: usize,
    pub kvh: usize,
    pub t0: usize,
    pub t1: usize,
    pub g0: usize,
    pub g1: usize,
}

impl Item {
    pub fn rows(&self) -> usize {
        (self.t1 - self.t0) * (self.g1 - self.g0)
    }
    /// (token relative to the sequence, q head) of row `r`.
    pub fn row(&self, r: usize, group: usize) -> (usize, usize) {
        let hg = self.g1 - self.g0;
        (self.t0 + r / hg, self.kvh * group + self.g0 + r % hg)
    }
}

impl Ctx<'_> {
    /// (first key token, key count, first query token, query count) of sequence `s`.
    pub fn seq(&self, s: usize) -> (usize, usize, usize, usize) {
        let (q0, q1) = self.queries.range(s);
        (self.cu_k[s], self.cu_k[s + 1] - self.cu_k[s], q0, q1 - q0)
    }
    /// Keys visible to query token `t` of sequence `s` (causal, aligned at the end).
    pub fn visible(&self, s: usize, t: usize) -> usize {
        let (_, klen, _, qlen) = self.seq(s);
        klen - qlen + t + 1
    }
    /// Query row vector of (sequence `s`, token `t`, head `h`).
    pub fn q_row(&self, s: usize, t: usize, h: usize) -> &[bf16] {
        let (_, _, q0, _) = self.seq(s);
        let d = self.shape.head_dim;
        &self.q[((q0 + t) * self.shape.num_heads + h) * d..][..d]
    }
    /// K (or V) row of (sequence `s`, key `j`, kv head `kvh`).
    pub fn kv_row<'b>(&self, x: &'b [bf16], s: usize, j: usize, kvh: usize) -> &'b [bf16] {
        let d = self.shape.head_dim;
        &x[((self.cu_k[s] + j) * self.shape.num_kv_heads + kvh) * d..][..d]
    }
}

/// A tier's item kernel: the normalized attention output of the item's rows into `o`
/// (`rows × head_dim` f32).
pub(crate) type ItemKernel = unsafe fn(ctx: &Ctx, it: &Item, o: &mut [f32]);

/// Causal prefill over packed variable-length sequences on the tier of `platform::cpu_tier()`.
/// `scale` multiplies QKᵀ (usually `1/sqrt(head_dim)`).
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill_bf16<O: OutElem>(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    cu_seqlens_q: &[usize],
    cu_seqlens_k: &[usize],
    shape: AttnShape,
    scale: f32,
    out: &mut [O],
) -> Result<()> {
    attention_prefill_bf16_on(
        platform::cpu_tier(),
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        shape,
        scale,
        out,
    )
}

/// [`attention_prefill_bf16`] on an explicit tier (tests and benches).
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill_bf16_on<O: OutElem>(
    tier: CpuTier,
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    cu_seqlens_q: &[usize],
    cu_seqlens_k: &[usize],
    shape: AttnShape,
    scale: f32,
    out: &mut [O],
) -> Result<()> {
    check_cu("cu_seqlens_q", cu_seqlens_q)?;
    if cu_seqlens_q.len() != cu_seqlens_k.len() {
        return Err(Error::Shape(format!(
            "attention: cu_seqlens_q has {} entries, cu_seqlens_k {}",
            cu_seqlens_q.len(),
            cu_seqlens_k.len()
        )));
    }
    attend(
        tier,
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

/// Decode: one query per sequence, `q` and `out` `[num_seqs][num_heads][head_dim]`, over each
/// sequence's contiguous keys `cu_seqlens_k[s] .. cu_seqlens_k[s+1]` (all visible).
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_bf16<O: OutElem>(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    cu_seqlens_k: &[usize],
    shape: AttnShape,
    scale: f32,
    out: &mut [O],
) -> Result<()> {
    attention_decode_bf16_on(
        platform::cpu_tier(),
        q,
        k,
        v,
        cu_seqlens_k,
        shape,
        scale,
        out,
    )
}

/// [`attention_decode_bf16`] on an explicit tier.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_bf16_on<O: OutElem>(
    tier: CpuTier,
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    cu_seqlens_k: &[usize],
    shape: AttnShape,
    scale: f32,
    out: &mut [O],
) -> Result<()> {
    attend(
        tier,
        q,
        k,
        v,
        Queries::OnePerSeq,
        cu_seqlens_k,
        shape,
        scale,
        out,
    )
}

fn check_cu(what: &str, cu: &[usize]) -> Result<()> {
    if cu.first() != Some(&0) || cu.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::Shape(format!(
            "attention: {what} must start at 0 and never decrease: {cu:?}"
        )));
    }
    Ok(())
}

/// Checks every operand of an attention call.
pub(crate) fn check_args(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    queries: Queries,
    cu_k: &[usize],
    shape: AttnShape,
    out_len: usize,
) -> Result<usize> {
    shape.check()?;
    check_cu("cu_seqlens_k", cu_k)?;
    let nseq = cu_k.len() - 1;
    let total_q = match queries {
        Queries::VarLen(cu) => cu[nseq],
        Queries::OnePerSeq => nseq,
    };
    for s in 0..nseq {
        let (q0, q1) = queries.range(s);
        let (ql, kl) = (q1 - q0, cu_k[s + 1] - cu_k[s]);
        if kl < ql || (ql > 0 && kl == 0) {
            return Err(Error::Shape(format!(
                "attention: sequence {s} has {ql} queries but {kl} keys (causal attention needs at least as many keys)"
            )));
        }
    }
    let AttnShape {
        num_heads: h,
        num_kv_heads: hk,
        head_dim: d,
    } = shape;
    check_len(
        "attention: q[total_q, num_heads, head_dim]",
        total_q * h * d,
        q.len(),
    )?;
    check_len(
        "attention: out[total_q, num_heads, head_dim]",
        total_q * h * d,
        out_len,
    )?;
    check_len(
        "attention: k[total_k, num_kv_heads, head_dim]",
        cu_k[nseq] * hk * d,
        k.len(),
    )?;
    check_len(
        "attention: v[total_k, num_kv_heads, head_dim]",
        cu_k[nseq] * hk * d,
        v.len(),
    )?;
    Ok(nseq)
}

fn kernel_for(tier: CpuTier) -> ItemKernel {
    match tier {
        CpuTier::Amx => amx_bf16::attention_item_amx_bf16,
        CpuTier::Avx512Bf16 => avx512bf16_bf16::attention_item_avx512bf16_bf16,
        CpuTier::Avx512 => avx512_bf16::attention_item_avx512_bf16,
        CpuTier::Avx2 | CpuTier::Scalar => scalar_bf16::attention_item_scalar_bf16,
    }
}

thread_local! {
    /// The calling thread's repacked K and V.
    static PACKED: RefCell<Vec<bf16>> = const { RefCell::new(Vec::new()) };
    /// A pool thread's f32 output rows of one item.
    static O_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The items of a call: per (sequence, kv head), blocks of up to [`ROW_BLOCK`] rows.
fn items(ctx: &Ctx, nseq: usize) -> Vec<Item> {
    let g = ctx.shape.group();
    let hg = g.min(ROW_BLOCK);
    let tb = ROW_BLOCK / hg;
    let mut items = Vec::new();
    for seq in 0..nseq {
        let (_, _, _, qlen) = ctx.seq(seq);
        for kvh in 0..ctx.shape.num_kv_heads {
            for g0 in (0..g).step_by(hg) {
                for t0 in (0..qlen).step_by(tb) {
                    items.push(Item {
                        seq,
                        kvh,
                        t0,
                        t1: (t0 + tb).min(qlen),
                        g0,
                        g1: (g0 + hg).min(g),
                    });
                }
            }
        }
    }
    // Longest first (causal: later query blocks see more keys), for the pool's balance.
    items.sort_by_key(|it| std::cmp::Reverse(ctx.visible(it.seq, it.t1 - 1)));
    items
}

#[allow(clippy::too_many_arguments)]
fn attend<O: OutElem>(
    tier: CpuTier,
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    queries: Queries,
    cu_k: &[usize],
    shape: AttnShape,
    scale: f32,
    out: &mut [O],
) -> Result<()> {
    if !tier.available() {
        return Err(Error::Unsupported {
            needed: tier.name(),
            have: platform::cpu_caps().best_tier(),
        });
    }
    let nseq = check_args(q, k, v, queries, cu_k, shape, out.len())?;
    // Decode reads each key once per row of its group: repacking would cost more than the
    // tiles save, so the tiers that repack take the AVX-512 kernel on the raw layout there.
    let decode = matches!(queries, Queries::OnePerSeq);
    let needs_packing = matches!(tier, CpuTier::Amx | CpuTier::Avx512Bf16) && !decode;
    let kernel = if decode && tier >= CpuTier::Avx512 {
        kernel_for(CpuTier::Avx512)
    } else {
        kernel_for(tier)
    };
    crate::scratch::with_buf(&PACKED, 0, |buf| {
        let mut ctx = Ctx {
            q,
            k,
            v,
            shape,
            scale,
            queries,
            cu_k,
            packed: None,
        };
        if needs_packing {
            ctx.packed = Some(packed_kv::pack(buf, k, v, cu_k, shape));
        }
        let items = items(&ctx, nseq);
        let out_ptr = SharedMut(out.as_mut_ptr());
        let (d, group) = (shape.head_dim, shape.group());
        let body = |it: &Item| {
            crate::scratch::with_buf(&O_SCRATCH, ROW_BLOCK * d, |o| {
                let o = &mut o[..it.rows() * d];
                // SAFETY: check_args validated every slice against the shapes and the
                // sequence table; the item's rows and keys lie inside them; the tier is
                // available (checked above).
                unsafe { kernel(&ctx, it, o) };
                let (_, _, q0, _) = ctx.seq(it.seq);
                for (r, orow) in o.chunks_exact(d).enumerate() {
                    let (t, h) = it.row(r, group);
                    let base = ((q0 + t) * shape.num_heads + h) * d;
                    for (j, &x) in orow.iter().enumerate() {
                        // SAFETY: base + j < total_q · H · D (checked); each (token, head)
                        // row belongs to exactly one item.
                        unsafe { out_ptr.get().add(base + j).write(O::from_f32(x)) };
                    }
                }
            })
        };
        platform::pool().install(|| items.par_iter().with_max_len(1).for_each(body));
    });
    Ok(())
}

#[cfg(test)]
mod tests;
