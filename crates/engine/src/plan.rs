//! A run's plan: the model, the placement of every layer, the batch, and the memory each tier
//! must hold. Built and checked before any work starts, so that a combination that cannot run
//! (no GPU, GPU too small, a missing NUMA node, S2 ≠ S3) is refused with the reason and what
//! would fit.
//!
//! Accounting (bytes):
//! - GPU: resident layers' weights; two staging buffers of the largest streamed layer when any
//!   non-resident layer has GPU sublayers, and a third for the packed form when a layer is
//!   split (prefill on the GPU, decode on the CPU); the LM head and final norm when the last
//!   layer has GPU linears in either phase; KV of every layer whose attention runs on the GPU
//!   in either phase; an activation workspace.
//! - Host (the weights tier): non-resident layers' weights, once each, embeddings; plus KV of
//!   layers whose attention runs on the CPU.

use serde::Serialize;

use crate::caps::Capabilities;
use crate::config::ModelConfig;
use crate::placement::{layer_placements, LayerOverride, LayerPlacement, Policy};
use crate::{Error, Result};
use platform::MemTier;

/// What the user asked for (the CLI flags, LIA's names).
#[derive(Clone, Debug, Serialize)]
pub struct RunSpec {
    pub batch_size: usize,
    pub input_tokens: usize,
    pub max_new_tokens: usize,
    pub prefill_policy: Policy,
    pub decode_policy: Policy,
    pub gpu_percentage: f64,
    pub num_minibatch: usize,
    pub pin_weight: bool,
    #[serde(serialize_with = "crate::ser_display")]
    pub weight_tier: MemTier,
    pub layer_overrides: Vec<LayerOverride>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryNeed {
    /// One layer's weights (the size of a staging buffer).
    pub layer_bytes: usize,
    pub gpu_weights: usize,
    pub gpu_staging: usize,
    pub gpu_kv: usize,
    pub gpu_workspace: usize,
    pub host_weights: usize,
    pub host_kv: usize,
}

impl MemoryNeed {
    pub fn gpu_total(&self) -> usize {
        self.gpu_weights + self.gpu_staging + self.gpu_kv + self.gpu_workspace
    }
    pub fn host_total(&self) -> usize {
        self.host_weights + self.host_kv
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub spec: RunSpec,
    pub layers: Vec<LayerPlacement>,
    pub memory: MemoryNeed,
}

/// How many layers are GPU-resident, streamed over PCIe, and decoded on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerCounts {
    pub resident: usize,
    pub streamed: usize,
    pub cpu: usize,
}

/// Fraction of the GPU's free memory a plan may use (the rest: CUDA context, cuBLAS workspace,
/// fragmentation).
const GPU_USABLE: f64 = 0.92;
/// Fraction of the host node's free memory a plan may use.
const HOST_USABLE: f64 = 0.90;

fn gib(b: usize) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

impl Plan {
    /// Nothing of this plan touches the GPU.
    pub fn full_cpu(&self) -> bool {
        self.layers.iter().all(LayerPlacement::cpu_only)
    }

    pub fn layer_counts(&self) -> LayerCounts {
        let n = |f: fn(&LayerPlacement) -> bool| self.layers.iter().filter(|l| f(l)).count();
        LayerCounts {
            resident: n(|l| l.gpu_resident),
            // Streamed in decode (a split layer streams only for prefills; it decodes on the CPU).
            streamed: n(|l| !l.gpu_resident && l.decode.gpu_linears()),
            cpu: n(LayerPlacement::decode_on_cpu),
        }
    }

    /// Memory per tier for a placement (no checks).
    pub fn memory(cfg: &ModelConfig, spec: &RunSpec, layers: &[LayerPlacement]) -> MemoryNeed {
        let layer_bytes = 2 * cfg.layer_params();
        let kv_per_layer = spec.batch_size
            * (spec.input_tokens + spec.max_new_tokens).next_multiple_of(16)
            * 2
            * cfg.kv_dim()
            * 2;
        let emb = 2 * cfg.vocab * cfg.hidden;
        let mut m = MemoryNeed {
            layer_bytes,
            ..Default::default()
        };
        let mut any_streamed = false;
        let mut any_split = false;
        for l in layers {
            any_split |= !l.gpu_resident && l.prefill.gpu_linears() && !l.decode.gpu_linears();
            if l.gpu_resident {
                m.gpu_weights += layer_bytes;
            } else {
                m.host_weights += layer_bytes;
                any_streamed |= l.streamed();
            }
            if !l.prefill.attention_on_cpu() || !l.decode.attention_on_cpu() {
                m.gpu_kv += kv_per_layer;
            }
            if l.prefill.attention_on_cpu() || l.decode.attention_on_cpu() {
                m.host_kv += kv_per_layer;
            }
        }
        if any_streamed {
            m.gpu_staging = 2 * layer_bytes;
        }
        if any_split {
            m.gpu_staging += layer_bytes;
        }
        m.host_weights += emb; // the embedding table stays on the host; gathers are tiny
        let head_on_gpu = layers
            .last()
            .is_some_and(|l| l.prefill.gpu_linears() || l.decode.gpu_linears());
        // The LM head is vocab × hidden whether tied or not; a tied head on the host is the
        // embedding table itself and costs nothing more.
        if head_on_gpu {
            m.gpu_weights += emb;
        } else if !cfg.tie_word_embeddings {
            m.host_weights += emb;
        }
        let any_gpu = layers.iter().any(|l| !l.cpu_only());
        if any_gpu {
            // Activations of the largest step: a prefill minibatch's tokens × the widest row
            // (gate/up or QKV), f32, a few buffers; logits only for each sequence's last token.
            let tokens = spec.batch_size.div_ceil(spec.num_minibatch.max(1)) * spec.input_tokens;
            let widest = (2 * cfg.ffn).max(cfg.qkv_dim());
            m.gpu_workspace =
                4 * tokens * widest * 4 + spec.batch_size * cfg.vocab * 4 + (256 << 20);
        }
        m
    }

    /// Staging buffers for streamed layers: two, plus up to four more where the GPU has room
    /// left after the plan (so that the copy stream can run further ahead of the compute).
    pub fn staging_buffers(&self, caps: &Capabilities) -> usize {
        let Some(gpu) = caps.gpus.first() else {
            return 2;
        };
        if self.memory.gpu_staging == 0 {
            return 2;
        }
        let free = (gpu.free_mem as f64 * GPU_USABLE) as usize;
        let spare = free.saturating_sub(self.memory.gpu_total());
        2 + (spare / self.memory.layer_bytes.max(1)).min(4)
    }

    /// The largest GPU percentage (whole percent) whose plan fits this machine's GPU, if any.
    pub fn max_fitting_percentage(
        cfg: &ModelConfig,
        spec: &RunSpec,
        caps: &Capabilities,
    ) -> Option<f64> {
        let gpu = caps.gpus.first()?;
        let free = (gpu.free_mem as f64 * GPU_USABLE) as usize;
        (0..=100).rev().map(|p| p as f64).find(|&p| {
            layer_placements(
                cfg.layers,
                spec.prefill_policy,
                spec.decode_policy,
                p,
                &spec.layer_overrides,
            )
            .map(|l| Self::memory(cfg, spec, &l).gpu_total() <= free)
            .unwrap_or(false)
        })
    }

    /// Builds and checks a plan against this machine.
    pub fn new(cfg: &ModelConfig, spec: RunSpec, caps: &Capabilities) -> Result<Plan> {
        if spec.batch_size == 0 || spec.input_tokens == 0 {
            return Err(Error::Placement(
                "batch size and input tokens must be at least 1".into(),
            ));
        }
        if spec.num_minibatch == 0 || spec.num_minibatch > spec.batch_size {
            return Err(Error::Placement(format!(
                "--num-minibatch {} must be between 1 and the batch size {}",
                spec.num_minibatch, spec.batch_size
            )));
        }
        let positions = spec.input_tokens + spec.max_new_tokens;
        if positions > cfg.max_positions {
            return Err(Error::Placement(format!(
                "input {} + output {} tokens exceed {}'s {} positions",
                spec.input_tokens, spec.max_new_tokens, cfg.name, cfg.max_positions
            )));
        }
        if spec.weight_tier == MemTier::Gpu {
            return Err(Error::Placement(
                "the weights tier names where non-resident layers live (pageable, pinned, numa:N); \
                 put layers on the GPU with --gpu-percentage"
                    .into(),
            ));
        }
        spec.weight_tier.check_host()?;
        let layers = layer_placements(
            cfg.layers,
            spec.prefill_policy,
            spec.decode_policy,
            spec.gpu_percentage,
            &spec.layer_overrides,
        )?;
        if let Some((l, p)) = layers
            .iter()
            .enumerate()
            .find(|(_, p)| p.gpu_resident && !p.gpu_work())
        {
            return Err(Error::Placement(format!(
                "layer {l} is GPU-resident ({}% of layers) but its policies (prefill {}, decode {}) run it \
                 all on the CPU; lower --gpu-percentage or give those layers a GPU policy",
                spec.gpu_percentage, p.prefill, p.decode
            )));
        }
        let memory = Self::memory(cfg, &spec, &layers);
        let needs_gpu = memory.gpu_total() > 0 || spec.weight_tier == MemTier::Pinned;
        if needs_gpu && caps.gpus.is_empty() {
            let why = caps.gpu_absent.as_deref().unwrap_or("none found");
            let what = if spec.weight_tier == MemTier::Pinned && memory.gpu_total() == 0 {
                "pinned weights need the CUDA driver".to_string()
            } else {
                format!(
                    "this placement runs sublayers on the GPU (prefill {}, decode {}, {}% of layers resident)",
                    spec.prefill_policy, spec.decode_policy, spec.gpu_percentage
                )
            };
            return Err(Error::Placement(format!(
                "{what}, but there is no GPU ({why}). Without a GPU use --prefill-policy 1 --decoding-policy 1 \
                 --gpu-percentage 0 with a pageable or numa:N weights tier"
            )));
        }
        // What the executor cannot run is refused here, before any weight is made.
        let full_cpu = layers.iter().all(LayerPlacement::cpu_only);
        if !full_cpu {
            for (l, p) in layers.iter().enumerate() {
                crate::exec::gpu::LayerRun::of(l, p)?;
            }
        }
        if let Some(gpu) = caps.gpus.first() {
            let free = (gpu.free_mem as f64 * GPU_USABLE) as usize;
            if memory.gpu_total() > free {
                // What would fit: the largest percentage with the same policies.
                let fit = Self::max_fitting_percentage(cfg, &spec, caps);
                let hint = match fit {
                    Some(p) => format!("--gpu-percentage {p} fits with these policies"),
                    None => "no GPU percentage fits with these policies: lower the batch or move attention to the CPU (policy 2)".into(),
                };
                return Err(Error::Placement(format!(
                    "the GPU ({}, {} usable) cannot hold {}: weights {}, staging {}, KV {}, workspace {}; {hint}",
                    gpu.name,
                    gib(free),
                    gib(memory.gpu_total()),
                    gib(memory.gpu_weights),
                    gib(memory.gpu_staging),
                    gib(memory.gpu_kv),
                    gib(memory.gpu_workspace)
                )));
            }
        }
        let host_free: u64 = match spec.weight_tier {
            MemTier::Numa(n) => caps
                .numa_nodes
                .iter()
                .find(|x| x.id == n)
                .map_or(0, |x| x.mem_free),
            _ => caps.numa_nodes.iter().map(|x| x.mem_free).sum(),
        };
        let host_usable = (host_free as f64 * HOST_USABLE) as usize;
        if memory.host_total() > host_usable {
            return Err(Error::Placement(format!(
                "host memory ({}, {} usable) cannot hold {}: weights {}, KV {}; raise --gpu-percentage or lower the batch",
                spec.weight_tier,
                gib(host_usable),
                gib(memory.host_total()),
                gib(memory.host_weights),
                gib(memory.host_kv)
            )));
        }
        Ok(Plan {
            spec,
            layers,
            memory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{GpuCaps, NodeCaps};

    fn caps(gpu_gib: Option<usize>) -> Capabilities {
        let mut c = Capabilities::detect();
        c.numa_nodes = vec![NodeCaps {
            id: 0,
            mem_total: 128 << 30,
            mem_free: 120 << 30,
            cpus: (0..16).collect(),
        }];
        c.gpus = gpu_gib
            .map(|g| GpuCaps {
                ordinal: 0,
                name: "test GPU".into(),
                total_mem: g << 30,
                free_mem: g << 30,
                compute_capability: (9, 0),
                multiprocessors: 132,
            })
            .into_iter()
            .collect();
        c.gpu_absent = gpu_gib.is_none().then(|| "no driver".into());
        c
    }

    fn spec(p: &str, d: &str, pct: f64, batch: usize) -> RunSpec {
        RunSpec {
            batch_size: batch,
            input_tokens: 256,
            max_new_tokens: 32,
            prefill_policy: p.parse().unwrap(),
            decode_policy: d.parse().unwrap(),
            gpu_percentage: pct,
            num_minibatch: 1,
            pin_weight: false,
            weight_tier: MemTier::Pageable,
            layer_overrides: vec![],
        }
    }

    #[test]
    fn full_cpu_runs_without_gpu_and_gpu_policies_are_refused() {
        let cfg = ModelConfig::preset("opt-1.3b").unwrap();
        let p = Plan::new(&cfg, spec("1", "1", 0.0, 1), &caps(None)).unwrap();
        assert_eq!(p.memory.gpu_total(), 0);
        let e = Plan::new(&cfg, spec("0", "1", 0.0, 1), &caps(None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no GPU") && e.contains("--prefill-policy 1"),
            "{e}"
        );
    }

    #[test]
    fn too_small_gpu_says_what_fits() {
        // OPT-30B is ~60 GB of bf16 weights: all of it does not fit 40 GiB, half of it does.
        let cfg = ModelConfig::preset("opt-30b").unwrap();
        let e = Plan::new(&cfg, spec("0", "0", 100.0, 1), &caps(Some(40)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--gpu-percentage") && e.contains("fits"), "{e}");
        let p = Plan::new(&cfg, spec("0", "0", 50.0, 1), &caps(Some(40))).unwrap();
        assert_eq!(p.layers.iter().filter(|l| l.gpu_resident).count(), 24);
        assert!(
            p.memory.gpu_staging > 0,
            "streamed layers need staging buffers"
        );
    }

    #[test]
    fn split_layers_prefill_on_the_gpu_and_decode_on_the_cpu() {
        // LIA's batch-64 setting: prefill 0, decode 1, all weights on the host once.
        let cfg = ModelConfig::preset("opt-30b").unwrap();
        let p = Plan::new(&cfg, spec("0", "1", 0.0, 64), &caps(Some(139))).unwrap();
        let layer = 2 * cfg.layer_params();
        assert_eq!(
            p.memory.gpu_staging,
            3 * layer,
            "two staging buffers and the packed one"
        );
        assert_eq!(
            p.memory.host_weights,
            cfg.layers * layer + 2 * cfg.vocab * cfg.hidden
        );
        assert!(
            p.memory.gpu_kv > 0 && p.memory.host_kv > 0,
            "prefill KV moves to the host"
        );
        assert_eq!(
            p.staging_buffers(&caps(Some(139))),
            6,
            "a large GPU gets more buffers"
        );
        assert_eq!(p.staging_buffers(&caps(None)), 2);
        let c = p.layer_counts();
        assert_eq!((c.resident, c.streamed, c.cpu), (0, 0, cfg.layers));
        // The reverse is refused before any work, naming what runs.
        let e = Plan::new(&cfg, spec("1", "0", 0.0, 1), &caps(Some(139)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not executed"), "{e}");
    }

    #[test]
    fn resident_layers_must_have_gpu_work() {
        let cfg = ModelConfig::preset("opt-1.3b").unwrap();
        let e = Plan::new(&cfg, spec("1", "1", 50.0, 1), &caps(Some(80)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GPU-resident") && e.contains("--gpu-percentage"),
            "{e}"
        );
        assert!(Plan::new(&cfg, spec("1", "1", 0.0, 1), &caps(Some(80))).is_ok());
    }

    #[test]
    fn missing_node_and_bad_minibatch_are_refused() {
        let cfg = ModelConfig::preset("opt-1.3b").unwrap();
        let mut s = spec("1", "1", 0.0, 4);
        s.weight_tier = MemTier::Numa(7);
        assert!(Plan::new(&cfg, s, &caps(None))
            .unwrap_err()
            .to_string()
            .contains("numa:7"));
        let mut s = spec("1", "1", 0.0, 4);
        s.num_minibatch = 5;
        assert!(Plan::new(&cfg, s, &caps(None))
            .unwrap_err()
            .to_string()
            .contains("minibatch"));
        let mut s = spec("1", "1", 0.0, 4);
        s.input_tokens = 4000;
        assert!(Plan::new(&cfg, s, &caps(None))
            .unwrap_err()
            .to_string()
            .contains("positions"));
    }
}
