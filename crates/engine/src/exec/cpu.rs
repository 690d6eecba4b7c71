//! CPU sublayers and a full-CPU generation session (LIA policy (1,1,1,1,1,1)).
//!
//! Data between sublayers: the residual stream `x` is f32 `[tokens, hidden]`, updated in place
//! by the S4 and S6 GEMM epilogues; GEMM inputs are bf16 (normed activations, attention output,
//! MLP activation), as the AMX kernels take them. Linear weights are prepacked once at load
//! (`amx_kernels::PackedWeight`); the attention of a decode step is the ISPC paged kernel over
//! the host KV cache, which appends the new token's K/V itself.

use amx_kernels::attention::{attention_prefill_bf16, AttnShape};
use amx_kernels::{gemm_bf16, Epilogue, OutElem, PackedWeight, Residual};
use half::bf16;
use half::slice::HalfFloatSliceExt;
use ispc_kernels::{paged_decode_bf16, DecodeBatch, DecodeShape};
use rayon::prelude::*;

use crate::config::{Family, ModelConfig, OPT_POSITION_OFFSET};
use crate::kv::{HostKv, Sequences, StepIds};
use crate::profile::{span, Part};
use crate::weights::{Tensor, Weights};
use crate::{Error, Result};

fn kerr(e: impl std::fmt::Display) -> Error {
    Error::Kernel(e.to_string())
}

/// A layer's linears, prepacked for the CPU kernels.
pub struct CpuLayer {
    pub qkv: PackedWeight,
    pub o: PackedWeight,
    pub up: PackedWeight,
    pub down: PackedWeight,
}

impl CpuLayer {
    /// Packs a layer's linears into the memory tier their weights were loaded on (a CXL node
    /// stays the CXL node).
    pub fn pack(cfg: &ModelConfig, lw: &crate::weights::LayerWeights) -> Result<Self> {
        let p = |t: &Tensor, gate_up: bool| {
            PackedWeight::from_bf16_on(&t.data, t.rows(), t.cols(), gate_up, t.data.tier())
                .map_err(kerr)
        };
        Ok(CpuLayer {
            qkv: p(&lw.qkv_w, false)?,
            o: p(&lw.o_w, false)?,
            up: p(&lw.up_w, cfg.family == Family::Llama)?,
            down: p(&lw.down_w, false)?,
        })
    }
}

/// RoPE cos/sin per position, `[max_positions][head_dim / 2]`.
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl RopeTable {
    pub fn new(cfg: &ModelConfig) -> Self {
        let inv = cfg.rope_inv_freq();
        let half = inv.len();
        let mut cos = vec![0f32; cfg.max_positions * half];
        let mut sin = vec![0f32; cfg.max_positions * half];
        for p in 0..cfg.max_positions {
            for i in 0..half {
                let (s, c) = (p as f64 * inv[i]).sin_cos();
                cos[p * half + i] = c as f32;
                sin[p * half + i] = s as f32;
            }
        }
        RopeTable { cos, sin, half }
    }

    /// Rotates `heads` heads of one token row in place (HF's rotate-half convention).
    fn apply(&self, row: &mut [f32], heads: usize, pos: usize) {
        let (h2, d) = (self.half, 2 * self.half);
        let (c, s) = (&self.cos[pos * h2..][..h2], &self.sin[pos * h2..][..h2]);
        for h in 0..heads {
            let x = &mut row[h * d..(h + 1) * d];
            for i in 0..h2 {
                let (a, b) = (x[i], x[i + h2]);
                x[i] = a * c[i] - b * s[i];
                x[i + h2] = b * c[i] + a * s[i];
            }
        }
    }
}

/// The model, ready for the CPU: prepacked linears and the LM head. It owns the weights; the
/// linears' unpacked copies are freed once packed, so host memory holds each weight once.
/// Layers (and the head) that run elsewhere are not packed (`None`).
pub struct CpuModel {
    pub w: Weights,
    pub layers: Vec<Option<CpuLayer>>,
    pub head: Option<PackedWeight>,
    pub rope: Option<RopeTable>,
}

impl CpuModel {
    /// Every layer and the head on the CPU.
    pub fn new(w: Weights) -> Result<Self> {
        let all = vec![true; w.layers.len()];
        Self::with_layers(w, &all, true)
    }

    /// Packs the layers where `cpu[l]`, and the head if `head`.
    pub fn with_layers(mut w: Weights, cpu: &[bool], head: bool) -> Result<Self> {
        let cfg = w.config.clone();
        let mut layers = Vec::with_capacity(w.layers.len());
        for (lw, &on) in w.layers.iter_mut().zip(cpu) {
            if !on {
                layers.push(None);
                continue;
            }
            layers.push(Some(CpuLayer::pack(&cfg, lw)?));
            for t in [&mut lw.qkv_w, &mut lw.o_w, &mut lw.up_w, &mut lw.down_w] {
                *t = Tensor::empty();
            }
        }
        let head = if head {
            let h = w.lm_head();
            let p = PackedWeight::from_bf16_on(&h.data, h.rows(), h.cols(), false, h.data.tier())
                .map_err(kerr)?;
            if let Some(t) = w.lm_head.as_mut() {
                *t = Tensor::empty();
            }
            Some(p)
        } else {
            None
        };
        let rope = (cfg.family == Family::Llama).then(|| RopeTable::new(&cfg));
        Ok(CpuModel {
            w,
            layers,
            head,
            rope,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.w.config
    }

    fn layer(&self, l: usize) -> Result<&CpuLayer> {
        self.layers[l]
            .as_ref()
            .ok_or_else(|| Error::Placement(format!("layer {l} is not placed on the CPU")))
    }
}

/// LayerNorm (OPT) or RMSNorm (LLaMA) of each row of `x` (`[T, hidden]`, f32) into bf16 `out`,
/// rows on the pool, each row's sums and its scaling in 16 lanes (vectorized for the CPU's
/// widest tier: a scalar sum is a chain of dependent adds, about 0.2 ms a call at batch 64 on
/// OPT-30B's 7168, twice a layer).
pub fn norm_bf16(cfg: &ModelConfig, x: &[f32], w: &Tensor, b: Option<&Tensor>, out: &mut [bf16]) {
    let h = cfg.hidden;
    let wf: Vec<f32> = w.data[..h].iter().map(|v| v.to_f32()).collect();
    let bf: Vec<f32> = match b {
        Some(b) => b.data[..h].iter().map(|v| v.to_f32()).collect(),
        None => vec![0.0; h],
    };
    let row = NormRow {
        w: &wf,
        b: &bf,
        eps: cfg.norm_eps as f32,
        centre: cfg.family == Family::Opt,
    };
    let tier = platform::cpu_tier();
    platform::install(|| {
        out.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .for_each(|(o, xr)| norm_row(tier, &row, xr, o))
    });
}

platform::tier_vectorized! {
    /// One row of [`norm_bf16`] on the widest vectors `tier` allows.
    fn norm_row(row: &NormRow<'_>, x: &[f32], out: &mut [bf16]) {
        row.run(x, out)
    }
}

/// One row of [`norm_bf16`]: weight and bias in f32, whether the row is centred (LayerNorm).
struct NormRow<'a> {
    w: &'a [f32],
    b: &'a [f32],
    eps: f32,
    centre: bool,
}

/// Lanes of the norm's sums: independent accumulators the compiler keeps in vector registers.
const NORM_LANES: usize = 16;

impl NormRow<'_> {
    /// `Σ f(v)` over `xs` in [`NORM_LANES`] interleaved partial sums.
    #[inline(always)]
    fn sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
        let mut acc = [0f32; NORM_LANES];
        let chunks = xs.chunks_exact(NORM_LANES);
        let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += f(v);
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    fn run(&self, x: &[f32], out: &mut [bf16]) {
        let n = x.len() as f32;
        let mean = if self.centre {
            Self::sum(x, |v| v) / n
        } else {
            0.0
        };
        let inv = 1.0 / (Self::sum(x, |v| (v - mean) * (v - mean)) / n + self.eps).sqrt();
        for ((o, &v), (&w, &b)) in out.iter_mut().zip(x).zip(self.w.iter().zip(self.b)) {
            *o = bf16_rne((v - mean) * inv * w + b);
        }
    }
}

/// `v` rounded to bf16, to nearest even (NaN kept quiet), as `bf16::from_f32` does, written
/// with selects only so that it vectorizes.
#[inline(always)]
fn bf16_rne(v: f32) -> bf16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet = ((bits >> 16) | 0x40) as u16;
    bf16::from_bits(if v.is_nan() { quiet } else { rounded })
}

/// Embedding rows (+ OPT's learned positions) of `tokens` at `positions`, into f32.
pub fn embed(w: &Weights, tokens: &[u32], positions: &[usize], x: &mut [f32]) -> Result<()> {
    let h = w.config.hidden;
    if let Some(&tok) = tokens.iter().find(|&&t| t as usize >= w.config.vocab) {
        return Err(Error::Input(format!(
            "token id {tok} is outside the vocabulary of {}",
            w.config.vocab
        )));
    }
    let row = |(xr, (&tok, &pos)): (&mut [f32], (&u32, &usize))| {
        w.embed.data[tok as usize * h..][..h].convert_to_f32_slice(xr);
        if let Some(p) = &w.positions {
            let prow = &p.data[(pos + OPT_POSITION_OFFSET) * h..][..h];
            for (o, v) in xr.iter_mut().zip(prow) {
                *o += v.to_f32();
            }
        }
    };
    let x = &mut x[..tokens.len() * h];
    // A prefill's rows (hundreds of MB at batch 64 × 256 tokens) on the pool; a decode
    // step's few in place.
    if tokens.len() >= PAR_ROWS {
        platform::install(|| {
            x.par_chunks_mut(h)
                .zip(tokens.par_iter().zip(positions.par_iter()))
                .for_each(row)
        });
    } else {
        x.chunks_mut(h)
            .zip(tokens.iter().zip(positions))
            .for_each(row);
    }
    Ok(())
}

/// Rows from which [`embed`] works on the pool.
pub(crate) const PAR_ROWS: usize = 256;

/// Elements from which [`par_narrow`] and [`par_widen`] work on the pool: 1 MiB of f32. A
/// batch-64 residual of OPT-30B (1.8 MB of f32, between a CPU layer and a GPU layer of a decode
/// step) goes through the pool, which one thread converts in a tenth of a millisecond or more;
/// batch 1's row is converted in place.
pub(crate) const PAR_ELEMS: usize = 1 << 18;

/// `f(dst piece, src piece)` over matching pieces of `dst` and `src` (equal lengths), on the
/// pool from [`PAR_ELEMS`] elements, in place below.
fn par_pieces<D: Send, S: Sync>(dst: &mut [D], src: &[S], f: impl Fn(&mut [D], &[S]) + Sync) {
    assert_eq!(dst.len(), src.len(), "par_pieces: lengths differ");
    const PIECE: usize = 1 << 15;
    if src.len() >= PAR_ELEMS {
        platform::install(|| {
            dst.par_chunks_mut(PIECE)
                .zip(src.par_chunks(PIECE))
                .for_each(|(d, s)| f(d, s))
        });
    } else {
        f(dst, src);
    }
}

/// `src` widened to f32 into `dst` (a residual coming back from the GPU in bf16), on the pool
/// from [`PAR_ELEMS`] elements.
pub(crate) fn par_widen(dst: &mut [f32], src: &[bf16]) {
    par_pieces(dst, src, |d, s| s.convert_to_f32_slice(d));
}

/// `src` rounded to bf16 into `dst` (to nearest even, as the GPU's cast rounds: rows going up
/// to the GPU), on the pool from [`PAR_ELEMS`] elements.
pub(crate) fn par_narrow(dst: &mut [bf16], src: &[f32]) {
    par_pieces(dst, src, |d, s| {
        d.iter_mut().zip(s).for_each(|(o, &v)| *o = bf16_rne(v))
    });
}

/// S1 in f32 into `qkv` (`[T, qkv_dim]`, each row q, k, v side by side): norm, QKV projection
/// (+bias), RoPE.
fn s1_rows(m: &CpuModel, l: usize, x: &[f32], positions: &[usize], qkv: &mut [f32]) -> Result<()> {
    let cfg = m.config();
    let w = cfg.qkv_dim();
    s1_proj(m, l, x, positions.len(), qkv)?;
    if let Some(rope) = &m.rope {
        let (qd, kd) = (cfg.q_dim(), cfg.kv_dim());
        platform::install(|| {
            qkv.par_chunks_mut(w)
                .zip(positions.par_iter())
                .for_each(|(row, &pos)| {
                    rope.apply(&mut row[..qd], cfg.heads, pos);
                    rope.apply(&mut row[qd..qd + kd], cfg.kv_heads, pos);
                })
        });
    }
    Ok(())
}

/// S1's norm and QKV projection (+bias) of `t` rows into `qkv`, without RoPE; a bf16 `qkv`
/// is rounded by the projection's epilogue.
fn s1_proj<O: OutElem>(m: &CpuModel, l: usize, x: &[f32], t: usize, qkv: &mut [O]) -> Result<()> {
    let cfg = m.config();
    let lw = &m.w.layers[l];
    let ep = Epilogue {
        bias: lw.qkv_b.as_ref().map(|b| &b.data[..]),
        ..Default::default()
    };
    with_kept(&NORMED, t * cfg.hidden, |a| {
        norm_bf16(cfg, x, &lw.attn_norm_w, lw.attn_norm_b.as_ref(), a);
        gemm_bf16(a, t, cfg.hidden, &m.layer(l)?.qkv, qkv, ep).map_err(kerr)
    })
}

/// S1: norm, QKV projection (+bias), RoPE. Returns q `[T, heads·d]`, k, v `[T, kv_heads·d]`, bf16.
pub fn s1_qkv(
    m: &CpuModel,
    l: usize,
    x: &[f32],
    positions: &[usize],
) -> Result<(Vec<bf16>, Vec<bf16>, Vec<bf16>)> {
    let cfg = m.config();
    let t = positions.len();
    let (w, qd, kd) = (cfg.qkv_dim(), cfg.q_dim(), cfg.kv_dim());
    let mut qkv = vec![0f32; t * w];
    s1_rows(m, l, x, positions, &mut qkv)?;
    let mut q = vec![bf16::ZERO; t * qd];
    let mut k = vec![bf16::ZERO; t * kd];
    let mut v = vec![bf16::ZERO; t * kd];
    platform::install(|| {
        qkv.par_chunks(w)
            .zip(q.par_chunks_mut(qd))
            .zip(k.par_chunks_mut(kd).zip(v.par_chunks_mut(kd)))
            .for_each(|((row, qr), (kr, vr))| {
                qr.convert_from_f32_slice(&row[..qd]);
                kr.convert_from_f32_slice(&row[qd..qd + kd]);
                vr.convert_from_f32_slice(&row[qd + kd..]);
            })
    });
    Ok((q, k, v))
}

/// S1 into the bf16 rows `[T, qkv_dim]` at the start of `out`, q, k and v of a token side by
/// side (the layout the GPU's attention reads, for a CPU layer whose attention runs there; bf16
/// is what the GPU keeps, so the rows go up at half the bytes of f32). Without RoPE the
/// projection writes them rounded; with it, RoPE runs on the f32 rows first, as in [`s1_qkv`].
pub fn s1_qkv_rows(
    m: &CpuModel,
    l: usize,
    x: &[f32],
    positions: &[usize],
    out: &mut [bf16],
) -> Result<()> {
    let need = positions.len() * m.config().qkv_dim();
    let have = out.len();
    let out = out.get_mut(..need).ok_or_else(|| {
        Error::Kernel(format!(
            "S1 of layer {l}: the output holds {have} elements, {need} needed"
        ))
    })?;
    if m.rope.is_none() {
        return s1_proj(m, l, x, positions.len(), out);
    }
    with_kept(&QKV_F32, need, |rows| {
        s1_rows(m, l, x, positions, rows)?;
        par_narrow(out, rows);
        Ok(())
    })
}

/// S2+S3 for a prefill: causal attention of each prompt over itself (GQA), bf16 in and out,
/// with amx-kernels' flash attention. `lens` are the prompts' lengths; rows of q/k/v are the
/// prompts' tokens back to back.
pub fn prefill_attention(
    cfg: &ModelConfig,
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    lens: &[usize],
) -> Result<Vec<bf16>> {
    let mut cu = vec![0usize];
    for &l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    let shape = AttnShape {
        num_heads: cfg.heads,
        num_kv_heads: cfg.kv_heads,
        head_dim: cfg.head_dim,
    };
    let mut out = vec![bf16::ZERO; cu[lens.len()] * cfg.q_dim()];
    let scale = 1.0 / (cfg.head_dim as f32).sqrt();
    attention_prefill_bf16(q, k, v, &cu, &cu, shape, scale, &mut out).map_err(kerr)?;
    Ok(out)
}

/// S4: output projection (+bias) added into the residual stream.
pub fn s4_out(m: &CpuModel, l: usize, att: &[bf16], x: &mut [f32], tokens: usize) -> Result<()> {
    let lw = &m.w.layers[l];
    let ep = Epilogue {
        bias: lw.o_b.as_ref().map(|b| &b.data[..]),
        residual: Residual::Output,
        ..Default::default()
    };
    gemm_bf16(att, tokens, m.config().q_dim(), &m.layer(l)?.o, x, ep).map_err(kerr)
}

/// S5 + S6: norm, FC1+ReLU or gate/up+SiLU·mul, FC2 or down (+bias) into the residual stream.
pub fn s56_mlp(m: &CpuModel, l: usize, x: &mut [f32], tokens: usize) -> Result<()> {
    let cfg = m.config();
    let lw = &m.w.layers[l];
    with_kept(&ACT, tokens * cfg.ffn, |act| {
        span(Part::Up, || {
            with_kept(&NORMED, tokens * cfg.hidden, |a| {
                norm_bf16(cfg, x, &lw.mlp_norm_w, lw.mlp_norm_b.as_ref(), a);
                let ep = match cfg.family {
                    Family::Opt => {
                        Epilogue::bias_relu(&lw.up_b.as_ref().expect("OPT has FC1 bias").data)
                    }
                    Family::Llama => Epilogue::silu_mul(),
                };
                gemm_bf16(a, tokens, cfg.hidden, &m.layer(l)?.up, act, ep).map_err(kerr)
            })
        })?;
        let ep = Epilogue {
            bias: lw.down_b.as_ref().map(|b| &b.data[..]),
            residual: Residual::Output,
            ..Default::default()
        };
        span(Part::Down, || {
            gemm_bf16(act, tokens, cfg.ffn, &m.layer(l)?.down, x, ep).map_err(kerr)
        })
    })
}

thread_local! {
    /// The calling thread's normed rows (S1's and S5's GEMM input) and MLP activation (S5's
    /// output, S6's input), kept between layers.
    static NORMED: std::cell::RefCell<Vec<bf16>> = const { std::cell::RefCell::new(Vec::new()) };
    static ACT: std::cell::RefCell<Vec<bf16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// S1's f32 rows before RoPE and their rounding, where they go up to the GPU.
    static QKV_F32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers of up to this many elements stay with the thread that used them (a batch-64 decode
/// step's largest, OPT-30B's MLP activation, is 1.8 M); larger ones (a prefill's) are allocated
/// for the call and freed after it.
const KEEP_ELEMS: usize = 1 << 24;

/// Runs `f` with `n` elements of the calling thread's buffer `key`, kept between calls (a
/// layer's buffers were allocated and zero-filled on one thread at every layer: 4.6 MB at batch
/// 64 on OPT-30B). Its contents are whatever the last user left: `f` writes all `n` before it
/// reads any. The slice starts on a 64-byte line, so that the AMX GEMM can read its rows in
/// place.
fn with_kept<T: Copy + Default, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    n: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let on_line = |v: &mut [T]| {
        let off = amx_kernels::scratch::line_offset(v.as_ptr());
        f(&mut v[off..off + n])
    };
    // Room for the offset to the first line: 64 bytes of the smallest element.
    let pad = 64 / std::mem::size_of::<T>().max(1);
    if n > KEEP_ELEMS {
        return on_line(&mut vec![T::default(); n + pad]);
    }
    amx_kernels::scratch::with_buf(key, n + pad, |v| on_line(v))
}

/// Final norm and LM head over the given rows of `x`: logits `[rows.len(), vocab]`.
pub fn lm_head(m: &CpuModel, x: &[f32], rows: &[usize]) -> Result<Vec<f32>> {
    span(Part::Head, || lm_head_inner(m, x, rows))
}

fn lm_head_inner(m: &CpuModel, x: &[f32], rows: &[usize]) -> Result<Vec<f32>> {
    let cfg = m.config();
    let h = cfg.hidden;
    let picked: Vec<f32> = rows
        .iter()
        .flat_map(|&r| x[r * h..(r + 1) * h].iter().copied())
        .collect();
    let mut a = vec![bf16::ZERO; rows.len() * h];
    norm_bf16(
        cfg,
        &picked,
        &m.w.final_norm_w,
        m.w.final_norm_b.as_ref(),
        &mut a,
    );
    let mut logits = vec![0f32; rows.len() * cfg.vocab];
    gemm_bf16(
        &a,
        rows.len(),
        h,
        m.head
            .as_ref()
            .ok_or_else(|| Error::Placement("the LM head is not placed on the CPU".into()))?,
        &mut logits,
        Epilogue::default(),
    )
    .map_err(kerr)?;
    Ok(logits)
}

/// Index of the largest logit of each row (greedy decoding).
pub fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits
        .chunks(vocab)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                    if v > b.1 {
                        (i, v)
                    } else {
                        b
                    }
                })
                .0 as u32
        })
        .collect()
}

/// S2+S3 of layer `l` on the CPU over the host KV cache: for a prefill, the step's K/V are
/// written to their slots and each prompt attends to itself; for a decode, the ISPC kernel
/// appends the new K/V and attends over the whole context. Returns `[tokens, q_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn cpu_attention(
    cfg: &ModelConfig,
    kv: &mut HostKv,
    l: usize,
    ids: &StepIds,
    prefill: bool,
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
) -> Result<Vec<bf16>> {
    if prefill {
        kv.write(l, &ids.slots, k, v);
        return prefill_attention(cfg, q, k, v, &ids.lens);
    }
    let mut att = vec![bf16::ZERO; ids.tokens.len() * cfg.q_dim()];
    decode_attention(cfg, kv, l, ids, q, k, v, &mut att)?;
    Ok(att)
}

/// Decode attention of layer `l` on the CPU (ISPC), which appends the new K/V first.
fn decode_attention(
    cfg: &ModelConfig,
    kv: &mut HostKv,
    l: usize,
    ids: &StepIds,
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    out: &mut [bf16],
) -> Result<()> {
    let shape = DecodeShape {
        num_q_heads: cfg.heads,
        num_kv_heads: cfg.kv_heads,
        head_dim: cfg.head_dim,
        scale: 1.0 / (cfg.head_dim as f32).sqrt(),
    };
    let batch = DecodeBatch {
        q,
        new_k: k,
        new_v: v,
        block_tables: &ids.tables,
        max_blocks: ids.width,
        context_lens: &ids.ctx,
    };
    paged_decode_bf16(&shape, &batch, &mut kv.k[l], &mut kv.v[l], out).map_err(kerr)
}

/// One CPU layer over a step's tokens: S1, attention (prefill or decode), S4, S5 + S6.
pub fn cpu_layer(
    m: &CpuModel,
    kv: &mut HostKv,
    l: usize,
    ids: &StepIds,
    prefill: bool,
    x: &mut [f32],
) -> Result<()> {
    let cfg = m.config();
    let t = ids.tokens.len();
    let (q, k, v) = span(Part::Qkv, || s1_qkv(m, l, x, &ids.positions))?;
    let att = span(Part::Attention, || {
        cpu_attention(cfg, kv, l, ids, prefill, &q, &k, &v)
    })?;
    span(Part::Out, || s4_out(m, l, &att, x, t))?;
    s56_mlp(m, l, x, t)
}

/// A batch of sequences generated entirely on the CPU, KV cache in host memory.
pub struct CpuSession<'m> {
    pub model: &'m CpuModel,
    pub kv: HostKv,
    pub seqs: Sequences,
}

impl<'m> CpuSession<'m> {
    /// A session with `num_blocks` KV blocks per layer on a host tier.
    pub fn new(model: &'m CpuModel, num_blocks: usize, tier: platform::MemTier) -> Result<Self> {
        let c = model.config();
        let kv = HostKv::new(
            &vec![true; c.layers],
            num_blocks,
            c.kv_heads,
            c.head_dim,
            tier,
        )?;
        Ok(CpuSession {
            model,
            kv,
            seqs: Sequences::new(num_blocks, c.max_positions),
        })
    }

    fn step(&mut self, ids: &StepIds, prefill: bool) -> Result<Vec<f32>> {
        let m = self.model;
        let cfg = m.config();
        let mut x = vec![0f32; ids.tokens.len() * cfg.hidden];
        embed(&m.w, &ids.tokens, &ids.positions, &mut x)?;
        for l in 0..cfg.layers {
            cpu_layer(m, &mut self.kv, l, ids, prefill, &mut x)?;
        }
        lm_head(m, &x, &ids.last_rows)
    }

    /// Prefills new sequences; returns the logits of each prompt's last token `[B, vocab]`.
    pub fn prefill(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<f32>> {
        let ids = self.seqs.prefill(prompts)?;
        self.step(&ids, true)
    }

    /// One decode step: one new token per sequence (in order); returns logits `[B, vocab]`.
    pub fn decode(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let ids = self.seqs.decode(tokens)?;
        self.step(&ids, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half_on_every_kind_of_value() {
        let mut specials = vec![
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
            1.0 + f32::EPSILON,
            // Ties: exactly half an ulp of bf16, with an even and with an odd last bit.
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x7f7f_ffff),
            f32::from_bits(0x0000_8000),
        ];
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        specials.extend((0..200_000).map(|_| f32::from_bits(rng.gen())));
        for v in specials {
            let (got, want) = (bf16_rne(v), bf16::from_f32(v));
            if v.is_nan() {
                assert!(got.is_nan(), "{v:?}: {got:?}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{v:e} ({:#x})", v.to_bits());
            }
        }
    }

    /// The vectorized norm against the f64 reference, both families, a width that is not a
    /// multiple of the lanes, rows centred far from 0, on the pool; the output poisoned first.
    #[test]
    fn norm_matches_reference_within_a_bf16_rounding() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let mut rnd = || rng.gen_range(-1.0f32..1.0);
        for (preset, hidden) in [("opt-1.3b", 1000), ("llama3-8b", 4096 + 24)] {
            let cfg = ModelConfig {
                hidden,
                ..ModelConfig::preset(preset).unwrap()
            };
            let tensor = |v: Vec<f32>| {
                let mut data =
                    platform::HostBuf::<bf16>::zeroed(v.len(), platform::MemTier::Pageable)
                        .unwrap();
                data.convert_from_f32_slice(&v);
                Tensor {
                    data,
                    shape: vec![v.len()],
                }
            };
            let w = tensor((0..hidden).map(|_| 1.0 + 0.5 * rnd()).collect());
            let b = tensor((0..hidden).map(|_| 0.1 * rnd()).collect());
            let b = (cfg.family == Family::Opt).then_some(&b);
            let rows = 37;
            let x: Vec<f32> = (0..rows * hidden)
                .map(|i| 3.0 * rnd() + (i / hidden) as f32 * 0.75)
                .collect();
            let mut out = vec![bf16::NAN; rows * hidden];
            norm_bf16(&cfg, &x, &w, b, &mut out);
            let want = crate::reference::norm(&cfg, &x, &w, b);
            for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                let g = g.to_f32();
                // One bf16 rounding (2^-8 relative) plus f32 sums' error.
                let tol = e.abs() / 256.0 + 1e-3;
                assert!((g - e).abs() <= tol, "{preset} [{i}]: {g} vs {e}");
            }
        }
    }

    #[test]
    fn rope_table_matches_reference_rotation() {
        let cfg = ModelConfig::preset("llama3-8b").unwrap();
        let t = RopeTable::new(&ModelConfig {
            max_positions: 64,
            ..cfg.clone()
        });
        let mut row: Vec<f32> = (0..cfg.head_dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut want = row.clone();
        t.apply(&mut row, 1, 33);
        crate::reference::rope(&cfg, &mut want, 1, &[33]);
        for (a, b) in row.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn embed_rows_match_token_and_position_rows_on_and_off_the_pool() {
        let cfg = ModelConfig {
            layers: 1,
            vocab: 1000,
            ..ModelConfig::preset("opt-1.3b").unwrap()
        };
        let w = Weights::dummy(&cfg, platform::MemTier::Pageable, 7, &|_| {}).unwrap();
        let h = cfg.hidden;
        // PAR_ROWS and more rows go through the pool, fewer in place; both against the rows.
        for n in [3, PAR_ROWS + 45] {
            let tokens: Vec<u32> = (0..n).map(|i| (i * 7919 % 1000) as u32).collect();
            let positions: Vec<usize> = (0..n).map(|i| i % 512).collect();
            let mut x = vec![f32::NAN; n * h];
            embed(&w, &tokens, &positions, &mut x).unwrap();
            let p = w.positions.as_ref().expect("OPT has learned positions");
            for (t, (&tok, &pos)) in tokens.iter().zip(&positions).enumerate() {
                for i in [0, h / 2, h - 1] {
                    let want = w.embed.data[tok as usize * h + i].to_f32()
                        + p.data[(pos + OPT_POSITION_OFFSET) * h + i].to_f32();
                    assert_eq!(x[t * h + i], want, "{n} rows: row {t}, column {i}");
                }
            }
            assert!(
                x.iter().all(|v| v.is_finite()),
                "{n} rows: a row left unwritten"
            );
        }
        let e = embed(&w, &[5, 1000], &[0, 1], &mut vec![0.0; 2 * h]).unwrap_err();
        assert!(e.to_string().contains("1000"), "{e}");
    }

    #[test]
    fn par_narrow_and_widen_match_in_place_on_and_off_the_pool() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        // Below PAR_ELEMS in place; from it on the pool, with a last piece shorter than the rest.
        for n in [7168, PAR_ELEMS + 12345] {
            let f: Vec<f32> = (0..n).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
            let b: Vec<bf16> = f.iter().map(|&v| bf16::from_f32(v)).collect();
            let mut got = vec![bf16::NAN; n];
            par_narrow(&mut got, &f);
            for (i, (g, w)) in got.iter().zip(&b).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "par_narrow of {n}: element {i}");
            }
            let mut got = vec![f32::NAN; n];
            par_widen(&mut got, &b);
            for (i, (g, w)) in got.iter().zip(&b).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_f32().to_bits(),
                    "par_widen of {n}: element {i}"
                );
            }
        }
    }

    #[test]
    fn argmax_picks_largest() {
        assert_eq!(argmax_rows(&[0.0, 3.0, 1.0, 5.0, -1.0, 2.0], 3), vec![1, 0]);
    }
}
