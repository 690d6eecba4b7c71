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
//! Work items: (sequence, kv head, up to 16 rows; on the AMX tier up to `TANDEM_ATTN_ROWS`, see
//! `amx_tuning`), a row being one (query token, q head of the kv head's group) pair, so that the
//! heads of a GQA group share every K/V load. For prefill
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
mod softmax_rows;

use std::cell::RefCell;

use half::bf16;
use platform::CpuTier;
use rayon::prelude::*;

pub use reference::{attention_decode_bf16_ref, attention_prefill_bf16_ref};

use crate::gemm::{OutElem, SharedMut};
use crate::{check_len, Error, Result};
pub(crate) use amx_bf16::Tuning;

/// Keys per packed K/V chunk and per block of the online softmax of the AVX-512 tiers (the AMX
/// kernel takes 1 to 4 chunks per block).
pub const KEY_BLOCK: usize = 32;
/// Rows (query × head pairs) per work item of the AVX-512 and scalar tiers (the AMX tier's
/// items are larger, see [`Tuning`]).
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
    /// Blocking of the AMX kernel (its `rows` is the item size of every tier).
    pub tuning: Tuning,
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
        None,
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
        None,
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
        CpuTier::Amx => amx_bf16::attention_item_amx_bf16::<crate::tile_ops::Hw>,
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

/// The items of a call: per (sequence, kv head), blocks of up to `rows` rows (whole tokens
/// × up to `rows` heads of the group).
fn items(ctx: &Ctx, nseq: usize, rows: usize) -> Vec<Item> {
    let g = ctx.shape.group();
    let hg = g.min(rows);
    let tb = rows / hg;
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
    with: Option<(ItemKernel, Tuning)>,
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
    let mut needs_packing = matches!(tier, CpuTier::Amx | CpuTier::Avx512Bf16) && !decode;
    let mut kernel = if decode && tier >= CpuTier::Avx512 {
        kernel_for(CpuTier::Avx512)
    } else {
        kernel_for(tier)
    };
    let mut tuning = if tier == CpuTier::Amx && !decode {
        let total_q = match queries {
            Queries::VarLen(cu) => cu[nseq],
            Queries::OnePerSeq => nseq,
        };
        amx_tuning(total_q * shape.num_heads)
    } else {
        Tuning {
            rows: ROW_BLOCK,
            keys: KEY_BLOCK,
            prefetch: false,
        }
    };
    if let Some((kern, tu)) = with {
        (kernel, tuning, needs_packing) = (kern, tu, true);
    }
    let ctx = Ctx {
        q,
        k,
        v,
        shape,
        scale,
        queries,
        cu_k,
        packed: None,
        tuning,
    };
    run_items(kernel, needs_packing, ctx, nseq, out);
    Ok(())
}

/// A knob of the AMX kernel from the environment, read once; `ok` says which values it takes.
/// A value it does not take is reported once and ignored (the default applies).
fn knob(name: &'static str, ok: fn(usize) -> bool) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse::<usize>() {
        Ok(n) if ok(n) => Some(n),
        _ => {
            eprintln!("tandem: {name}={v:?} is not a value this knob takes; using the default");
            None
        }
    }
}

/// The AMX kernel's blocking for a call of `total_rows` rows (query tokens × q heads).
///
/// - `TANDEM_ATTN_ROWS` (multiple of 32 up to 512): rows per item. Default: the largest of
///   256, 128, 64, 32 that still gives every pool thread 8 items (each item reads its K/V
///   blocks from the shared cache once, so larger items read less; smaller ones balance the
///   causal triangle better; 512 measured slower than 256 at 2k-8k tokens).
/// - `TANDEM_ATTN_KEYS` (32, 64, 96, 128): keys per block. Default 128 (each O tile load and
///   store then serves 4 `tdpbf16ps` per row tile, the softmax reductions 128 keys).
/// - `TANDEM_ATTN_PREFETCH` (0, 1): prefetch the next K/V block into L2. Default 0 (measured
///   no faster than the hardware prefetchers on the packed, sequential blocks).
fn amx_tuning(total_rows: usize) -> Tuning {
    use amx_bf16::{MAX_KEYS, MAX_ROWS, SUB};
    static ENV: std::sync::OnceLock<[Option<usize>; 3]> = std::sync::OnceLock::new();
    let [rows, keys, prefetch] = *ENV.get_or_init(|| {
        [
            knob("TANDEM_ATTN_ROWS", |n| {
                n > 0 && n % SUB == 0 && n <= MAX_ROWS
            }),
            knob("TANDEM_ATTN_KEYS", |n| {
                n > 0 && n % KEY_BLOCK == 0 && n <= MAX_KEYS
            }),
            knob("TANDEM_ATTN_PREFETCH", |n| n <= 1),
        ]
    });
    let rows = rows.unwrap_or_else(|| {
        let per_thread = 8 * platform::pool_threads();
        let mut r = 256;
        while r > SUB && total_rows < r * per_thread {
            r /= 2;
        }
        r
    });
    Tuning {
        rows,
        keys: keys.unwrap_or(MAX_KEYS),
        prefetch: prefetch.unwrap_or(0) == 1,
    }
}

/// Packs K and V when the kernel wants them (into `ctx.packed`), splits the call into items
/// of `ctx.tuning.rows` rows and runs `kernel` on each over the pool, writing the rows into
/// `out`.
fn run_items<O: OutElem>(
    kernel: ItemKernel,
    needs_packing: bool,
    ctx: Ctx,
    nseq: usize,
    out: &mut [O],
) {
    let (shape, tuning) = (ctx.shape, ctx.tuning);
    crate::scratch::with_buf(&PACKED, 0, |buf| {
        let packed = needs_packing.then(|| packed_kv::pack(buf, ctx.k, ctx.v, ctx.cu_k, shape));
        let ctx = Ctx { packed, ..ctx };
        let items = items(&ctx, nseq, tuning.rows);
        let out_ptr = SharedMut(out.as_mut_ptr());
        let (d, group) = (shape.head_dim, shape.group());
        let body = |it: &Item| {
            crate::scratch::with_buf(&O_SCRATCH, tuning.rows * d, |o| {
                let o = &mut o[..it.rows() * d];
                // SAFETY: check_args validated every slice against the shapes and the
                // sequence table; the item's rows and keys lie inside them; the kernel's tier
                // is available (checked by the caller).
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
        platform::install(|| items.par_iter().with_max_len(1).for_each(body));
    });
}

/// Prefill through an explicit item kernel and blocking, K and V packed (tests: the AMX
/// kernel under the tile emulator).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_prefill_with<O: OutElem>(
    kernel: ItemKernel,
    tuning: Tuning,
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    cu_q: &[usize],
    cu_k: &[usize],
    shape: AttnShape,
    scale: f32,
    out: &mut [O],
) -> Result<()> {
    let queries = Queries::VarLen(cu_q);
    let with = Some((kernel, tuning));
    attend(
        CpuTier::Scalar,
        q,
        k,
        v,
        queries,
        cu_k,
        shape,
        scale,
        out,
        with,
    )
}

#[cfg(test)]
mod tests;
