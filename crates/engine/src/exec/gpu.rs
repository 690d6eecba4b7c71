//! Execution on the GPU and the CPU together (LIA). Each layer is one of:
//! - a GPU layer (policy (0,0,0,0,0,0)): weights resident in HBM, or streamed from host memory
//!   over PCIe into one of two staging buffers, the next streamed layer copied on a copy stream
//!   while the layers before it compute;
//! - a GPU layer with attention on the CPU (policy (0,1,1,0,0,0)): S1 and S4–S6 on the GPU,
//!   Q/K/V down to the host, attention over the host KV cache (ISPC for decode), the context
//!   back up;
//! - a CPU layer (policy (1,1,1,1,1,1)): AMX linears and ISPC attention over host KV, while the
//!   copy stream keeps loading the next streamed layers, so that DRAM and PCIe work at once.
//!
//! The residual stream is bf16 on the GPU and f32 on the host; it moves when the next layer
//! runs on the other side (at batch × hidden elements, a small copy).
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
use platform::HostBuf;

use crate::config::{Family, ModelConfig};
use crate::exec::cpu::{argmax_rows, cpu_attention, cpu_layer, embed, lm_head, CpuModel};
use crate::kv::{HostKv, Sequences, StepIds};
use crate::placement::{LayerPlacement, Policy};
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
        // Whole 4 KiB pages, so that a host copy registers with the driver as whole pages.
        FlatLayout {
            at,
            len: off.next_multiple_of(2048),
        }
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

/// Host copy of a streamed layer, on the tier its weights were loaded on: registered with the
/// driver (pinned, full PCIe speed) or not.
enum HostLayer {
    Pinned(PinnedBuf<bf16>),
    Pageable(HostBuf<bf16>),
}

enum LayerHome {
    Resident(CudaSlice<bf16>),
    Streamed(HostLayer),
    Cpu,
}

/// Where one layer's linears run (and so where its weights live), from its policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerMode {
    /// S1 and S4–S6 on the GPU; attention on either side, per phase (policies 0 and 2).
    Gpu,
    /// Everything on the CPU (policy 1).
    Cpu,
}

/// A layer's mode and, per phase, whether its attention runs on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerRun {
    pub mode: LayerMode,
    pub attn_cpu_prefill: bool,
    pub attn_cpu_decode: bool,
}

impl LayerRun {
    /// Policies 0 and 2 may differ between prefill and decode (attention moves, with the
    /// prompt's KV blocks); policy 1 is both or neither, since the weights live on one side.
    pub fn of(l: usize, p: &LayerPlacement) -> Result<Self> {
        let gpu_linears = |pol: Policy| -> Result<bool> {
            match pol {
                Policy::FULL_GPU | Policy::ATTENTION_ON_CPU => Ok(true),
                Policy::FULL_CPU => Ok(false),
                other => Err(Error::Placement(format!(
                    "layer {l}: policy {other} is not executed yet (0, 1 and 2 are: full GPU, full CPU, attention on CPU)"
                ))),
            }
        };
        let (pg, dg) = (gpu_linears(p.prefill)?, gpu_linears(p.decode)?);
        if pg != dg {
            return Err(Error::Placement(format!(
                "layer {l}: prefill policy {} and decode policy {} put its linears on different sides; \
                 this executor keeps a layer's weights on one side (policies 0 and 2 may be mixed)",
                p.prefill, p.decode
            )));
        }
        if !pg && p.gpu_resident {
            return Err(Error::Placement(format!(
                "layer {l}: policy 1 runs on the CPU, but the layer is GPU-resident"
            )));
        }
        Ok(LayerRun {
            mode: if pg { LayerMode::Gpu } else { LayerMode::Cpu },
            attn_cpu_prefill: p.prefill.attention_on_cpu(),
            attn_cpu_decode: p.decode.attention_on_cpu(),
        })
    }

    fn attn_cpu(&self, prefill: bool) -> bool {
        if prefill {
            self.attn_cpu_prefill
        } else {
            self.attn_cpu_decode
        }
    }
    fn kv_on_gpu(&self) -> bool {
        !self.attn_cpu_prefill || !self.attn_cpu_decode
    }
    fn kv_on_host(&self) -> bool {
        self.attn_cpu_prefill || self.attn_cpu_decode
    }
}

/// The model across GPU and CPU, placed as the plan says.
pub struct GpuModel {
    pub gpu: Arc<Gpu>,
    pub cfg: ModelConfig,
    pub stream: Arc<CudaStream>,
    copy_stream: Arc<CudaStream>,
    blas: Blas,
    layout: FlatLayout,
    homes: Vec<LayerHome>,
    pub runs: Vec<LayerRun>,
    /// CPU layers, embeddings, and the head when the last layer is on the CPU.
    cpu: CpuModel,
    staging: Vec<CudaSlice<bf16>>,
    final_norm_w: CudaSlice<bf16>,
    final_norm_b: Option<CudaSlice<bf16>>,
    /// The LM head on the GPU, when the last layer runs there.
    head: Option<CudaSlice<bf16>>,
    inv_freq: CudaSlice<f32>,
    /// Per staging buffer: the compute stream is done with it / its next layer has arrived.
    free: Vec<CudaEvent>,
    loaded: Vec<CudaEvent>,
}

impl GpuModel {
    /// Places `w` as `placement` says. Streamed layers' host copies are pinned when `pin` is set.
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
        let runs = placement
            .iter()
            .enumerate()
            .map(|(l, p)| LayerRun::of(l, p))
            .collect::<Result<Vec<_>>>()?;
        let stream = gpu.new_stream().map_err(gerr)?;
        let copy_stream = gpu.new_stream().map_err(gerr)?;
        let blas = Blas::new(&gpu, stream.clone()).map_err(gerr)?;
        let layout = FlatLayout::of(&w.layers[0]);
        let cfg = w.config.clone();
        let mut homes = Vec::with_capacity(w.layers.len());
        let mut flat = vec![bf16::ZERO; layout.len];
        for (l, p) in placement.iter().enumerate() {
            if runs[l].mode == LayerMode::Cpu {
                homes.push(LayerHome::Cpu);
                continue;
            }
            let lw = &mut w.layers[l];
            let tier = lw.qkv_w.data.tier();
            layout.flatten(lw, &mut flat);
            // The GPU holds these now; free the host copies.
            for t in [&mut lw.qkv_w, &mut lw.o_w, &mut lw.up_w, &mut lw.down_w] {
                *t = Tensor::empty();
            }
            homes.push(if p.gpu_resident {
                LayerHome::Resident(stream.clone_htod(&flat).map_err(gerr)?)
            } else if pin {
                // Registered in place, so a node-bound (e.g. CXL) copy stays on its node.
                let hb = HostBuf::from_slice(&flat, tier)?;
                LayerHome::Streamed(HostLayer::Pinned(
                    PinnedBuf::register(&gpu, hb).map_err(gerr)?,
                ))
            } else {
                LayerHome::Streamed(HostLayer::Pageable(HostBuf::from_slice(&flat, tier)?))
            });
        }
        let any_streamed = homes.iter().any(|l| matches!(l, LayerHome::Streamed(_)));
        let staging = if any_streamed {
            vec![
                stream.alloc_zeros::<bf16>(layout.len).map_err(gerr)?,
                stream.alloc_zeros::<bf16>(layout.len).map_err(gerr)?,
            ]
        } else {
            vec![]
        };
        let up = |t: &Tensor| stream.clone_htod(&t.data[..]).map_err(gerr);
        let head_on_gpu = runs.last().map(|r| r.mode) != Some(LayerMode::Cpu);
        let head = head_on_gpu.then(|| up(w.lm_head())).transpose()?;
        let final_norm_w = up(&w.final_norm_w)?;
        let final_norm_b = w.final_norm_b.as_ref().map(up).transpose()?;
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
        let inv_freq = stream.clone_htod(&inv).map_err(gerr)?;
        let cpu_mask: Vec<bool> = runs.iter().map(|r| r.mode == LayerMode::Cpu).collect();
        let cpu = CpuModel::with_layers(w, &cpu_mask, !head_on_gpu)?;
        stream.synchronize().map_err(gerr)?;
        Ok(GpuModel {
            gpu,
            cfg,
            stream,
            copy_stream,
            blas,
            layout,
            homes,
            runs,
            cpu,
            staging,
            final_norm_w,
            final_norm_b,
            head,
            inv_freq,
            free,
            loaded,
        })
    }

    /// Queues the copy of streamed layer `l` into staging buffer `s` on the copy stream, after
    /// the compute stream has finished with that buffer.
    fn load(&mut self, l: usize, s: usize) -> Result<()> {
        let LayerHome::Streamed(host) = &self.homes[l] else {
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

    /// `a = norm(x)`, or `x += delta; a = norm(x)`.
    #[allow(clippy::too_many_arguments)]
    fn norm(
        &self,
        t: usize,
        x: &mut CudaSlice<bf16>,
        delta: Option<&CudaSlice<bf16>>,
        w: &CudaView<bf16>,
        b: Option<&CudaView<bf16>>,
        a: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        let (g, s, h, eps) = (
            &*self.gpu,
            &*self.stream,
            self.cfg.hidden,
            self.cfg.norm_eps as f32,
        );
        match (self.cfg.family, delta) {
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

/// A step's ids on the device.
struct DevIds {
    positions: DeviceIds,
    slots: DeviceIds,
    cu: DeviceIds,
    tables: DeviceIds,
    ctx: DeviceIds,
}

/// Where the residual stream is, between layers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Residual {
    Host,
    /// On the GPU; `true` when the last S6's output still waits in `delta` to be added.
    Gpu(bool),
}

/// A batch of sequences: KV on the GPU for GPU-attention layers, on the host for the others.
pub struct GpuSession<'m> {
    pub model: &'m mut GpuModel,
    kc: Vec<Option<CudaSlice<bf16>>>,
    vc: Vec<Option<CudaSlice<bf16>>>,
    host_kv: HostKv,
    shape: KvShape,
    pub seqs: Sequences,
    /// Step buffers kept for the next step of the same size (every decode step of a batch).
    spare: Option<(usize, Acts)>,
}

impl<'m> GpuSession<'m> {
    /// `num_blocks` KV blocks per layer; host KV on `host_tier`.
    pub fn new(
        model: &'m mut GpuModel,
        num_blocks: usize,
        host_tier: platform::MemTier,
    ) -> Result<Self> {
        let c = &model.cfg;
        let shape = KvShape {
            num_blocks,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        };
        let s = &model.stream;
        let mut kc = Vec::new();
        let mut vc = Vec::new();
        for r in &model.runs {
            let dev = r.kv_on_gpu();
            kc.push(
                dev.then(|| s.alloc_zeros::<bf16>(shape.elems()))
                    .transpose()
                    .map_err(gerr)?,
            );
            vc.push(
                dev.then(|| s.alloc_zeros::<bf16>(shape.elems()))
                    .transpose()
                    .map_err(gerr)?,
            );
        }
        let host_mask: Vec<bool> = model.runs.iter().map(|r| r.kv_on_host()).collect();
        let host_kv = HostKv::new(&host_mask, num_blocks, c.kv_heads, c.head_dim, host_tier)?;
        let seqs = Sequences::new(num_blocks, c.max_positions);
        Ok(GpuSession {
            model,
            kc,
            vc,
            host_kv,
            shape,
            seqs,
            spare: None,
        })
    }

    fn acts(&self, t: usize) -> Result<Acts> {
        let c = &self.model.cfg;
        let s = &self.model.stream;
        let z = |n: usize| s.alloc_zeros::<bf16>(n.max(1)).map_err(gerr);
        let up_cols = c.up_rows();
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

    /// S2 + S3 of GPU layer `l`: on the GPU over its KV, or on the CPU over host KV.
    fn attention(
        &mut self,
        l: usize,
        ids: &StepIds,
        dev: &DevIds,
        prefill: bool,
        a: &mut Acts,
    ) -> Result<()> {
        let m: &GpuModel = self.model;
        let c = &m.cfg;
        let t = ids.tokens.len();
        let (hq, hk, d, w) = (c.heads, c.kv_heads, c.head_dim, c.qkv_dim());
        let scale = 1.0 / (d as f32).sqrt();
        if m.runs[l].attn_cpu(prefill) {
            let qkv = m.stream.clone_dtoh(&a.qkv).map_err(gerr)?;
            let (mut q, mut k, mut v) = (
                Vec::with_capacity(t * hq * d),
                Vec::with_capacity(t * hk * d),
                Vec::with_capacity(t * hk * d),
            );
            for row in qkv.chunks(w).take(t) {
                q.extend_from_slice(&row[..hq * d]);
                k.extend_from_slice(&row[hq * d..(hq + hk) * d]);
                v.extend_from_slice(&row[(hq + hk) * d..]);
            }
            let att = cpu_attention(c, &mut self.host_kv, l, ids, prefill, &q, &k, &v)?;
            return m.stream.memcpy_htod(&att, &mut a.att).map_err(gerr);
        }
        let rows = |heads| HeadRows {
            tokens: t,
            heads,
            head_dim: d,
            token_stride: w,
        };
        let (kc, vc) = (
            self.kc[l].as_mut().expect("GPU KV"),
            self.vc[l].as_mut().expect("GPU KV"),
        );
        let q = a.qkv.slice(0..);
        let k = a.qkv.slice(hq * d..);
        let v = a.qkv.slice((hq + hk) * d..);
        if prefill {
            prefill_attention_append_bf16(
                &m.gpu,
                &m.stream,
                &q,
                rows(hq),
                &k,
                rows(hk),
                &v,
                rows(hk),
                &dev.cu,
                scale,
                &mut a.att,
                &dev.slots,
                self.shape,
                kc,
                vc,
            )
            .map_err(gerr)
        } else {
            kv_append_bf16(
                &m.gpu,
                &m.stream,
                &k,
                rows(hk),
                &v,
                rows(hk),
                &dev.slots,
                self.shape,
                kc,
                vc,
            )
            .map_err(gerr)?;
            let seqs = DecodeSeqs {
                block_tables: &dev.tables,
                table_width: ids.width,
                context_lens: &dev.ctx,
            };
            paged_decode_bf16(
                &m.gpu,
                &m.stream,
                &q,
                rows(hq),
                self.shape,
                kc,
                vc,
                seqs,
                scale,
                &mut a.att,
            )
            .map_err(gerr)
        }
    }

    /// One GPU layer; its weights are in `staging` (streamed) or resident.
    fn gpu_layer(
        &mut self,
        l: usize,
        staging: Option<usize>,
        ids: &StepIds,
        dev: &DevIds,
        prefill: bool,
        a: &mut Acts,
        pending: bool,
    ) -> Result<()> {
        let t = ids.tokens.len();
        let c = self.model.cfg.clone();
        {
            let m: &GpuModel = self.model;
            let buf = layer_buf(m, l, staging);
            let v = |i| view(&m.layout, buf, i);
            // S1: (x += previous delta;) a = norm(x); qkv = a·Wqkvᵀ + b; RoPE.
            m.norm(
                t,
                &mut a.x,
                pending.then_some(&a.delta),
                &v(ATTN_NORM_W).unwrap(),
                v(ATTN_NORM_B).as_ref(),
                &mut a.a,
            )?;
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
                let rows = |heads| HeadRows {
                    tokens: t,
                    heads,
                    head_dim: c.head_dim,
                    token_stride: c.qkv_dim(),
                };
                rope_bf16(
                    g,
                    s,
                    &mut a.qkv.slice_mut(0..),
                    rows(c.heads),
                    &dev.positions,
                    &m.inv_freq,
                )
                .map_err(gerr)?;
                rope_bf16(
                    g,
                    s,
                    &mut a.qkv.slice_mut(c.q_dim()..),
                    rows(c.kv_heads),
                    &dev.positions,
                    &m.inv_freq,
                )
                .map_err(gerr)?;
            }
        }
        self.attention(l, ids, dev, prefill, a)?;
        let m: &GpuModel = self.model;
        let buf = layer_buf(m, l, staging);
        let v = |i| view(&m.layout, buf, i);
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
        // S5: x += delta; a = norm(x); FC1 + bias + ReLU, or gate/up then SiLU·mul.
        m.norm(
            t,
            &mut a.x,
            Some(&a.delta),
            &v(MLP_NORM_W).unwrap(),
            v(MLP_NORM_B).as_ref(),
            &mut a.a,
        )?;
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
        // S6: delta = act·Wdownᵀ + b (added by the next norm or flush).
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

    /// After a prefill, moves the new sequences' KV blocks of every layer whose attention
    /// changes sides between prefill and decode (same block ids in both pools). Runs of
    /// consecutive blocks move as one copy.
    fn migrate_kv(&mut self, ids: &StepIds) -> Result<()> {
        let mut blocks: Vec<usize> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for &q in &ids.seq_of {
            if seen.insert(q) {
                blocks.extend(self.seqs.seqs[q].blocks.iter().map(|&b| b as usize));
            }
        }
        blocks.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for b in blocks {
            match runs.last_mut() {
                Some((start, n)) if *start + *n == b => *n += 1,
                _ => runs.push((b, 1)),
            }
        }
        let be = self.shape.block_elems();
        let s = self.model.stream.clone();
        let mut moved = false;
        for l in 0..self.model.runs.len() {
            let r = self.model.runs[l];
            if r.mode != LayerMode::Gpu || r.attn_cpu_prefill == r.attn_cpu_decode {
                continue;
            }
            moved = true;
            let (kc, vc) = (
                self.kc[l].as_mut().expect("GPU KV"),
                self.vc[l].as_mut().expect("GPU KV"),
            );
            let (kh, vh) = (&mut self.host_kv.k[l], &mut self.host_kv.v[l]);
            for &(b, n) in &runs {
                let range = b * be..(b + n) * be;
                if r.attn_cpu_decode {
                    s.memcpy_dtoh(&kc.slice(range.clone()), &mut kh[range.clone()])
                        .map_err(gerr)?;
                    s.memcpy_dtoh(&vc.slice(range.clone()), &mut vh[range])
                        .map_err(gerr)?;
                } else {
                    s.memcpy_htod(&kh[range.clone()], &mut kc.slice_mut(range.clone()))
                        .map_err(gerr)?;
                    s.memcpy_htod(&vh[range.clone()], &mut vc.slice_mut(range))
                        .map_err(gerr)?;
                }
            }
        }
        if moved {
            s.synchronize().map_err(gerr)?;
        }
        Ok(())
    }

    /// Adds a pending delta into the GPU residual (through the final norm, result unused).
    fn flush(&self, t: usize, a: &mut Acts) -> Result<()> {
        let m = &self.model;
        let fb = m.final_norm_b.as_ref().map(|b| b.slice(0..));
        m.norm(
            t,
            &mut a.x,
            Some(&a.delta),
            &m.final_norm_w.slice(0..),
            fb.as_ref(),
            &mut a.a,
        )
    }

    fn step(
        &mut self,
        ids: &StepIds,
        prefill: bool,
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let c = self.model.cfg.clone();
        let t = ids.tokens.len();
        let s = self.model.stream.clone();
        let up = |v: &[i32]| DeviceIds::upload(&s, v).map_err(gerr);
        let mut cu = vec![0i32];
        for &l in &ids.lens {
            cu.push(cu.last().unwrap() + l as i32);
        }
        let dev = DevIds {
            positions: up(&ids.positions.iter().map(|&p| p as i32).collect::<Vec<_>>())?,
            slots: up(&ids.slots)?,
            cu: up(&cu)?,
            tables: up(&ids.tables)?,
            ctx: up(&ids.ctx)?,
        };
        let mut x_host = vec![0f32; t * c.hidden];
        embed(&self.model.cpu.w, &ids.tokens, &ids.positions, &mut x_host)?;
        let mut a = match self.spare.take() {
            Some((n, a)) if n == t => a,
            _ => self.acts(t)?,
        };
        let mut at = Residual::Host;
        let streamed: Vec<usize> = (0..c.layers)
            .filter(|&l| matches!(self.model.homes[l], LayerHome::Streamed(_)))
            .collect();
        for (i, &l) in streamed.iter().take(2).enumerate() {
            self.model.load(l, i)?;
        }
        for l in 0..c.layers {
            if self.model.runs[l].mode == LayerMode::Cpu {
                if let Residual::Gpu(pending) = at {
                    if pending {
                        self.flush(t, &mut a)?;
                    }
                    let xb = s.clone_dtoh(&a.x).map_err(gerr)?;
                    x_host
                        .iter_mut()
                        .zip(&xb)
                        .for_each(|(h, d)| *h = d.to_f32());
                    at = Residual::Host;
                }
                cpu_layer(
                    &self.model.cpu,
                    &mut self.host_kv,
                    l,
                    ids,
                    prefill,
                    &mut x_host,
                )?;
                continue;
            }
            let pending = match at {
                Residual::Host => {
                    let xb: Vec<bf16> = x_host.iter().map(|&v| bf16::from_f32(v)).collect();
                    s.memcpy_htod(&xb, &mut a.x).map_err(gerr)?;
                    false
                }
                Residual::Gpu(p) => p,
            };
            let slot = streamed.iter().position(|&x| x == l);
            if let Some(i) = slot {
                s.wait(&self.model.loaded[i % 2]).map_err(gerr)?;
            }
            self.gpu_layer(l, slot.map(|i| i % 2), ids, &dev, prefill, &mut a, pending)?;
            at = Residual::Gpu(true);
            if let Some(i) = slot {
                self.model.free[i % 2].record(&s).map_err(gerr)?;
                if let Some(&next) = streamed.get(i + 2) {
                    self.model.load(next, i % 2)?;
                }
            }
        }
        if prefill {
            self.migrate_kv(ids)?;
        }
        let out = match at {
            Residual::Host => {
                let logits = lm_head(&self.model.cpu, &x_host, &ids.last_rows)?;
                Ok((argmax_rows(&logits, c.vocab), want_logits.then_some(logits)))
            }
            Residual::Gpu(_) => self.gpu_head(t, &mut a, ids, want_logits),
        };
        // Every buffer is fully written before it is read in a step, so reuse needs no reset.
        self.spare = Some((t, a));
        out
    }

    /// Final norm, LM head and argmax on the GPU over each sequence's last row.
    fn gpu_head(
        &self,
        t: usize,
        a: &mut Acts,
        ids: &StepIds,
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let m = &self.model;
        let c = &m.cfg;
        let (g, s) = (&*m.gpu, &m.stream);
        let head = m
            .head
            .as_ref()
            .ok_or_else(|| Error::Placement("the LM head is not on the GPU".into()))?;
        self.flush(t, a)?;
        let rows: Vec<i32> = ids.last_rows.iter().map(|&r| r as i32).collect();
        let dev_rows = DeviceIds::upload(s, &rows).map_err(gerr)?;
        let mut last = s.alloc_zeros::<bf16>(rows.len() * c.hidden).map_err(gerr)?;
        cuda_kernels::embedding::embedding_bf16(g, s, &a.a, c.hidden, &dev_rows, &mut last)
            .map_err(gerr)?;
        let mut logits = s.alloc_zeros::<bf16>(rows.len() * c.vocab).map_err(gerr)?;
        m.blas
            .linear_bf16(
                rows.len(),
                c.vocab,
                c.hidden,
                &last,
                head,
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

    /// Prefills new sequences; returns each prompt's greedy next token, and its logits
    /// `[B, vocab]` when asked.
    pub fn prefill(
        &mut self,
        prompts: &[Vec<u32>],
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let ids = self.seqs.prefill(prompts)?;
        self.step(&ids, true, want_logits)
    }

    /// One decode step (one new token per sequence, in order).
    pub fn decode(
        &mut self,
        tokens: &[u32],
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let ids = self.seqs.decode(tokens)?;
        self.step(&ids, false, want_logits)
    }
}

fn layer_buf(m: &GpuModel, l: usize, staging: Option<usize>) -> &CudaSlice<bf16> {
    match (&m.homes[l], staging) {
        (LayerHome::Resident(b), _) => b,
        (LayerHome::Streamed(_), Some(s)) => &m.staging[s],
        _ => unreachable!("layer {l} has no GPU weights here"),
    }
}

fn view<'a>(layout: &FlatLayout, buf: &'a CudaSlice<bf16>, t: usize) -> Option<CudaView<'a, bf16>> {
    let (o, n) = layout.at[t];
    (n > 0).then(|| buf.slice(o..o + n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::layer_placements;

    fn run(p: &str, d: &str, pct: f64) -> Result<LayerRun> {
        let l = layer_placements(2, p.parse()?, d.parse()?, pct, &[])?;
        LayerRun::of(0, &l[0])
    }

    #[test]
    fn layer_runs_follow_policies_and_refuse_what_is_not_built() {
        let r = run("0", "2", 100.0).unwrap();
        assert_eq!(
            (r.mode, r.attn_cpu_prefill, r.attn_cpu_decode),
            (LayerMode::Gpu, false, true)
        );
        assert!(r.kv_on_gpu() && r.kv_on_host());
        let r = run("1", "1", 0.0).unwrap();
        assert_eq!(r.mode, LayerMode::Cpu);
        assert!(!r.kv_on_gpu());
        let e = run("0", "1", 0.0).unwrap_err().to_string();
        assert!(e.contains("different sides"), "{e}");
        assert!(run("1", "1", 100.0)
            .unwrap_err()
            .to_string()
            .contains("GPU-resident"));
        let e = run("0,0,0,0,1,1", "0", 0.0).unwrap_err().to_string();
        assert!(e.contains("not executed yet"), "{e}");
    }
}
