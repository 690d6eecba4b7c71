//! Execution on the GPU and the CPU together (LIA). Each layer is one of:
//! - a GPU layer (policy (0,0,0,0,0,0)): weights resident in HBM, or streamed from host memory
//!   over PCIe into one of two staging buffers, the next streamed layer copied on a copy stream
//!   while the layers before it compute;
//! - a GPU layer with attention on the CPU (policy (0,1,1,0,0,0)): S1 and S4–S6 on the GPU,
//!   Q/K/V down to the host, attention over the host KV cache (ISPC for decode), the context
//!   back up;
//! - a CPU layer (policy (1,1,1,1,1,1)): AMX linears and ISPC attention over host KV, while the
//!   copy stream keeps loading the next streamed layers, so that DRAM and PCIe work at once;
//! - a CPU layer with attention on the GPU (policy (1,0,0,1,1,1)): AMX linears, Q/K/V rows up,
//!   attention over GPU KV, the context down: at large batches, where the host layers' KV
//!   would take host-memory bandwidth from their weights (and from the PCIe streaming), HBM
//!   holds it instead, as FlexGen keeps its KV;
//! - a split layer (prefill on the GPU, decode on the CPU: LIA's setting for large batches):
//!   host memory holds its weights once, in the CPU kernels' prepacked layout; for a prefill
//!   those packed bytes are streamed like a streamed layer's and unpacked on the GPU into the
//!   staging buffer, and the prompt's KV moves to the host for a CPU decode (or stays on the
//!   GPU where decode attention runs there).
//!
//! A policy's linears (S1, S4, S5, S6) run on one side; its attention (S2, S3) on either.
//!
//! The residual stream is bf16 on the GPU and f32 on the host; it moves when the next layer
//! runs on the other side (at batch × hidden elements, a small copy). Rows going up (the
//! residual, a CPU layer's Q/K/V, the context of attention on the CPU) are read by the GPU
//! itself from pinned host memory, in bf16, half the bytes of f32 (`pull_bf16`): a copy on the
//! host→device engine would wait behind the streamed layers' weight copies queued there.
//!
//! Each layer's tensors live in one flat bf16 buffer (the same offsets for every layer, see
//! [`FlatLayout`]), so that streaming a layer is one host→device copy. The residual stream is
//! bf16 on the GPU, and each norm is fused with the residual add of the sublayer before it
//! (`add_rms_norm` / `add_layer_norm`). Embeddings are gathered on the host (the table stays
//! there) and uploaded; the final norm, LM head and argmax run on the GPU.

use std::sync::Arc;

use cuda_kernels::attention::{
    paged_decode::DecodeSeqs, paged_decode_bf16_scratch, prefill_attention_append_bf16,
    DecodeKernel, DecodeScratch,
};
use cuda_kernels::gemm::{Blas, Epilogue as GEpi};
use cuda_kernels::kv::{kv_append_bf16, KvShape};
use cuda_kernels::norm::{add_layer_norm_bf16, add_rms_norm_bf16, layer_norm_bf16, rms_norm_bf16};
use cuda_kernels::position::{rope_bf16, HeadRows};
use cuda_kernels::sampling::argmax_bf16;
use cuda_kernels::transfer::{copy_blocks_d2h, copy_blocks_h2d, pull_bf16, HostPin, PinnedBuf};
use cuda_kernels::unpack::unpack_vnni_bf16;
use cuda_kernels::{DeviceIds, Gpu};
use cudarc::driver::{sys, CudaEvent, CudaGraph, CudaSlice, CudaStream, CudaView};
use half::bf16;
use platform::HostBuf;

use crate::config::{Family, ModelConfig};
use crate::exec::cpu::{
    argmax_rows, cpu_attention, cpu_layer, embed, lm_head, s1_qkv_rows, s4_out, s56_mlp, CpuModel,
};
use crate::kv::{HostKv, Sequences, StepIds, BLOCK_TOKENS};
use crate::placement::{LayerPlacement, Policy};
use crate::profile::{span, Part};
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
    /// Linears prepacked on the host (the CPU model's); the norms and biases, small, kept on
    /// the GPU back to back in layout order.
    Split(CudaSlice<bf16>),
    Cpu,
}

/// The large tensors of a layer, which a split layer streams in packed form.
const LINEARS: [usize; 4] = [QKV_W, O_W, UP_W, DOWN_W];

/// Where one layer's linears run (and so where its weights live), from its policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerMode {
    /// S1 and S4–S6 on the GPU; attention on either side, per phase (policies 0 and 2).
    Gpu,
    /// Everything on the CPU (policy 1).
    Cpu,
    /// Linears on the GPU for prefill (policies 0 or 2), everything on the CPU for decode
    /// (policy 1); weights on the host, prepacked, streamed for a prefill.
    Split,
}

/// A layer's mode and, per phase, whether its attention runs on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerRun {
    pub mode: LayerMode,
    pub attn_cpu_prefill: bool,
    pub attn_cpu_decode: bool,
}

impl LayerRun {
    /// The attention's side may differ between prefill and decode (it moves, with the prompt's
    /// KV blocks); linears on the CPU in the prefill need them there in decode too (the
    /// weights live on one side; the reverse, a split layer, is built).
    pub fn of(l: usize, p: &LayerPlacement) -> Result<Self> {
        // The linears run on one side, the attention on either.
        let gpu_linears = |pol: Policy| -> Result<bool> {
            let cpu = [1, 4, 5, 6].map(|s| pol.on_cpu(s));
            if cpu.iter().all(|&c| c) {
                Ok(false)
            } else if cpu.iter().all(|&c| !c) {
                Ok(true)
            } else {
                Err(Error::Placement(format!(
                    "layer {l}: policy {pol} splits the linears (S1, S4, S5, S6) between CPU and GPU, \
                     which is not executed yet (the linears run on one side, the attention S2+S3 on either: \
                     0, 1, 2 or (1,0,0,1,1,1))"
                )))
            }
        };
        let mode = match (gpu_linears(p.prefill)?, gpu_linears(p.decode)?) {
            (true, true) => LayerMode::Gpu,
            (false, false) => LayerMode::Cpu,
            (true, false) => LayerMode::Split,
            (false, true) => {
                return Err(Error::Placement(format!(
                    "layer {l}: prefill policy {} on the CPU with decode policy {} on the GPU is not executed \
                     (the reverse, prefill on the GPU and decode on the CPU, is)",
                    p.prefill, p.decode
                )))
            }
        };
        if mode != LayerMode::Gpu && p.gpu_resident {
            return Err(Error::Placement(format!(
                "layer {l}: policy 1 runs it on the CPU (prefill {}, decode {}), but the layer is GPU-resident; \
                 lower --gpu-percentage or give the resident layers a GPU policy with --layer-policy",
                p.prefill, p.decode
            )));
        }
        Ok(LayerRun {
            mode,
            attn_cpu_prefill: p.prefill.attention_on_cpu(),
            attn_cpu_decode: p.decode.attention_on_cpu(),
        })
    }

    /// Whether the linears run on the CPU in this phase.
    fn on_cpu(&self, prefill: bool) -> bool {
        match self.mode {
            LayerMode::Gpu => false,
            LayerMode::Cpu => true,
            LayerMode::Split => !prefill,
        }
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
    /// Where split layers' packed linears are unpacked (`None`: on the copy stream, with
    /// `TANDEM_UNPACK_STREAM=0`). On its own stream an unpack no longer holds the next copy
    /// back: the copy stream's DMA goes on while the GPU unpacks the part just copied.
    unpack_stream: Option<Arc<CudaStream>>,
    /// Per linear of the packed staging buffer: its last unpack is done (the next copy into
    /// that part waits for it); and one event for "this part has been copied".
    part_free: Vec<CudaEvent>,
    part_copied: CudaEvent,
    blas: Blas,
    layout: FlatLayout,
    homes: Vec<LayerHome>,
    pub runs: Vec<LayerRun>,
    /// Split layers' packed host weights, page-locked in place (with `pin`). Declared before
    /// `cpu`, which owns that memory, so that they are unregistered first. Held for `Drop`.
    #[allow(dead_code)]
    pins: Vec<HostPin>,
    /// CPU layers (split ones too), embeddings, and the head when no layer's last step runs on
    /// the GPU.
    cpu: CpuModel,
    staging: Vec<CudaSlice<bf16>>,
    /// Where a split layer's packed linears land before they are unpacked into `staging`.
    packed_stage: Option<CudaSlice<bf16>>,
    final_norm_w: CudaSlice<bf16>,
    final_norm_b: Option<CudaSlice<bf16>>,
    /// The LM head on the GPU, when the last layer runs there.
    head: Option<CudaSlice<bf16>>,
    inv_freq: CudaSlice<f32>,
    /// Per staging buffer: the compute stream is done with it / its next layer has arrived.
    free: Vec<CudaEvent>,
    loaded: Vec<CudaEvent>,
    /// Timing events of the step in flight, when tracing.
    trace: Option<TraceEvents>,
    /// Every step's timing events (`TANDEM_TIMELINE=FILE`).
    timeline: Option<Timeline>,
    /// Decode copies' start and end events, for the adaptive split, until they have completed.
    copy_times: Vec<(CudaEvent, CudaEvent)>,
    /// Whether [`GpuModel::load`] times its copies for the adaptive split (decode steps).
    time_copies: bool,
    /// Host copies pinned: streamed layers' and, per session, the host KV cache.
    pin: bool,
    /// Split layers that decode steps run on the GPU (their packed weights streamed and
    /// unpacked there, attention on the CPU over the host KV) instead of on the CPU.
    split_gpu: Vec<bool>,
    /// Rebalances split layers between the CPU and PCIe from measured times.
    adaptive: Option<AdaptiveSplit>,
    /// Staging buffer of the next step's first streamed layer (see `GpuSession::step`).
    stage_base: usize,
    /// (layer, staging buffer) copies already queued for the next step by the last one.
    prefetched: Vec<(usize, usize)>,
}

/// Timed events of one step: each streamed layer's copy (copy stream) and each GPU layer's
/// compute (compute stream), both with their layer, each CPU layer's span on the host clock,
/// and the step's layer loop.
struct TraceEvents {
    start: CudaEvent,
    /// The host clock when `start` was recorded (the compute stream is idle between steps, so
    /// the two clocks agree to within a launch).
    t0: std::time::Instant,
    prefill: bool,
    copies: Vec<(usize, CudaEvent, CudaEvent)>,
    computes: Vec<(usize, CudaEvent, CudaEvent)>,
    /// CPU layers: (layer, start, end, of which waiting for the residual), seconds from `t0`.
    cpu: Vec<(usize, f64, f64, f64)>,
    /// The layer loop's end on the compute stream.
    end: Option<CudaEvent>,
    /// The step's end on the host clock, seconds from `t0` (set when a timeline keeps it).
    host_end: f64,
}

/// Every step's [`TraceEvents`] for `TANDEM_TIMELINE=FILE`, written as JSON lines when the
/// model is dropped (events are resolved then, so that no step waits for its copies).
struct Timeline {
    path: std::path::PathBuf,
    /// Created when the model is made (a new file: an existing one is never overwritten).
    file: std::fs::File,
    steps: Vec<TraceEvents>,
}

impl Timeline {
    /// From `TANDEM_TIMELINE`, if set: its file created now, so that a path that cannot be
    /// written, or names a file that exists, is an error before any work.
    fn from_env() -> Result<Option<Timeline>> {
        let Some(path) = std::env::var_os("TANDEM_TIMELINE") else {
            return Ok(None);
        };
        let path = std::path::PathBuf::from(path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| Error::Io {
                path: format!(
                    "TANDEM_TIMELINE={} (a new file: an existing one is never overwritten)",
                    path.display()
                ),
                source,
            })?;
        Ok(Some(Timeline {
            path,
            file,
            steps: Vec::new(),
        }))
    }

    /// One JSON object per step: milliseconds from the step's start for every span.
    fn write(&self) -> std::io::Result<()> {
        use std::io::Write;
        let ms =
            |a: &CudaEvent, b: &CudaEvent| a.elapsed_ms(b).map(|v| v as f64).unwrap_or(f64::NAN);
        let mut f = std::io::BufWriter::new(&self.file);
        for (i, st) in self.steps.iter().enumerate() {
            let spans = |v: &[(usize, CudaEvent, CudaEvent)]| -> Vec<(usize, f64, f64)> {
                v.iter()
                    .map(|(l, a, b)| (*l, ms(&st.start, a), ms(&st.start, b)))
                    .collect()
            };
            let cpu: Vec<_> = st
                .cpu
                .iter()
                .map(|&(l, a, b, w)| (l, a * 1e3, b * 1e3, w * 1e3))
                .collect();
            let gpu_end = st.end.as_ref().map_or(f64::NAN, |e| ms(&st.start, e));
            let line = serde_json::json!({
                "step": i,
                "prefill": st.prefill,
                "gpu_end_ms": gpu_end,
                "host_end_ms": st.host_end * 1e3,
                "copies": spans(&st.copies),
                "gpu": spans(&st.computes),
                "cpu": cpu,
            });
            writeln!(f, "{line}")?;
        }
        f.flush()
    }
}

impl Drop for GpuModel {
    fn drop(&mut self) {
        if let Some(tl) = self.timeline.take() {
            let _ = self.copy_stream.synchronize();
            if let Some(us) = &self.unpack_stream {
                let _ = us.synchronize();
            }
            let _ = self.stream.synchronize();
            match tl.write() {
                Ok(()) => eprintln!(
                    "tandem: timeline of {} steps written to {}",
                    tl.steps.len(),
                    tl.path.display()
                ),
                Err(e) => eprintln!("tandem: TANDEM_TIMELINE={}: {e}", tl.path.display()),
            }
        }
    }
}

/// Where a traced step's time went, from CUDA events: the PCIe copies of streamed layers and
/// the GPU's compute of every GPU layer, against the step's wall time on the GPU.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StepTrace {
    pub layers_copied: usize,
    pub layers_computed: usize,
    /// Sum of the copies' durations, seconds.
    pub copy_s: f64,
    /// Sum of the GPU layers' durations, seconds (from the stream reaching a layer, its
    /// weights there, to its last kernel).
    pub compute_s: f64,
    /// The layer loop, first event to last, seconds.
    pub wall_s: f64,
}

impl StepTrace {
    /// The fraction of the shorter of copy and compute time that ran under the other:
    /// `(copy + compute − wall) / min(copy, compute)`, in 0..=1.
    pub fn hidden_fraction(&self) -> f64 {
        let short = self.copy_s.min(self.compute_s);
        if short <= 0.0 {
            return 0.0;
        }
        ((self.copy_s + self.compute_s - self.wall_s) / short).clamp(0.0, 1.0)
    }
}

/// Balances the split layers of decode steps between the CPU and PCIe: each step measures the
/// CPU's time per split layer it computed, and the next step streams to the GPU the share of
/// split layers that makes the CPU's work and the copies take equally long (the copy time per
/// layer from its bytes and the PCIe rate). The CPU's rate moves with the batch, the context,
/// and whatever else reads DRAM (the copies themselves), so it is measured, not assumed.
#[derive(Clone, Debug)]
struct AdaptiveSplit {
    /// Seconds a streamed split layer's copy takes: the probe's rate at first, then smoothed
    /// from the decode steps' copies as timed on the copy stream (with the CPU reading host
    /// memory at the same time, a copy runs slower than the probe's PCIe rate alone).
    pcie_s_per_layer: f64,
    /// Smoothed CPU seconds per split layer (none until a step computed one).
    cpu_s_per_layer: Option<f64>,
    gpu_layers: usize,
}

/// Of `n` split layers, how many to stream so that the CPU's share (`cpu_s` each) and the
/// copies (`pcie_s` each) take equally long: `(n − g)·cpu_s = g·pcie_s`.
fn balanced_gpu_layers(n: usize, cpu_s: f64, pcie_s: f64) -> usize {
    if !(cpu_s > 0.0) || !(pcie_s > 0.0) {
        return if cpu_s > 0.0 { n } else { 0 };
    }
    ((n as f64 * cpu_s / (cpu_s + pcie_s)).round() as usize).min(n)
}

/// The split's next count of streamed layers: `want` where its longer side, `max((n − g)·cpu_s,
/// g·pcie_s)`, beats the current count's by more than [`SPLIT_GAIN`], else `now`. Moving
/// layers costs the next step its prefetched copies (the previous step loaded the layers it
/// streamed), and the measured times move with the host's load from step to step: a split that
/// followed every change of a layer or two would pay that cost for no gain.
fn worth_moving(n: usize, now: usize, want: usize, cpu_s: f64, pcie_s: f64) -> usize {
    let longer = |g: usize| ((n - g.min(n)) as f64 * cpu_s).max(g as f64 * pcie_s);
    if want != now && longer(want) < (1.0 - SPLIT_GAIN) * longer(now) {
        want
    } else {
        now
    }
}

/// The predicted gain in a step's longer side below which the adaptive split stays put.
const SPLIT_GAIN: f64 = 0.03;

impl GpuModel {
    /// Lets decode steps move split layers (prefill on the GPU, decode on the CPU) to the GPU
    /// and back, starting with `gpu_layers` of them on the GPU, balanced as
    /// [`AdaptiveSplit`] says; `pcie_bytes_s` is the host-to-device rate of their copies.
    pub fn set_adaptive_split(&mut self, gpu_layers: usize, pcie_bytes_s: f64) {
        let bytes = 2 * self.cfg.layer_params();
        self.adaptive = Some(AdaptiveSplit {
            pcie_s_per_layer: bytes as f64 / pcie_bytes_s.max(1.0),
            cpu_s_per_layer: None,
            gpu_layers,
        });
        self.apply_split(gpu_layers);
    }

    /// Streams `gpu_layers` of the split layers for every decode step and computes the rest
    /// on the CPU, without rebalancing.
    pub fn set_fixed_split(&mut self, gpu_layers: usize) {
        self.adaptive = None;
        self.apply_split(gpu_layers);
    }

    /// Split layers decoded on the CPU and on the GPU now.
    pub fn split_counts(&self) -> (usize, usize) {
        let split: Vec<usize> = (0..self.runs.len())
            .filter(|&l| self.runs[l].mode == LayerMode::Split)
            .collect();
        let gpu = split.iter().filter(|&&l| self.split_gpu[l]).count();
        (split.len() - gpu, gpu)
    }

    /// Marks `gpu_layers` of the split layers, spread evenly among them, to decode on the GPU.
    fn apply_split(&mut self, gpu_layers: usize) {
        let split: Vec<usize> = (0..self.runs.len())
            .filter(|&l| self.runs[l].mode == LayerMode::Split)
            .collect();
        let marks = crate::placement::spread(split.len(), gpu_layers);
        for (&l, on) in split.iter().zip(marks) {
            self.split_gpu[l] = on;
        }
    }

    /// After a decode step that computed `cpu_layers` split layers on the CPU in `cpu_s`
    /// seconds: the next step's split.
    fn rebalance(&mut self, cpu_layers: usize, cpu_s: f64) {
        let (n_cpu, n_gpu) = self.split_counts();
        let Some(a) = self.adaptive.as_mut() else {
            return;
        };
        if cpu_layers > 0 {
            let c = cpu_s / cpu_layers as f64;
            a.cpu_s_per_layer = Some(a.cpu_s_per_layer.map_or(c, |old| 0.5 * old + 0.5 * c));
        }
        // The copies timed so far that have completed (the ones queued for the next step may
        // still be running: they count at the next rebalance).
        let (mut sum, mut n) = (0.0, 0usize);
        self.copy_times.retain(|(t0, t1)| {
            if !t1.is_complete() {
                return true;
            }
            if let Ok(ms) = t0.elapsed_ms(t1) {
                sum += ms as f64 / 1e3;
                n += 1;
            }
            false
        });
        if n > 0 {
            a.pcie_s_per_layer = 0.5 * a.pcie_s_per_layer + 0.5 * sum / n as f64;
        }
        let Some(c) = a.cpu_s_per_layer else {
            return;
        };
        let want = worth_moving(
            n_cpu + n_gpu,
            a.gpu_layers,
            balanced_gpu_layers(n_cpu + n_gpu, c, a.pcie_s_per_layer),
            c,
            a.pcie_s_per_layer,
        );
        if want != a.gpu_layers {
            a.gpu_layers = want;
            let g = a.gpu_layers;
            self.apply_split(g);
        }
    }

    /// Places `w` as `placement` says. Streamed layers' host copies are pinned when `pin` is set.
    /// Two staging buffers.
    pub fn new(gpu: Arc<Gpu>, w: Weights, placement: &[LayerPlacement], pin: bool) -> Result<Self> {
        Self::with_staging(gpu, w, placement, pin, 2)
    }

    /// As [`GpuModel::new`], with `nbuf` (≥ 2) staging buffers: the copy stream may run that
    /// many streamed layers ahead of the compute, which a placement that interleaves CPU
    /// layers with streamed ones needs, since the CPU layers wait for the streamed ones.
    pub fn with_staging(
        gpu: Arc<Gpu>,
        mut w: Weights,
        placement: &[LayerPlacement],
        pin: bool,
        nbuf: usize,
    ) -> Result<Self> {
        let nbuf = nbuf.max(2);
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
        let w_layers = w.layers.len();
        // The engine orders its streams itself (the staging buffers' `free`/`loaded` events,
        // pinned buffers' own events, synchronous reads back), so cudarc's per-buffer event
        // tracking is turned off for the buffers made from here on: at batch 1 it recorded an
        // event per kernel argument, host time that left the GPU idle between small kernels.
        // SAFETY: every buffer below is allocated on `stream`, which is synchronized before
        // `new` returns and before the copy stream first writes a staging buffer; a staging
        // buffer is written by the copy stream only after `free` and read by the compute stream
        // only after `loaded`; the model's buffers are dropped after its last synchronous step.
        unsafe { gpu.ctx().disable_event_tracking() };
        let stream = gpu.new_stream().map_err(gerr)?;
        let copy_stream = gpu.new_stream().map_err(gerr)?;
        let unpack_stream = match platform::env::switch("TANDEM_UNPACK_STREAM", true) {
            false => None,
            true => Some(gpu.new_stream().map_err(gerr)?),
        };
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
            if runs[l].mode == LayerMode::Split {
                // The CPU model packs the linears below; the GPU keeps the small tensors.
                let small: Vec<bf16> = layer_tensors(&w.layers[l])
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !LINEARS.contains(i))
                    .flat_map(|(_, t)| t.map_or(&[][..], |t| &t.data[..]))
                    .copied()
                    .collect();
                homes.push(LayerHome::Split(stream.clone_htod(&small).map_err(gerr)?));
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
        let any_streamed = homes
            .iter()
            .any(|l| matches!(l, LayerHome::Streamed(_) | LayerHome::Split(_)));
        let nstreamed = homes
            .iter()
            .filter(|l| matches!(l, LayerHome::Streamed(_) | LayerHome::Split(_)))
            .count();
        let staging = (0..nbuf.min(nstreamed).max(2 * any_streamed as usize))
            .map(|_| stream.alloc_zeros::<bf16>(layout.len).map_err(gerr))
            .collect::<Result<Vec<_>>>()?;
        let up = |t: &Tensor| stream.clone_htod(&t.data[..]).map_err(gerr);
        // The head runs where the last layer's prefill runs (a split last layer's decode
        // uploads its residual for it).
        let head_on_gpu = runs.last().map(|r| r.mode) != Some(LayerMode::Cpu);
        let head = head_on_gpu.then(|| up(w.lm_head())).transpose()?;
        let final_norm_w = up(&w.final_norm_w)?;
        let final_norm_b = w.final_norm_b.as_ref().map(up).transpose()?;
        let ev = |_| gpu.ctx().new_event(None).map_err(gerr);
        let free = (0..staging.len()).map(ev).collect::<Result<Vec<_>>>()?;
        let loaded = (0..staging.len()).map(ev).collect::<Result<Vec<_>>>()?;
        for e in &free {
            e.record(&stream).map_err(gerr)?;
        }
        let part_free = (0..LINEARS.len()).map(ev).collect::<Result<Vec<_>>>()?;
        for e in &part_free {
            e.record(&stream).map_err(gerr)?;
        }
        let part_copied = ev(0)?;
        let inv: Vec<f32> = if cfg.family == Family::Llama {
            cfg.rope_inv_freq().iter().map(|&x| x as f32).collect()
        } else {
            vec![0.0]
        };
        let inv_freq = stream.clone_htod(&inv).map_err(gerr)?;
        let cpu_mask: Vec<bool> = runs.iter().map(|r| r.mode != LayerMode::Gpu).collect();
        let cpu = CpuModel::with_layers(w, &cpu_mask, !head_on_gpu)?;
        let mut pins = Vec::new();
        let mut packed_len = 0;
        for (l, r) in runs.iter().enumerate() {
            if r.mode != LayerMode::Split {
                continue;
            }
            let cl = cpu.layers[l].as_ref().expect("split layers are packed");
            let ws = [&cl.qkv, &cl.o, &cl.up, &cl.down];
            packed_len = packed_len.max(ws.iter().map(|p| p.packed_bf16().len()).sum());
            if pin {
                for p in ws {
                    let t = p.packed_bf16();
                    // SAFETY: the tiles are one live HostBuf of the CPU model, which `self`
                    // owns and drops after `pins` (field order); every copy from them is on
                    // the copy stream, synchronized by HostPin's drop.
                    pins.push(unsafe { HostPin::slice(&gpu, t) }.map_err(gerr)?);
                }
            }
        }
        let packed_stage = (packed_len > 0)
            .then(|| stream.alloc_zeros::<bf16>(packed_len))
            .transpose()
            .map_err(gerr)?;
        stream.synchronize().map_err(gerr)?;
        // Last, so that a model that fails to build leaves no empty timeline file behind.
        let timeline = Timeline::from_env()?;
        Ok(GpuModel {
            gpu,
            cfg,
            stream,
            copy_stream,
            unpack_stream,
            part_free,
            part_copied,
            blas,
            layout,
            homes,
            runs,
            pins,
            cpu,
            staging,
            packed_stage,
            final_norm_w,
            final_norm_b,
            head,
            inv_freq,
            free,
            loaded,
            trace: None,
            timeline,
            copy_times: Vec::new(),
            time_copies: false,
            pin,
            split_gpu: vec![false; w_layers],
            adaptive: None,
            stage_base: 0,
            prefetched: Vec::new(),
        })
    }

    /// Queues the copy of streamed layer `l` into staging buffer `s` on the copy stream, after
    /// the compute stream has finished with that buffer.
    fn load(&mut self, l: usize, s: usize) -> Result<()> {
        let cs = self.copy_stream.clone();
        if !matches!(self.homes[l], LayerHome::Streamed(_) | LayerHome::Split(_)) {
            return Ok(());
        }
        cs.wait(&self.free[s]).map_err(gerr)?;
        let t0 = self.mark(&cs)?;
        let timed = if self.time_copies {
            Some(self.mark_now(&cs)?)
        } else {
            None
        };
        let dst = &mut self.staging[s];
        // The stream whose work completes the layer.
        let last = match &self.homes[l] {
            LayerHome::Streamed(host) => {
                match host {
                    HostLayer::Pinned(pb) => {
                        copy_blocks_h2d(&cs, pb, dst, self.layout.len, &[(0, 0)]).map_err(gerr)?
                    }
                    HostLayer::Pageable(v) => cs.memcpy_htod(&v[..], dst).map_err(gerr)?,
                }
                cs.clone()
            }
            LayerHome::Split(small) => {
                let cl = self.cpu.layers[l]
                    .as_ref()
                    .expect("split layers are packed");
                let stage = self.packed_stage.as_mut().expect("packed staging");
                // Each part is unpacked on the unpack stream (where there is one) once copied,
                // while the copy stream moves on to the next part.
                let us = self.unpack_stream.clone().unwrap_or_else(|| cs.clone());
                let mut at = 0;
                for (p, (pw, t)) in [&cl.qkv, &cl.o, &cl.up, &cl.down]
                    .into_iter()
                    .zip(LINEARS)
                    .enumerate()
                {
                    let src = pw.packed_bf16();
                    let mut part = stage.slice_mut(at..at + src.len());
                    // The last unpack of this part (a layer ago) has read it.
                    cs.wait(&self.part_free[p]).map_err(gerr)?;
                    // Pinned in place (HostPin) when the weights are pinned: a DMA at full
                    // speed; otherwise the driver stages the pageable copy.
                    cs.memcpy_htod(src, &mut part).map_err(gerr)?;
                    self.part_copied.record(&cs).map_err(gerr)?;
                    us.wait(&self.part_copied).map_err(gerr)?;
                    let (o, n) = self.layout.at[t];
                    let gate_up = matches!(pw.kind(), amx_kernels::WeightKind::GateUp { .. });
                    unpack_vnni_bf16(
                        &self.gpu,
                        &us,
                        &part,
                        pw.n(),
                        pw.k(),
                        gate_up,
                        &mut dst.slice_mut(o..o + n),
                    )
                    .map_err(gerr)?;
                    self.part_free[p].record(&us).map_err(gerr)?;
                    at += src.len();
                }
                let mut so = 0;
                for i in (0..12).filter(|i| !LINEARS.contains(i)) {
                    let (o, n) = self.layout.at[i];
                    if n > 0 {
                        us.memcpy_dtod(&small.slice(so..so + n), &mut dst.slice_mut(o..o + n))
                            .map_err(gerr)?;
                        so += n;
                    }
                }
                // Its last unpack comes after all its copies.
                us
            }
            _ => unreachable!("checked above"),
        };
        self.loaded[s].record(&last).map_err(gerr)?;
        if let Some(a) = timed {
            let b = self.mark_now(&cs)?;
            self.copy_times.push((a, b));
        }
        if let Some(t0) = t0 {
            let t1 = self.mark(&cs)?.expect("tracing");
            self.trace
                .as_mut()
                .expect("tracing")
                .copies
                .push((l, t0, t1));
        }
        Ok(())
    }

    /// A timing event recorded on `stream` now (tracing or not).
    fn mark_now(&self, stream: &CudaStream) -> Result<CudaEvent> {
        let e = self
            .gpu
            .ctx()
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(gerr)?;
        e.record(stream).map_err(gerr)?;
        Ok(e)
    }

    /// A timing event recorded on `stream` now, when tracing.
    fn mark(&self, stream: &CudaStream) -> Result<Option<CudaEvent>> {
        if self.trace.is_none() {
            return Ok(None);
        }
        self.mark_now(stream).map(Some)
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

/// A decode step captured once as a CUDA graph and replayed: every buffer its kernels touch is
/// its own or the session's and stays where it is, so each step only rewrites the ids and the
/// embedded rows in place before the launch. Valid while the batch keeps its size and every
/// context fits `pages` pages (the block tables are padded to that width and the paged
/// attention's split is planned for it); otherwise the session captures a new one.
struct DecodeGraph {
    /// Declared first: the graph is destroyed before the buffers it uses.
    exec: CudaGraph,
    batch: usize,
    pages: usize,
    dev: DevIds,
    a: Acts,
    /// Written and read by the graph's attention kernels only.
    #[allow(dead_code)]
    scratch: DecodeScratch,
    logits: CudaSlice<bf16>,
    top: CudaSlice<i32>,
}

/// One minibatch of a step: its ids, device buffers, host residual and where the residual is.
struct Minibatch {
    ids: StepIds,
    dev: DevIds,
    a: Acts,
    x_host: Vec<f32>,
    at: Residual,
    /// Its Q/K/V rows on the host, for attention on the CPU (pinned: the copy is asynchronous).
    qkv_host: Option<PinnedBuf<bf16>>,
}

/// Where the residual stream is, between layers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Residual {
    Host,
    /// On the GPU; `true` when the last S6's output still waits in `delta` to be added.
    Gpu(bool),
}

/// Step buffers a session keeps for its next steps, at least (more when a step has more
/// minibatches): the oldest go first.
const SPARE_STEPS: usize = 2;

/// Drops all but the last `n` of `v`.
fn keep_latest<T>(v: &mut Vec<T>, n: usize) {
    v.drain(..v.len().saturating_sub(n));
}

/// A batch of sequences: KV on the GPU for GPU-attention layers, on the host for the others.
pub struct GpuSession<'m> {
    pub model: &'m mut GpuModel,
    kc: Vec<Option<CudaSlice<bf16>>>,
    vc: Vec<Option<CudaSlice<bf16>>>,
    /// The host KV cache page-locked in place when the model's host copies are pinned (the
    /// prompt's KV of layers that decode on the CPU comes down at full PCIe speed). Declared
    /// before `host_kv`, so that it is unregistered first. Held for `Drop`.
    #[allow(dead_code)]
    kv_pins: Vec<HostPin>,
    host_kv: HostKv,
    shape: KvShape,
    pub seqs: Sequences,
    /// Step buffers kept for the next step of the same size (every decode step of a batch).
    spare: Vec<(usize, Acts)>,
    /// Host residual rows kept for the next steps (see [`GpuSession::reserve`]).
    spare_host: Vec<Vec<f32>>,
    /// Pinned buffers for Q/K/V rows going to the CPU, kept between steps.
    pinned_pool: Vec<PinnedBuf<bf16>>,
    /// Pinned bf16 buffers, driver-allocated, for rows going up to the GPU (residuals, a CPU
    /// layer's Q/K/V, the context of attention on the CPU; see [`pull_rows`]).
    pinned_up_pool: Vec<PinnedBuf<bf16>>,
    /// Time the next steps with CUDA events ([`GpuSession::last_trace`]).
    pub trace: bool,
    last_trace: Option<StepTrace>,
    /// Replay decode steps from a captured CUDA graph where the whole model runs on the GPU
    /// from resident weights (see [`DecodeGraph`]); on unless `TANDEM_CUDA_GRAPHS=0`.
    pub graphs: bool,
    graph: Option<DecodeGraph>,
    /// Decode steps run from a graph so far.
    graph_replays: usize,
    /// A capture failed once (noted once).
    capture_failed: bool,
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
        let mut kv_pins = Vec::new();
        if model.pin {
            for b in host_kv.k.iter().chain(&host_kv.v).filter(|b| !b.is_empty()) {
                // SAFETY: the buffer is owned by `host_kv`, which the session drops after
                // `kv_pins` (field order) and never reallocates; every copy from or to it is on
                // the model's stream, synchronized by HostPin's drop.
                kv_pins.push(unsafe { HostPin::slice(&model.gpu, b) }.map_err(gerr)?);
            }
        }
        let seqs = Sequences::new(num_blocks, c.max_positions);
        Ok(GpuSession {
            model,
            kc,
            vc,
            kv_pins,
            host_kv,
            shape,
            seqs,
            spare: Vec::new(),
            spare_host: Vec::new(),
            pinned_pool: Vec::new(),
            pinned_up_pool: Vec::new(),
            trace: false,
            last_trace: None,
            graphs: platform::env::switch("TANDEM_CUDA_GRAPHS", true),
            graph: None,
            graph_replays: 0,
            capture_failed: false,
        })
    }

    /// Allocates, before any step needs them, what a step of `minibatches` minibatches of
    /// `tokens` tokens each would otherwise allocate on its way (a prefill's first layer then
    /// waited for them: 0.25–0.3 s of OPT-30B's batch-64 prefill, more than its other layers
    /// took): the GPU step buffers, the pinned rows its residuals go up through, and the host
    /// residuals with their pages touched. A server does this once at start; the bench, once
    /// per session before its clock starts. Buffers of other sizes are still made when needed.
    pub fn reserve(&mut self, tokens: usize, minibatches: usize) -> Result<()> {
        let h = self.model.cfg.hidden;
        for _ in 0..minibatches {
            let a = self.acts(tokens)?;
            self.spare.push((tokens, a));
            // Written (not `vec![0; n]`, whose pages stay unmapped until `embed` writes them).
            let mut x = Vec::with_capacity(tokens * h);
            x.resize(tokens * h, 0f32);
            self.spare_host.push(x);
            let buf = PinnedBuf::alloc(&self.model.gpu, tokens * h).map_err(gerr)?;
            self.pinned_up_pool.push(buf);
        }
        Ok(())
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

    /// Queues the copy of a step's Q/K/V rows to the host, for attention on the CPU.
    fn qkv_to_host(&self, n: usize, a: &Acts, host: &mut PinnedBuf<bf16>) -> Result<()> {
        copy_blocks_d2h(&self.model.stream, &a.qkv, host, n, &[(0, 0)]).map_err(gerr)
    }

    /// S2 + S3 of GPU layer `l` on the CPU over host KV, once `qkv` (the rows copied by
    /// [`Self::qkv_to_host`]) is there; the context goes back up into `a.att`, read by the GPU
    /// from pinned memory.
    fn cpu_attention_rows(
        &mut self,
        l: usize,
        ids: &StepIds,
        prefill: bool,
        qkv: &PinnedBuf<bf16>,
        a: &mut Acts,
    ) -> Result<()> {
        let m: &GpuModel = self.model;
        let c = &m.cfg;
        let t = ids.tokens.len();
        let (hq, hk, d, w) = (c.heads, c.kv_heads, c.head_dim, c.qkv_dim());
        let qkv = qkv.as_slice().map_err(gerr)?;
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
        pull_rows(m, &mut self.pinned_up_pool, att.len(), &mut a.att, |up| {
            up.copy_from_slice(&att);
            Ok(())
        })
    }

    /// S2 + S3 of GPU layer `l` on the GPU over its KV.
    fn gpu_attention(
        &mut self,
        l: usize,
        ids: &StepIds,
        dev: &DevIds,
        prefill: bool,
        a: &mut Acts,
        scratch: Option<&mut DecodeScratch>,
    ) -> Result<()> {
        let m: &GpuModel = self.model;
        let c = &m.cfg;
        let t = ids.tokens.len();
        let (hq, hk, d, w) = (c.heads, c.kv_heads, c.head_dim, c.qkv_dim());
        let scale = 1.0 / (d as f32).sqrt();
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
            paged_decode_bf16_scratch(
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
                DecodeKernel::Auto,
                scratch,
            )
            .map_err(gerr)
        }
    }

    /// S1 of a GPU layer (norm, QKV, RoPE); its weights are in `staging` (streamed) or
    /// resident.
    fn gpu_s1(
        &self,
        l: usize,
        staging: Option<usize>,
        t: usize,
        dev: &DevIds,
        a: &mut Acts,
        pending: bool,
    ) -> Result<()> {
        let c = &self.model.cfg;
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
                // Q's heads and K's follow each other in a row: one launch rotates both.
                rope_bf16(
                    g,
                    s,
                    &mut a.qkv.slice_mut(0..),
                    rows(c.heads + c.kv_heads),
                    &dev.positions,
                    &m.inv_freq,
                )
                .map_err(gerr)?;
            }
        }
        Ok(())
    }

    /// S4–S6 of a GPU layer, after its attention wrote `a.att`.
    fn gpu_s4_s6(&self, l: usize, staging: Option<usize>, t: usize, a: &mut Acts) -> Result<()> {
        let c = &self.model.cfg;
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
                // Gate/up and SiLU·mul: one pass for small batches (`a.up` unused), the
                // product through `a.up` otherwise.
                m.blas
                    .linear_silu_mul_bf16(
                        t,
                        c.ffn,
                        c.hidden,
                        &a.a,
                        &v(UP_W).unwrap(),
                        &mut a.up,
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
            if r.attn_cpu_prefill == r.attn_cpu_decode {
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

    /// A pinned host buffer of at least `n` elements (see [`take_pinned`]).
    fn pinned(&mut self, n: usize) -> Result<PinnedBuf<bf16>> {
        take_pinned(&self.model.gpu, &mut self.pinned_pool, n)
    }

    /// A minibatch's state through one step.
    fn minibatch(&mut self, ids: StepIds) -> Result<Minibatch> {
        let c = &self.model.cfg;
        let s = &self.model.stream;
        let t = ids.tokens.len();
        let up = |v: &[i32]| DeviceIds::upload(s, v).map_err(gerr);
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
        let mut x_host = match self
            .spare_host
            .iter()
            .position(|v| v.capacity() >= t * c.hidden)
        {
            Some(i) => self.spare_host.swap_remove(i),
            None => Vec::new(),
        };
        // (Every element is written by `embed`; a reused buffer keeps its pages.)
        x_host.resize(t * c.hidden, 0.0);
        embed(&self.model.cpu.w, &ids.tokens, &ids.positions, &mut x_host)?;
        let a = match self.spare.iter().position(|(n, _)| *n == t) {
            Some(i) => self.spare.swap_remove(i).1,
            None => self.acts(t)?,
        };
        Ok(Minibatch {
            ids,
            dev,
            a,
            x_host,
            at: Residual::Host,
            qkv_host: None,
        })
    }

    /// Layer `l` with its linears on the CPU and its attention on the GPU (over the GPU KV):
    /// every minibatch's S1 on the CPU, its Q/K/V rows up and its attention queued; then,
    /// minibatch by minibatch, the context down and S4–S6 on the CPU, while the GPU attends
    /// over the next minibatch. Returns the seconds spent waiting for residuals to come down.
    fn cpu_layer_gpu_attention(
        &mut self,
        l: usize,
        mbs: &mut [Minibatch],
        prefill: bool,
    ) -> Result<f64> {
        let (w, qd) = (self.model.cfg.qkv_dim(), self.model.cfg.q_dim());
        let mut downs = Vec::with_capacity(mbs.len());
        let mut waited = 0.0;
        for mb in mbs.iter_mut() {
            let t0 = std::time::Instant::now();
            self.residual_to_host(mb)?;
            waited += t0.elapsed().as_secs_f64();
            let t = mb.ids.tokens.len();
            let m: &GpuModel = self.model;
            pull_rows(m, &mut self.pinned_up_pool, t * w, &mut mb.a.qkv, |rows| {
                span(Part::Qkv, || {
                    s1_qkv_rows(&m.cpu, l, &mb.x_host, &mb.ids.positions, rows)
                })
            })?;
            let s = self.model.stream.clone();
            self.gpu_attention(l, &mb.ids, &mb.dev, prefill, &mut mb.a, None)?;
            let mut down = self.pinned(t * qd)?;
            copy_blocks_d2h(&s, &mb.a.att, &mut down, t * qd, &[(0, 0)]).map_err(gerr)?;
            downs.push(down);
        }
        for (mb, down) in mbs.iter_mut().zip(downs) {
            let t = mb.ids.tokens.len();
            let r = span(Part::Attention, || down.as_slice().map_err(gerr)).and_then(|att| {
                let cpu = &self.model.cpu;
                span(Part::Out, || {
                    s4_out(cpu, l, &att[..t * qd], &mut mb.x_host, t)
                })?;
                s56_mlp(cpu, l, &mut mb.x_host, t)
            });
            self.pinned_pool.push(down);
            r?;
        }
        Ok(waited)
    }

    /// Brings minibatch `mb`'s residual to the GPU (for a GPU layer, through [`pull_rows`]);
    /// returns whether the last S6's output is still to be added.
    fn residual_to_gpu(&mut self, mb: &mut Minibatch) -> Result<bool> {
        match mb.at {
            Residual::Host => {
                let x = &mb.x_host;
                pull_rows(
                    self.model,
                    &mut self.pinned_up_pool,
                    x.len(),
                    &mut mb.a.x,
                    |up| {
                        crate::exec::cpu::par_narrow(up, x);
                        Ok(())
                    },
                )?;
                Ok(false)
            }
            Residual::Gpu(p) => Ok(p),
        }
    }

    /// Brings minibatch `mb`'s residual to the host (for a CPU layer): into a pinned buffer on
    /// the model's stream, then widened to f32 on the pool (a batch-64 residual is 0.9 MB of
    /// bf16, which a pageable copy into a fresh buffer and one thread's widening held the CPU
    /// layer back by tenths of a millisecond, at every GPU layer before a CPU one).
    fn residual_to_host(&mut self, mb: &mut Minibatch) -> Result<()> {
        if let Residual::Gpu(pending) = mb.at {
            let t = mb.ids.tokens.len();
            if pending {
                self.flush(t, &mut mb.a)?;
            }
            let n = mb.x_host.len();
            let s = self.model.stream.clone();
            let mut down = self.pinned(n)?;
            let r = copy_blocks_d2h(&s, &mb.a.x, &mut down, n, &[(0, 0)])
                .and_then(|()| down.as_slice())
                .map_err(gerr)
                .map(|xb| crate::exec::cpu::par_widen(&mut mb.x_host, &xb[..n]));
            self.pinned_pool.push(down);
            r?;
            mb.at = Residual::Host;
        }
        Ok(())
    }

    /// One step over minibatches, layer by layer: a streamed layer's weights come over PCIe
    /// once for all of them (the next one's copy overlapping this one's compute), and where
    /// a GPU layer's attention runs on the CPU, every minibatch's S1 is queued first, so that
    /// the CPU attends over one minibatch while the GPU computes the others (and then their
    /// S4–S6 while the CPU attends over the next).
    fn step(
        &mut self,
        mut mbs: Vec<Minibatch>,
        prefill: bool,
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let c = self.model.cfg.clone();
        let s = self.model.stream.clone();
        // Layers whose weights come over PCIe in this phase (split layers in a prefill).
        let streamed: Vec<usize> = (0..c.layers)
            .filter(|&l| match self.model.homes[l] {
                LayerHome::Streamed(_) => true,
                LayerHome::Split(_) => prefill || self.model.split_gpu[l],
                _ => false,
            })
            .collect();
        let (mut cpu_layers, mut cpu_s) = (0usize, 0f64);
        self.model.time_copies = !prefill && self.model.adaptive.is_some();
        if self.trace || self.model.timeline.is_some() {
            let start = self.model.mark_now(&s)?;
            self.model.trace = Some(TraceEvents {
                start,
                t0: std::time::Instant::now(),
                prefill,
                copies: Vec::new(),
                computes: Vec::new(),
                cpu: Vec::new(),
                end: None,
                host_end: f64::NAN,
            });
        }
        let nbuf = self.model.staging.len();
        // Streamed layer i of this step goes through buffer (base + i) % nbuf; the base moves
        // on by the step's count, so that the previous decode step could already load this
        // step's first layers into the buffers it freed last (see the end of the loop below).
        let base = self.model.stage_base;
        let buf = |i: usize| (base + i) % nbuf.max(1);
        let ahead = std::mem::take(&mut self.model.prefetched);
        for (i, &l) in streamed.iter().take(nbuf).enumerate() {
            if !ahead.contains(&(l, buf(i))) {
                self.model.load(l, buf(i))?;
            }
        }
        for l in 0..c.layers {
            let run = self.model.runs[l];
            if run.on_cpu(prefill) && !self.model.split_gpu[l] {
                let begun = std::time::Instant::now();
                // The layer's own CPU time, for the adaptive split.
                let mut own = 0.0;
                if run.attn_cpu(prefill) {
                    for mb in mbs.iter_mut() {
                        self.residual_to_host(mb)?;
                        let t = std::time::Instant::now();
                        cpu_layer(
                            &self.model.cpu,
                            &mut self.host_kv,
                            l,
                            &mb.ids,
                            prefill,
                            &mut mb.x_host,
                        )?;
                        own += t.elapsed().as_secs_f64();
                    }
                } else {
                    let t = std::time::Instant::now();
                    let waited = self.cpu_layer_gpu_attention(l, &mut mbs, prefill)?;
                    // Not the wait for the residual, which holds the GPU layers before it (and
                    // their copies).
                    own = t.elapsed().as_secs_f64() - waited;
                }
                if run.mode == LayerMode::Split {
                    cpu_s += own;
                    cpu_layers += 1;
                }
                if let Some(tr) = self.model.trace.as_mut() {
                    let from = |i: std::time::Instant| i.duration_since(tr.t0).as_secs_f64();
                    let (a, b) = (from(begun), from(std::time::Instant::now()));
                    tr.cpu.push((l, a, b, (b - a - own).max(0.0)));
                }
                continue;
            }
            let slot = streamed.iter().position(|&x| x == l);
            if let Some(i) = slot {
                s.wait(&self.model.loaded[buf(i)]).map_err(gerr)?;
            }
            let st = slot.map(buf);
            let t0 = self.model.mark(&s)?;
            if run.attn_cpu(prefill) {
                for mb in mbs.iter_mut() {
                    let pending = self.residual_to_gpu(mb)?;
                    let t = mb.ids.tokens.len();
                    self.gpu_s1(l, st, t, &mb.dev, &mut mb.a, pending)?;
                    let mut host = match mb.qkv_host.take() {
                        Some(h) => h,
                        None => self.pinned(t * c.qkv_dim())?,
                    };
                    self.qkv_to_host(t * c.qkv_dim(), &mb.a, &mut host)?;
                    mb.qkv_host = Some(host);
                }
                for mb in mbs.iter_mut() {
                    let host = mb.qkv_host.take().expect("queued above");
                    let r = self.cpu_attention_rows(l, &mb.ids, prefill, &host, &mut mb.a);
                    mb.qkv_host = Some(host);
                    r?;
                    self.gpu_s4_s6(l, st, mb.ids.tokens.len(), &mut mb.a)?;
                    mb.at = Residual::Gpu(true);
                }
            } else {
                for mb in mbs.iter_mut() {
                    let pending = self.residual_to_gpu(mb)?;
                    let t = mb.ids.tokens.len();
                    self.gpu_s1(l, st, t, &mb.dev, &mut mb.a, pending)?;
                    self.gpu_attention(l, &mb.ids, &mb.dev, prefill, &mut mb.a, None)?;
                    self.gpu_s4_s6(l, st, t, &mut mb.a)?;
                    mb.at = Residual::Gpu(true);
                }
            }
            if let Some(t0) = t0 {
                let t1 = self.model.mark_now(&s)?;
                let tr = self.model.trace.as_mut().expect("tracing");
                tr.computes.push((l, t0, t1));
            }
            if let Some(i) = slot {
                self.model.free[buf(i)].record(&s).map_err(gerr)?;
                if let Some(&next) = streamed.get(i + nbuf) {
                    self.model.load(next, buf(i))?;
                } else if !prefill && !self.trace && i + nbuf - streamed.len() < streamed.len() {
                    // A decode step is most likely followed by another with the same streamed
                    // layers: load the next step's first ones now, over this step's last CPU
                    // layers and head, into the buffers they will use there. (Not while
                    // tracing: the trace sums this step's copies.)
                    let j = i + nbuf - streamed.len();
                    self.model.load(streamed[j], buf(i))?;
                    self.model.prefetched.push((streamed[j], buf(i)));
                }
            }
        }
        if nbuf > 0 {
            self.model.stage_base = (base + streamed.len()) % nbuf;
        }
        if !prefill {
            self.model.rebalance(cpu_layers, cpu_s);
        }
        let mut traced = self.model.trace.take();
        if let Some(tr) = traced.as_mut() {
            let end = self.model.mark_now(&s)?;
            if self.trace {
                self.model.copy_stream.synchronize().map_err(gerr)?;
                let secs = |a: &CudaEvent, b: &CudaEvent| -> Result<f64> {
                    Ok(a.elapsed_ms(b).map_err(gerr)? as f64 / 1e3)
                };
                let mut t = StepTrace {
                    layers_copied: tr.copies.len(),
                    layers_computed: tr.computes.len(),
                    wall_s: secs(&tr.start, &end)?,
                    ..Default::default()
                };
                for (_, a, b) in &tr.copies {
                    t.copy_s += secs(a, b)?;
                }
                for (_, a, b) in &tr.computes {
                    t.compute_s += secs(a, b)?;
                }
                self.last_trace = Some(t);
            }
            tr.end = Some(end);
        }
        let mut toks = Vec::new();
        let mut logits: Option<Vec<f32>> = want_logits.then(Vec::new);
        let keep = SPARE_STEPS.max(mbs.len());
        for mut mb in mbs {
            if prefill {
                self.migrate_kv(&mb.ids)?;
            }
            let t = mb.ids.tokens.len();
            let (tk, lg) = match mb.at {
                Residual::Host if self.model.head.is_none() => {
                    let lg = lm_head(&self.model.cpu, &mb.x_host, &mb.ids.last_rows)?;
                    (argmax_rows(&lg, c.vocab), want_logits.then_some(lg))
                }
                Residual::Host => {
                    // A split last layer decoded on the CPU; the head lives on the GPU.
                    self.residual_to_gpu(&mut mb)?;
                    self.gpu_head(t, &mut mb.a, &mb.ids, false, want_logits)?
                }
                Residual::Gpu(pending) => {
                    self.gpu_head(t, &mut mb.a, &mb.ids, pending, want_logits)?
                }
            };
            toks.extend(tk);
            if let (Some(all), Some(lg)) = (logits.as_mut(), lg) {
                all.extend(lg);
            }
            // Every buffer is fully written before it is read in a step, so reuse needs no
            // reset (decode steps of a batch all have the same size).
            self.spare.push((t, mb.a));
            self.spare_host.push(mb.x_host);
            self.pinned_pool.extend(mb.qkv_host);
        }
        // Only the latest few are kept (a batch's decode steps all have one size).
        keep_latest(&mut self.spare, keep);
        keep_latest(&mut self.spare_host, keep);
        if let (Some(mut tr), Some(tl)) = (traced, self.model.timeline.as_mut()) {
            tr.host_end = tr.t0.elapsed().as_secs_f64();
            tl.steps.push(tr);
        }
        Ok((toks, logits))
    }

    /// Final norm, LM head and argmax on the GPU over each sequence's last row.
    fn gpu_head(
        &self,
        t: usize,
        a: &mut Acts,
        ids: &StepIds,
        pending: bool,
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let m = &self.model;
        let c = &m.cfg;
        let (g, s) = (&*m.gpu, &m.stream);
        let head = m
            .head
            .as_ref()
            .ok_or_else(|| Error::Placement("the LM head is not on the GPU".into()))?;
        if pending {
            self.flush(t, a)?;
        } else {
            let fb = m.final_norm_b.as_ref().map(|b| b.slice(0..));
            m.norm(
                t,
                &mut a.x,
                None,
                &m.final_norm_w.slice(0..),
                fb.as_ref(),
                &mut a.a,
            )?;
        }
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

    /// Where the last traced step's time went (with `trace` set).
    pub fn last_trace(&self) -> Option<&StepTrace> {
        self.last_trace.as_ref()
    }

    /// Prefills new sequences; returns each prompt's greedy next token, and its logits
    /// `[B, vocab]` when asked.
    pub fn prefill(
        &mut self,
        prompts: &[Vec<u32>],
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        self.prefill_minibatches(prompts, 1, want_logits)
    }

    /// Prefills new sequences in `n` minibatches of consecutive prompts, run layer by layer
    /// together (see [`Self::step`]); the results are in prompt order.
    pub fn prefill_minibatches(
        &mut self,
        prompts: &[Vec<u32>],
        n: usize,
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        if prompts.is_empty() {
            return Err(Error::Input("prefill: no prompts".into()));
        }
        let per = crate::bench::minibatch_len(prompts.len(), n);
        let mut mbs = Vec::new();
        for chunk in prompts.chunks(per) {
            let ids = self.seqs.prefill(chunk)?;
            mbs.push(self.minibatch(ids)?);
        }
        self.step(mbs, true, want_logits)
    }

    /// One decode step (one new token per sequence, in order).
    pub fn decode(
        &mut self,
        tokens: &[u32],
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let ids = self.seqs.decode(tokens)?;
        if self.graph_fits() {
            return self.decode_graph(ids, want_logits);
        }
        let mb = self.minibatch(ids)?;
        self.step(vec![mb], false, want_logits)
    }

    /// Decode steps this session ran from a captured CUDA graph.
    pub fn graph_replays(&self) -> usize {
        self.graph_replays
    }

    /// Whether decode steps can replay a CUDA graph: every layer on the GPU with resident
    /// weights and its attention there, the head too, and no tracing (whose events are
    /// recorded per step).
    fn graph_fits(&self) -> bool {
        let m = &self.model;
        self.graphs
            && !self.trace
            && m.head.is_some()
            && m.runs
                .iter()
                .all(|r| r.mode == LayerMode::Gpu && !r.attn_cpu(false))
            && m.homes.iter().all(|h| matches!(h, LayerHome::Resident(_)))
    }

    /// A decode step through the captured graph, capturing a new one where the batch size
    /// changed or a context outgrew the graph's pages.
    fn decode_graph(
        &mut self,
        mut ids: StepIds,
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        let c = self.model.cfg.clone();
        let s = self.model.stream.clone();
        let b = ids.tokens.len();
        if ids.last_rows.iter().enumerate().any(|(i, &r)| i != r) {
            return Err(Error::Input(
                "a decode step has one token per sequence".into(),
            ));
        }
        let keep = matches!(&self.graph, Some(g) if g.batch == b && g.pages >= ids.width);
        if !keep {
            // Dropped before the new one is built: its buffers are freed first.
            self.graph = None;
        }
        let pages = match &self.graph {
            Some(g) => g.pages,
            // Powers of two: a batch decoding up to its model's length captures a handful.
            None => ids
                .width
                .next_power_of_two()
                .max(4)
                .min(c.max_positions.div_ceil(BLOCK_TOKENS))
                .max(ids.width),
        };
        pad_tables(&mut ids, pages);
        let positions: Vec<i32> = ids.positions.iter().map(|&p| p as i32).collect();
        let mut x_host = vec![0f32; b * c.hidden];
        embed(&self.model.cpu.w, &ids.tokens, &ids.positions, &mut x_host)?;
        let xb: Vec<bf16> = x_host.iter().map(|&v| bf16::from_f32(v)).collect();
        let g = match self.graph.take() {
            Some(mut g) => {
                g.dev.positions.update(&s, &positions).map_err(gerr)?;
                g.dev.slots.update(&s, &ids.slots).map_err(gerr)?;
                g.dev.tables.update(&s, &ids.tables).map_err(gerr)?;
                g.dev.ctx.update(&s, &ids.ctx).map_err(gerr)?;
                s.memcpy_htod(&xb, &mut g.a.x).map_err(gerr)?;
                g
            }
            None => match self.capture_decode(&ids, &positions, pages) {
                Ok(mut g) => {
                    s.memcpy_htod(&xb, &mut g.a.x).map_err(gerr)?;
                    // Capturing queued nothing: the step runs below, as every replay does.
                    g
                }
                Err(e) => {
                    // A capture can be invalidated from outside (another thread of the
                    // process synchronizing the device); nothing of the step ran, so it runs
                    // launch by launch, and the next step tries again.
                    if !self.capture_failed {
                        eprintln!("note: decode step not captured as a CUDA graph ({e}); launching its kernels one by one");
                        self.capture_failed = true;
                    }
                    let mb = self.minibatch(ids)?;
                    return self.step(vec![mb], false, want_logits);
                }
            },
        };
        self.graph_replays += 1;
        let r = (|| -> Result<(Vec<u32>, Option<Vec<f32>>)> {
            g.exec.launch().map_err(gerr)?;
            let toks = s
                .clone_dtoh(&g.top)
                .map_err(gerr)?
                .into_iter()
                .map(|x| x as u32)
                .collect();
            let lg = want_logits
                .then(|| s.clone_dtoh(&g.logits).map_err(gerr))
                .transpose()?
                .map(|v| v.into_iter().map(|x| x.to_f32()).collect());
            Ok((toks, lg))
        })();
        self.graph = Some(g);
        r
    }

    /// Captures one decode step of `ids` (tables padded to `pages`) over buffers of its own.
    fn capture_decode(
        &mut self,
        ids: &StepIds,
        positions: &[i32],
        pages: usize,
    ) -> Result<DecodeGraph> {
        let m: &GpuModel = self.model;
        let c = m.cfg.clone();
        let s = m.stream.clone();
        let b = ids.tokens.len();
        let up = |v: &[i32]| DeviceIds::upload(&s, v).map_err(gerr);
        let dev = DevIds {
            positions: up(positions)?,
            slots: up(&ids.slots)?,
            cu: up(&(0..=b as i32).collect::<Vec<_>>())?,
            tables: up(&ids.tables)?,
            ctx: up(&ids.ctx)?,
        };
        let mut a = self.acts(b)?;
        let mut scratch = DecodeScratch::new(
            &m.gpu,
            &s,
            b,
            c.heads,
            self.shape,
            pages,
            DecodeKernel::Auto,
        )
        .map_err(gerr)?;
        let mut logits = s.alloc_zeros::<bf16>(b * c.vocab).map_err(gerr)?;
        let mut top = s.alloc_zeros::<i32>(b).map_err(gerr)?;
        // Everything above is in place before the capture starts.
        s.synchronize().map_err(gerr)?;
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(gerr)?;
        let queued = (|| -> Result<()> {
            for l in 0..c.layers {
                self.gpu_s1(l, None, b, &dev, &mut a, l > 0)?;
                self.gpu_attention(l, ids, &dev, false, &mut a, Some(&mut scratch))?;
                self.gpu_s4_s6(l, None, b, &mut a)?;
            }
            // Final norm (with the last delta), LM head over every row, argmax.
            self.flush(b, &mut a)?;
            let m: &GpuModel = self.model;
            let head = m.head.as_ref().expect("graph_fits checked the head");
            m.blas
                .linear_bf16(
                    b,
                    c.vocab,
                    c.hidden,
                    &a.a,
                    head,
                    GEpi::None,
                    false,
                    &mut logits,
                )
                .map_err(gerr)?;
            argmax_bf16(&m.gpu, &m.stream, &logits, c.vocab, &mut top).map_err(gerr)
        })();
        // The capture ends whatever happened, so that the stream is usable again.
        let graph = s.end_capture(sys::CUgraphInstantiate_flags(0));
        queued?;
        let exec = graph
            .map_err(gerr)?
            .ok_or_else(|| Error::Kernel("the decode step's CUDA graph came back empty".into()))?;
        Ok(DecodeGraph {
            exec,
            batch: b,
            pages,
            dev,
            a,
            scratch,
            logits,
            top,
        })
    }
}

/// A pinned host buffer of at least `n` elements from `pool` (buffers earlier uses gave back:
/// page-locking is slow, and a decode step moving rows every layer needs one each time), or a
/// new one.
fn take_pinned<T: Copy + cudarc::driver::DeviceRepr>(
    gpu: &Gpu,
    pool: &mut Vec<PinnedBuf<T>>,
    n: usize,
) -> Result<PinnedBuf<T>> {
    match pool.iter().position(|b| b.len() >= n) {
        Some(i) => Ok(pool.swap_remove(i)),
        None => PinnedBuf::alloc(gpu, n).map_err(gerr),
    }
}

/// `n` rows' elements going up to `dst` (the residual, a CPU layer's Q/K/V, the context of
/// attention on the CPU): `fill` writes them as bf16 (rounded to nearest even, as the GPU
/// rounds) into a pinned buffer from `pool`, which the GPU reads itself on the model's stream
/// ([`pull_bf16`]), rather than a copy on the host→device engine, where it would queue behind
/// every weight copy of the streamed layers ahead. The buffer goes back to `pool`.
fn pull_rows(
    m: &GpuModel,
    pool: &mut Vec<PinnedBuf<bf16>>,
    n: usize,
    dst: &mut CudaSlice<bf16>,
    fill: impl FnOnce(&mut [bf16]) -> Result<()>,
) -> Result<()> {
    let mut up = take_pinned(&m.gpu, pool, n)?;
    let r = up
        .as_mut_slice()
        .map_err(gerr)
        .and_then(|rows| fill(&mut rows[..n]))
        .and_then(|()| pull_bf16(&m.gpu, &m.stream, &up, dst, n).map_err(gerr));
    pool.push(up);
    r
}

/// Pads a step's block tables to `pages` entries per sequence (entries past a context are
/// never read; block 0 is a valid id).
fn pad_tables(ids: &mut StepIds, pages: usize) {
    if ids.width == pages {
        return;
    }
    let n = ids.ctx.len();
    let mut t = vec![0i32; n * pages];
    for i in 0..n {
        t[i * pages..i * pages + ids.width]
            .copy_from_slice(&ids.tables[i * ids.width..(i + 1) * ids.width]);
    }
    ids.tables = t;
    ids.width = pages;
}

fn layer_buf(m: &GpuModel, l: usize, staging: Option<usize>) -> &CudaSlice<bf16> {
    match (&m.homes[l], staging) {
        (LayerHome::Resident(b), _) => b,
        (LayerHome::Streamed(_) | LayerHome::Split(_), Some(s)) => &m.staging[s],
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
    fn adaptive_split_balances_cpu_and_pcie_time() {
        // OPT-30B at batch 1: 13.6 ms per CPU layer, 22.5 ms per copied layer, 48 layers.
        assert_eq!(balanced_gpu_layers(48, 13.6e-3, 22.5e-3), 18);
        assert_eq!(balanced_gpu_layers(48, 1.0, 1.0), 24);
        assert_eq!(balanced_gpu_layers(10, 0.0, 1.0), 0);
        assert_eq!(balanced_gpu_layers(10, 1.0, 0.0), 10);
        assert_eq!(balanced_gpu_layers(0, 1.0, 1.0), 0);
        // 21.5 ms a CPU layer, 22.7 ms a copy: 26 streamed of 48 leave the copies 590 ms,
        // the balance's 23 the CPU 538 ms: moved. From 24 (545 ms of copies) 23 gains 1.3 %:
        // kept; from 23, 22 or 24 would be slower: kept.
        let want = balanced_gpu_layers(48, 21.5e-3, 22.7e-3);
        assert_eq!(want, 23);
        assert_eq!(worth_moving(48, 26, want, 21.5e-3, 22.7e-3), 23);
        assert_eq!(worth_moving(48, 24, want, 21.5e-3, 22.7e-3), 24);
        assert_eq!(worth_moving(48, 23, 22, 21.5e-3, 22.7e-3), 23);
        assert_eq!(worth_moving(48, 23, 24, 21.5e-3, 22.7e-3), 23);
        assert_eq!(worth_moving(0, 0, 0, 1.0, 1.0), 0);
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
        let r = run("0", "1", 0.0).unwrap();
        assert_eq!(
            (r.mode, r.attn_cpu_prefill, r.attn_cpu_decode),
            (LayerMode::Split, false, true)
        );
        assert!(r.kv_on_gpu() && r.kv_on_host());
        assert!(!r.on_cpu(true) && r.on_cpu(false));
        let e = run("1", "0", 0.0).unwrap_err().to_string();
        assert!(e.contains("not executed"), "{e}");
        let e = run("0", "1", 100.0).unwrap_err().to_string();
        assert!(e.contains("GPU-resident"), "{e}");
        assert!(run("1", "1", 100.0)
            .unwrap_err()
            .to_string()
            .contains("GPU-resident"));
        let e = run("0,0,0,0,1,1", "0", 0.0).unwrap_err().to_string();
        assert!(e.contains("not executed yet"), "{e}");
        // Linears on the CPU, attention on the GPU: the KV lives only there.
        let r = run("1,0,0,1,1,1", "100111", 0.0).unwrap();
        assert_eq!(
            (r.mode, r.attn_cpu_prefill, r.attn_cpu_decode),
            (LayerMode::Cpu, false, false)
        );
        assert!(r.kv_on_gpu() && !r.kv_on_host());
        let r = run("0", "100111", 0.0).unwrap();
        assert_eq!(
            (r.mode, r.attn_cpu_prefill, r.attn_cpu_decode),
            (LayerMode::Split, false, false)
        );
        assert!(r.kv_on_gpu() && !r.kv_on_host());
        let r = run("1", "100111", 0.0).unwrap();
        assert_eq!(
            (r.mode, r.attn_cpu_prefill, r.attn_cpu_decode),
            (LayerMode::Cpu, true, false)
        );
        assert!(r.kv_on_gpu() && r.kv_on_host());
        assert!(run("1,0,0,1,1,1", "100111", 100.0).is_err());
    }
}
