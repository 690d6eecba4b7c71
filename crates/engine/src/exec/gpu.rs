//! GPU execution of whole layers (LIA policy (0,0,0,0,0,0)), with the first layers' weights
//! resident in HBM and the others streamed from host memory over PCIe into two staging
//! buffers, the next streamed layer copied on a copy stream while this one computes.
//!
//! Each layer's tensors live in one flat bf16 buffer (the same offsets for every layer, see
//! [`FlatLayout`]), so that streaming a layer is one host→device copy. The residual stream is
//! bf16 on the GPU, and each norm is fused with the residual add of the sublayer before it
//! (`add_rms_norm` / `add_layer_norm`). Embeddings are gathered on the host (the table stays
//! there) and uploaded; the final norm, LM head and argmax run on the GPU.

use std::sync::Arc;

use cuda_kernels::attention::{
    paged_decode::DecodeSeqs, paged_decode_bf16, prefill_attention_append_bf16,
};
use cuda_kernels::elementwise::{silu_mul_bf16, GateUp};
use cuda_kernels::gemm::{Blas, Epilogue as GEpi};
use cuda_kernels::kv::{kv_append_bf16, KvShape};
use cuda_kernels::norm::{add_layer_norm_bf16, add_rms_norm_bf16, layer_norm_bf16, rms_norm_bf16};
use cuda_kernels::position::{rope_bf16, HeadRows};
use cuda_kernels::sampling::argmax_bf16;
use cuda_kernels::transfer::{copy_blocks_h2d, PinnedBuf};
use cuda_kernels::{DeviceIds, Gpu};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, CudaView};
use half::bf16;

use crate::config::{Family, ModelConfig, OPT_POSITION_OFFSET};
use crate::kv::{BlockAllocator, SeqKv, BLOCK_TOKENS};
use crate::placement::LayerPlacement;
use crate::weights::{LayerWeights, Tensor, Weights};
use crate::{Error, Result};

fn gerr(e: impl std::fmt::Display) -> Error {
    Error::Kernel(e.to_string())
}

/// Offsets of a layer's tensors in its flat buffer, in this order: attention norm weight and
/// bias, QKV weight and bias, O weight and bias, MLP norm weight and bias, up weight and bias,
/// down weight and bias. An absent tensor (no biases in LLaMA) has length 0.
#[derive(Clone, Copy, Debug)]
pub struct FlatLayout {
    pub at: [(usize, usize); 12],
    pub len: usize,
}

fn layer_tensors(lw: &LayerWeights) -> [Option<&Tensor>; 12] {
    [
        Some(&lw.attn_norm_w),
        lw.attn_norm_b.as_ref(),
        Some(&lw.qkv_w),
        lw.qkv_b.as_ref(),
        Some(&lw.o_w),
        lw.o_b.as_ref(),
        Some(&lw.mlp_norm_w),
        lw.mlp_norm_b.as_ref(),
        Some(&lw.up_w),
        lw.up_b.as_ref(),
        Some(&lw.down_w),
        lw.down_b.as_ref(),
    ]
}

impl FlatLayout {
    fn of(lw: &LayerWeights) -> Self {
        let mut at = [(0, 0); 12];
        let mut off = 0;
        for (i, t) in layer_tensors(lw).iter().enumerate() {
            let n = t.map_or(0, |t| t.data.len());
            at[i] = (off, n);
            // 16-byte aligned starts for every tensor (cuBLASLt and vector loads want them).
            off += n.next_multiple_of(8);
        }
        FlatLayout { at, len: off }
    }

    fn flatten(&self, lw: &LayerWeights, out: &mut [bf16]) {
        for (i, t) in layer_tensors(lw).iter().enumerate() {
            if let Some(t) = t {
                let (o, n) = self.at[i];
                out[o..o + n].copy_from_slice(&t.data);
            }
        }
    }
}

const ATTN_NORM_W: usize = 0;
const ATTN_NORM_B: usize = 1;
const QKV_W: usize = 2;
const QKV_B: usize = 3;
const O_W: usize = 4;
const O_B: usize = 5;
const MLP_NORM_W: usize = 6;
const MLP_NORM_B: usize = 7;
const UP_W: usize = 8;
const UP_B: usize = 9;
const DOWN_W: usize = 10;
const DOWN_B: usize = 11;

/// Host copy of a streamed layer: pinned (full PCIe speed) or pageable.
enum HostLayer {
    Pinned(PinnedBuf<bf16>),
    Pageable(Vec<bf16>),
}

enum LayerHome {
    Resident(CudaSlice<bf16>),
    Streamed(HostLayer),
}

/// The model on the GPU: resident layers in HBM, streamed layers' host copies, two staging
/// buffers, the head.
pub struct GpuModel {
    pub gpu: Arc<Gpu>,
    pub cfg: ModelConfig,
    pub stream: Arc<CudaStream>,
    copy_stream: Arc<CudaStream>,
    blas: Blas,
    layout: FlatLayout,
    layers: Vec<LayerHome>,
    staging: Vec<CudaSlice<bf16>>,
    /// Host tables for the embedding gather.
    embed: Tensor,
    positions: Option<Tensor>,
    final_norm_w: CudaSlice<bf16>,
    final_norm_b: Option<CudaSlice<bf16>>,
    head: CudaSlice<bf16>,
    inv_freq: CudaSlice<f32>,
    /// Per staging buffer: the compute stream is done with it / its next layer has arrived.
    free: Vec<CudaEvent>,
    loaded: Vec<CudaEvent>,
}

impl GpuModel {
    /// Moves `w` onto the GPU as `placement` says (resident or streamed per layer). Streamed
    /// layers' host copies are pinned when `pin` is set. Every layer must run all its sublayers
    /// on the GPU.
    pub fn new(
        gpu: Arc<Gpu>,
        mut w: Weights,
        placement: &[LayerPlacement],
        pin: bool,
    ) -> Result<Self> {
        if placement.len() != w.layers.len() {
            return Err(Error::Placement(format!(
                "{} placements for {} layers",
                placement.len(),
                w.layers.len()
            )));
        }
        if let Some((i, _)) = placement
            .iter()
            .enumerate()
            .find(|(_, p)| p.prefill.any_cpu() || p.decode.any_cpu())
        {
            return Err(Error::Placement(format!(
                "layer {i} has CPU sublayers; the GPU executor runs (0,0,0,0,0,0) layers"
            )));
        }
        let stream = gpu.new_stream().map_err(gerr)?;
        let copy_stream = gpu.new_stream().map_err(gerr)?;
        let blas = Blas::new(&gpu, stream.clone()).map_err(gerr)?;
        let layout = FlatLayout::of(&w.layers[0]);
        let cfg = w.config.clone();
        let mut layers = Vec::with_capacity(w.layers.len());
        let mut flat = vec![bf16::ZERO; layout.len];
        for (lw, p) in std::mem::take(&mut w.layers).into_iter().zip(placement) {
            layout.flatten(&lw, &mut flat);
            drop(lw);
            layers.push(if p.gpu_resident {
                LayerHome::Resident(stream.clone_htod(&flat).map_err(gerr)?)
            } else if pin {
                let mut pb = PinnedBuf::<bf16>::alloc(&gpu, layout.len).map_err(gerr)?;
                pb.as_mut_slice().map_err(gerr)?.copy_from_slice(&flat);
                LayerHome::Streamed(HostLayer::Pinned(pb))
            } else {
                LayerHome::Streamed(HostLayer::Pageable(flat.clone()))
            });
        }
        let any_streamed = layers.iter().any(|l| matches!(l, LayerHome::Streamed(_)));
        let staging = if any_streamed {
            vec![
                stream.alloc_zeros::<bf16>(layout.len).map_err(gerr)?,
                stream.alloc_zeros::<bf16>(layout.len).map_err(gerr)?,
            ]
        } else {
            vec![]
        };
        let up = |t: &Tensor| stream.clone_htod(&t.data[..]).map_err(gerr);
        let ev = |_| gpu.ctx().new_event(None).map_err(gerr);
        let free = (0..2).map(ev).collect::<Result<Vec<_>>>()?;
        let loaded = (0..2).map(ev).collect::<Result<Vec<_>>>()?;
        for e in &free {
            e.record(&stream).map_err(gerr)?;
        }
        let inv: Vec<f32> = if cfg.family == Family::Llama {
            cfg.rope_inv_freq().iter().map(|&x| x as f32).collect()
        } else {
            vec![0.0]
        };
        let m = GpuModel {
            final_norm_w: up(&w.final_norm_w)?,
            final_norm_b: w.final_norm_b.as_ref().map(up).transpose()?,
            head: up(w.lm_head())?,
            inv_freq: stream.clone_htod(&inv).map_err(gerr)?,
            embed: w.embed,
            positions: w.positions,
            gpu,
            cfg,
            stream,
            copy_stream,
            blas,
            layout,
            layers,
            staging,
            free,
            loaded,
        };
        m.stream.synchronize().map_err(gerr)?;
        Ok(m)
    }

    fn view<'a>(&self, buf: &'a CudaSlice<bf16>, t: usize) -> Option<CudaView<'a, bf16>> {
        let (o, n) = self.layout.at[t];
        (n > 0).then(|| buf.slice(o..o + n))
    }

    /// Queues the copy of streamed layer `l` into staging buffer `s` on the copy stream, after
    /// the compute stream has finished with that buffer (`free`).
    fn load(&mut self, l: usize, s: usize) -> Result<()> {
        let LayerHome::Streamed(host) = &self.layers[l] else {
            return Ok(());
        };
        self.copy_stream.wait(&self.free[s]).map_err(gerr)?;
        let dst = &mut self.staging[s];
        match host {
            HostLayer::Pinned(pb) => {
                copy_blocks_h2d(&self.copy_stream, pb, dst, self.layout.len, &[(0, 0)])
                    .map_err(gerr)?
            }
            HostLayer::Pageable(v) => self.copy_stream.memcpy_htod(&v[..], dst).map_err(gerr)?,
        }
        self.loaded[s].record(&self.copy_stream).map_err(gerr)?;
        Ok(())
    }
}

/// Step buffers on the GPU, sized for `t` tokens.
struct Acts {
    x: CudaSlice<bf16>,
    a: CudaSlice<bf16>,
    qkv: CudaSlice<bf16>,
    att: CudaSlice<bf16>,
    delta: CudaSlice<bf16>,
    up: CudaSlice<bf16>,
    act: CudaSlice<bf16>,
}

/// A batch of sequences on the GPU, KV cache in HBM.
pub struct GpuSession<'m> {
    pub model: &'m mut GpuModel,
    kc: Vec<CudaSlice<bf16>>,
    vc: Vec<CudaSlice<bf16>>,
    shape: KvShape,
    pub alloc: BlockAllocator,
    pub seqs: Vec<SeqKv>,
}

impl<'m> GpuSession<'m> {
    pub fn new(model: &'m mut GpuModel, num_blocks: usize) -> Result<Self> {
        let c = &model.cfg;
        let shape = KvShape {
            num_blocks,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        };
        let s = &model.stream;
        let mut kc = Vec::new();
        let mut vc = Vec::new();
        for _ in 0..c.layers {
            kc.push(s.alloc_zeros::<bf16>(shape.elems()).map_err(gerr)?);
            vc.push(s.alloc_zeros::<bf16>(shape.elems()).map_err(gerr)?);
        }
        Ok(GpuSession {
            model,
            kc,
            vc,
            shape,
            alloc: BlockAllocator::new(num_blocks),
            seqs: Vec::new(),
        })
    }

    fn acts(&self, t: usize) -> Result<Acts> {
        let c = &self.model.cfg;
        let s = &self.model.stream;
        let z = |n: usize| s.alloc_zeros::<bf16>(n.max(1)).map_err(gerr);
        let up_cols = if c.family == Family::Opt {
            c.ffn
        } else {
            2 * c.ffn
        };
        Ok(Acts {
            x: z(t * c.hidden)?,
            a: z(t * c.hidden)?,
            qkv: z(t * c.qkv_dim())?,
            att: z(t * c.q_dim())?,
            delta: z(t * c.hidden)?,
            up: z(t * up_cols)?,
            act: z(t * c.ffn)?,
        })
    }

    /// Host-side embedding gather (+ OPT positions), uploaded as the bf16 residual stream.
    fn embed(&self, tokens: &[u32], positions: &[usize], x: &mut CudaSlice<bf16>) -> Result<()> {
        let m = &self.model;
        let h = m.cfg.hidden;
        let mut host = vec![bf16::ZERO; tokens.len() * h];
        for (t, (&tok, &pos)) in tokens.iter().zip(positions).enumerate() {
            if tok as usize >= m.cfg.vocab {
                return Err(Error::Input(format!(
                    "token id {tok} is outside the vocabulary of {}",
                    m.cfg.vocab
                )));
            }
            let row = &m.embed.data[tok as usize * h..][..h];
            let out = &mut host[t * h..(t + 1) * h];
            match &m.positions {
                None => out.copy_from_slice(row),
                Some(p) => {
                    let prow = &p.data[(pos + OPT_POSITION_OFFSET) * h..][..h];
                    for i in 0..h {
                        out[i] = bf16::from_f32(row[i].to_f32() + prow[i].to_f32());
                    }
                }
            }
        }
        m.stream.memcpy_htod(&host, x).map_err(gerr)
    }

    /// `a = norm(x)` (first call) or `x += delta; a = norm(x)`, with weight/bias at `w`, `b`.
    fn norm(
        &self,
        t: usize,
        x: &mut CudaSlice<bf16>,
        delta: Option<&CudaSlice<bf16>>,
        w: &CudaView<bf16>,
        b: Option<&CudaView<bf16>>,
        a: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        let m = &self.model;
        let (g, s, h, eps) = (&*m.gpu, &*m.stream, m.cfg.hidden, m.cfg.norm_eps as f32);
        match (m.cfg.family, delta) {
            (Family::Llama, None) => rms_norm_bf16(g, s, t, h, x, w, eps, a),
            (Family::Llama, Some(d)) => add_rms_norm_bf16(g, s, t, h, x, d, w, eps, a),
            (Family::Opt, None) => {
                layer_norm_bf16(g, s, t, h, x, w, b.expect("OPT norm bias"), eps, a)
            }
            (Family::Opt, Some(d)) => {
                add_layer_norm_bf16(g, s, t, h, x, d, w, b.expect("OPT norm bias"), eps, a)
            }
        }
        .map_err(gerr)
    }

    /// Runs every layer over `t` tokens. `attend` does S2+S3 for one layer (prefill or decode).
    fn layers(
        &mut self,
        t: usize,
        acts: &mut Acts,
        positions: &DeviceIds,
        attend: &mut dyn FnMut(&mut Self, usize, &mut Acts) -> Result<()>,
    ) -> Result<()> {
        let nl = self.model.cfg.layers;
        let streamed: Vec<usize> = (0..nl)
            .filter(|&l| matches!(self.model.layers[l], LayerHome::Streamed(_)))
            .collect();
        // Prefetch the first streamed layer (and the second) before any compute.
        for (i, &l) in streamed.iter().take(2).enumerate() {
            self.model.load(l, i)?;
        }
        for l in 0..nl {
            let slot = streamed.iter().position(|&x| x == l);
            if let Some(i) = slot {
                self.model
                    .stream
                    .wait(&self.model.loaded[i % 2])
                    .map_err(gerr)?;
            }
            self.layer(l, slot.map(|i| i % 2), t, acts, positions, attend)?;
            if let Some(i) = slot {
                let s = i % 2;
                self.model.free[s]
                    .record(&self.model.stream)
                    .map_err(gerr)?;
                if let Some(&next) = streamed.get(i + 2) {
                    self.model.load(next, s)?;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &mut self,
        l: usize,
        staging: Option<usize>,
        t: usize,
        a: &mut Acts,
        positions: &DeviceIds,
        attend: &mut dyn FnMut(&mut Self, usize, &mut Acts) -> Result<()>,
    ) -> Result<()> {
        let c = &self.model.cfg.clone();
        let m: &GpuModel = self.model;
        let buf = match (&m.layers[l], staging) {
            (LayerHome::Resident(b), _) => b,
            (LayerHome::Streamed(_), Some(s)) => &m.staging[s],
            (LayerHome::Streamed(_), None) => unreachable!("streamed layer without staging"),
        };
        let v = |i| m.view(buf, i);
        // S1: (x += delta of the previous layer;) a = norm(x); qkv = a·Wqkvᵀ + b; RoPE.
        let delta = (l > 0).then_some(&a.delta);
        let (nw, nb) = (v(ATTN_NORM_W).unwrap(), v(ATTN_NORM_B));
        self.norm(t, &mut a.x, delta, &nw, nb.as_ref(), &mut a.a)?;
        let qb = v(QKV_B);
        let ep = qb.as_ref().map_or(GEpi::None, GEpi::Bias);
        m.blas
            .linear_bf16(
                t,
                c.qkv_dim(),
                c.hidden,
                &a.a,
                &v(QKV_W).unwrap(),
                ep,
                false,
                &mut a.qkv,
            )
            .map_err(gerr)?;
        if c.family == Family::Llama {
            let (g, s) = (&*m.gpu, &*m.stream);
            let qd = c.q_dim();
            let mut q = a.qkv.slice_mut(0..);
            rope_bf16(
                g,
                s,
                &mut q,
                HeadRows {
                    tokens: t,
                    heads: c.heads,
                    head_dim: c.head_dim,
                    token_stride: c.qkv_dim(),
                },
                positions,
                &m.inv_freq,
            )
            .map_err(gerr)?;
            let mut k = a.qkv.slice_mut(qd..);
            rope_bf16(
                g,
                s,
                &mut k,
                HeadRows {
                    tokens: t,
                    heads: c.kv_heads,
                    head_dim: c.head_dim,
                    token_stride: c.qkv_dim(),
                },
                positions,
                &m.inv_freq,
            )
            .map_err(gerr)?;
        }
        // S2 + S3.
        attend(self, l, a)?;
        let m: &GpuModel = self.model;
        let buf = match (&m.layers[l], staging) {
            (LayerHome::Resident(b), _) => b,
            (_, Some(s)) => &m.staging[s],
            _ => unreachable!(),
        };
        let v = |i| m.view(buf, i);
        // S4: delta = att·Woᵀ + b.
        let ob = v(O_B);
        let ep = ob.as_ref().map_or(GEpi::None, GEpi::Bias);
        m.blas
            .linear_bf16(
                t,
                c.hidden,
                c.q_dim(),
                &a.att,
                &v(O_W).unwrap(),
                ep,
                false,
                &mut a.delta,
            )
            .map_err(gerr)?;
        // S5: x += delta; a = norm(x); up (+bias, ReLU) or gate/up then SiLU·mul.
        let (nw, nb) = (v(MLP_NORM_W).unwrap(), v(MLP_NORM_B));
        self.norm(t, &mut a.x, Some(&a.delta), &nw, nb.as_ref(), &mut a.a)?;
        let m: &GpuModel = self.model;
        let v = |i| m.view(buf, i);
        let ub = v(UP_B);
        match c.family {
            Family::Opt => {
                let ep = GEpi::BiasRelu(ub.as_ref().expect("OPT FC1 bias"));
                m.blas
                    .linear_bf16(
                        t,
                        c.ffn,
                        c.hidden,
                        &a.a,
                        &v(UP_W).unwrap(),
                        ep,
                        false,
                        &mut a.act,
                    )
                    .map_err(gerr)?;
            }
            Family::Llama => {
                m.blas
                    .linear_bf16(
                        t,
                        2 * c.ffn,
                        c.hidden,
                        &a.a,
                        &v(UP_W).unwrap(),
                        GEpi::None,
                        false,
                        &mut a.up,
                    )
                    .map_err(gerr)?;
                silu_mul_bf16(
                    &m.gpu,
                    &m.stream,
                    t,
                    c.ffn,
                    &a.up,
                    GateUp::fused(c.ffn),
                    &mut a.act,
                )
                .map_err(gerr)?;
            }
        }
        // S6: delta = act·Wdownᵀ + b (added to x by the next norm).
        let db = v(DOWN_B);
        let ep = db.as_ref().map_or(GEpi::None, GEpi::Bias);
        m.blas
            .linear_bf16(
                t,
                c.hidden,
                c.ffn,
                &a.act,
                &v(DOWN_W).unwrap(),
                ep,
                false,
                &mut a.delta,
            )
            .map_err(gerr)
    }

    /// Final norm, LM head and argmax over the rows `rows` of the residual stream.
    fn head(
        &self,
        t: usize,
        a: &mut Acts,
        rows: &[i32],
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let m = &self.model;
        let c = &m.cfg;
        let (g, s) = (&*m.gpu, &m.stream);
        let fb = m.final_norm_b.as_ref().map(|b| b.slice(0..));
        self.norm(
            t,
            &mut a.x,
            Some(&a.delta),
            &m.final_norm_w.slice(0..),
            fb.as_ref(),
            &mut a.a,
        )?;
        let ids = DeviceIds::upload(s, rows).map_err(gerr)?;
        let mut last = s.alloc_zeros::<bf16>(rows.len() * c.hidden).map_err(gerr)?;
        cuda_kernels::embedding::embedding_bf16(g, s, &a.a, c.hidden, &ids, &mut last)
            .map_err(gerr)?;
        let mut logits = s.alloc_zeros::<bf16>(rows.len() * c.vocab).map_err(gerr)?;
        m.blas
            .linear_bf16(
                rows.len(),
                c.vocab,
                c.hidden,
                &last,
                &m.head,
                GEpi::None,
                false,
                &mut logits,
            )
            .map_err(gerr)?;
        let mut top = s.alloc_zeros::<i32>(rows.len()).map_err(gerr)?;
        argmax_bf16(g, s, &logits, c.vocab, &mut top).map_err(gerr)?;
        let toks: Vec<u32> = s
            .clone_dtoh(&top)
            .map_err(gerr)?
            .into_iter()
            .map(|x| x as u32)
            .collect();
        let lg = if want_logits {
            Some(
                s.clone_dtoh(&logits)
                    .map_err(gerr)?
                    .into_iter()
                    .map(|x| x.to_f32())
                    .collect(),
            )
        } else {
            None
        };
        Ok((toks, lg))
    }

    fn slot_of(&self, seq: usize, pos: usize) -> i32 {
        (self.seqs[seq].blocks[pos / BLOCK_TOKENS] as usize * BLOCK_TOKENS + pos % BLOCK_TOKENS)
            as i32
    }

    /// Prefills new sequences; returns each prompt's greedy next token, and its logits
    /// `[B, vocab]` when asked.
    pub fn prefill(
        &mut self,
        prompts: &[Vec<u32>],
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let c = self.model.cfg.clone();
        if prompts.iter().any(|p| p.is_empty()) {
            return Err(Error::Input(
                "an empty prompt: every prompt needs at least one token".into(),
            ));
        }
        let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        if let Some(&l) = lens.iter().find(|&&l| l > c.max_positions) {
            return Err(Error::Input(format!(
                "a prompt of {l} tokens exceeds the model's {} positions",
                c.max_positions
            )));
        }
        let first = self.seqs.len();
        for &l in &lens {
            let mut s = SeqKv::default();
            s.reserve(&mut self.alloc, l)?;
            s.len = l;
            self.seqs.push(s);
        }
        let tokens: Vec<u32> = prompts.concat();
        let t = tokens.len();
        let pos: Vec<usize> = lens.iter().flat_map(|&l| 0..l).collect();
        let slots: Vec<i32> = lens
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| (0..l).map(move |p| (i, p)))
            .map(|(i, p)| self.slot_of(first + i, p))
            .collect();
        let mut cu = vec![0i32];
        for &l in &lens {
            cu.push(cu.last().unwrap() + l as i32);
        }
        let s = self.model.stream.clone();
        let positions = DeviceIds::upload(&s, &pos.iter().map(|&p| p as i32).collect::<Vec<_>>())
            .map_err(gerr)?;
        let slots = DeviceIds::upload(&s, &slots).map_err(gerr)?;
        let cu = DeviceIds::upload(&s, &cu).map_err(gerr)?;
        let mut acts = self.acts(t)?;
        self.embed(&tokens, &pos, &mut acts.x)?;
        let (hq, hk, d, w) = (c.heads, c.kv_heads, c.head_dim, c.qkv_dim());
        let scale = 1.0 / (d as f32).sqrt();
        let mut attend = |me: &mut Self, l: usize, a: &mut Acts| -> Result<()> {
            let m = &me.model;
            let rows = |heads| HeadRows {
                tokens: t,
                heads,
                head_dim: d,
                token_stride: w,
            };
            let q = a.qkv.slice(0..);
            let k = a.qkv.slice(hq * d..);
            let v = a.qkv.slice((hq + hk) * d..);
            prefill_attention_append_bf16(
                &m.gpu,
                &m.stream,
                &q,
                rows(hq),
                &k,
                rows(hk),
                &v,
                rows(hk),
                &cu,
                scale,
                &mut a.att,
                &slots,
                me.shape,
                &mut me.kc[l],
                &mut me.vc[l],
            )
            .map_err(gerr)
        };
        self.layers(t, &mut acts, &positions, &mut attend)?;
        let last: Vec<i32> = lens
            .iter()
            .scan(0i32, |s, &l| {
                *s += l as i32;
                Some(*s - 1)
            })
            .collect();
        self.head(t, &mut acts, &last, want_logits)
    }

    /// One decode step (one new token per sequence, in order).
    pub fn decode(
        &mut self,
        tokens: &[u32],
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let c = self.model.cfg.clone();
        let b = tokens.len();
        if b != self.seqs.len() {
            return Err(Error::Input(format!(
                "{b} tokens for {} sequences",
                self.seqs.len()
            )));
        }
        let pos: Vec<usize> = self.seqs.iter().map(|s| s.len).collect();
        if let Some(&p) = pos.iter().find(|&&p| p >= c.max_positions) {
            return Err(Error::Input(format!(
                "position {p} is past the model's {} positions",
                c.max_positions
            )));
        }
        for s in &mut self.seqs {
            s.reserve(&mut self.alloc, s.len + 1)?;
            s.len += 1;
        }
        let width = self.seqs.iter().map(|s| s.blocks.len()).max().unwrap_or(1);
        let mut tables = vec![0i32; b * width];
        for (i, s) in self.seqs.iter().enumerate() {
            tables[i * width..i * width + s.blocks.len()].copy_from_slice(&s.blocks);
        }
        let slots: Vec<i32> = (0..b).map(|i| self.slot_of(i, pos[i])).collect();
        let ctx: Vec<i32> = self.seqs.iter().map(|s| s.len as i32).collect();
        let s = self.model.stream.clone();
        let up = |v: &[i32]| DeviceIds::upload(&s, v).map_err(gerr);
        let positions = up(&pos.iter().map(|&p| p as i32).collect::<Vec<_>>())?;
        let (slots, tables, ctx) = (up(&slots)?, up(&tables)?, up(&ctx)?);
        let mut acts = self.acts(b)?;
        self.embed(tokens, &pos, &mut acts.x)?;
        let (hq, hk, d, w) = (c.heads, c.kv_heads, c.head_dim, c.qkv_dim());
        let scale = 1.0 / (d as f32).sqrt();
        let mut attend = |me: &mut Self, l: usize, a: &mut Acts| -> Result<()> {
            let m = &me.model;
            let rows = |heads| HeadRows {
                tokens: b,
                heads,
                head_dim: d,
                token_stride: w,
            };
            let k = a.qkv.slice(hq * d..);
            let v = a.qkv.slice((hq + hk) * d..);
            kv_append_bf16(
                &m.gpu,
                &m.stream,
                &k,
                rows(hk),
                &v,
                rows(hk),
                &slots,
                me.shape,
                &mut me.kc[l],
                &mut me.vc[l],
            )
            .map_err(gerr)?;
            let q = a.qkv.slice(0..);
            let seqs = DecodeSeqs {
                block_tables: &tables,
                table_width: width,
                context_lens: &ctx,
            };
            paged_decode_bf16(
                &m.gpu,
                &m.stream,
                &q,
                rows(hq),
                me.shape,
                &me.kc[l],
                &me.vc[l],
                seqs,
                scale,
                &mut a.att,
            )
            .map_err(gerr)
        };
        self.layers(b, &mut acts, &positions, &mut attend)?;
        let rows: Vec<i32> = (0..b as i32).collect();
        self.head(b, &mut acts, &rows, want_logits)
    }
}
