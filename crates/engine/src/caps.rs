//! Everything tandem can use on this machine, in one report: CPU features and kernel tier,
//! NUMA nodes (memory-only nodes are CXL candidates), GPUs. `tandem info` prints it; placement
//! checks against it before any work starts.

use std::fmt;

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct GpuCaps {
    pub ordinal: usize,
    pub name: String,
    pub total_mem: usize,
    pub free_mem: usize,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeCaps {
    pub id: u32,
    pub mem_total: u64,
    pub mem_free: u64,
    pub cpus: Vec<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    pub cpu_model: String,
    pub logical_cpus: usize,
    pub physical_cores: usize,
    pub pool_threads: usize,
    pub avx2: bool,
    pub avx512: bool,
    pub avx512_bf16: bool,
    pub amx_tile: bool,
    pub amx_bf16: bool,
    pub amx_int8: bool,
    pub amx_permitted: bool,
    pub amx_refused: Option<String>,
    pub best_cpu_tier: String,
    pub cpu_tier: String,
    pub numa_nodes: Vec<NodeCaps>,
    pub gpus: Vec<GpuCaps>,
    /// Why there are no GPUs, when there are none.
    pub gpu_absent: Option<String>,
    pub gpu_kernels_built: bool,
}

impl Capabilities {
    pub fn detect() -> Self {
        let c = platform::cpu_caps();
        let (gpus, gpu_absent) = match cuda_kernels::devices() {
            Ok(d) if d.is_empty() => (
                vec![],
                Some("the CUDA driver reports no devices".to_string()),
            ),
            Ok(d) => (
                d.into_iter()
                    .map(|d| GpuCaps {
                        ordinal: d.ordinal,
                        name: d.name,
                        total_mem: d.total_mem,
                        free_mem: d.free_mem,
                        compute_capability: d.compute_capability,
                        multiprocessors: d.multiprocessors,
                    })
                    .collect(),
                None,
            ),
            Err(e) => (vec![], Some(e.to_string())),
        };
        Capabilities {
            cpu_model: c.model_name.clone(),
            logical_cpus: c.logical_cpus,
            physical_cores: c.physical_cores,
            pool_threads: platform::pool_threads(),
            avx2: c.avx2 && c.fma,
            avx512: c.avx512f && c.avx512bw && c.avx512vl,
            avx512_bf16: c.avx512_bf16,
            amx_tile: c.amx_tile,
            amx_bf16: c.amx_bf16,
            amx_int8: c.amx_int8,
            amx_permitted: c.amx_permitted,
            amx_refused: c.amx_refused.clone(),
            best_cpu_tier: c.best_tier().to_string(),
            cpu_tier: platform::cpu_tier().to_string(),
            numa_nodes: platform::numa_nodes()
                .into_iter()
                .map(|n| NodeCaps {
                    id: n.id,
                    mem_total: n.mem_total,
                    mem_free: n.mem_free,
                    cpus: n.cpus,
                })
                .collect(),
            gpus,
            gpu_absent,
            gpu_kernels_built: !cuda_kernels::KERNELS_FATBIN.is_empty(),
        }
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "CPU      {}", self.cpu_model)?;
        writeln!(
            f,
            "         {} logical CPUs, {} physical cores, pool of {} pinned threads",
            self.logical_cpus, self.physical_cores, self.pool_threads
        )?;
        writeln!(
            f,
            "         AVX2 {}  AVX-512 {}  AVX512-BF16 {}  AMX-TILE {}  AMX-BF16 {}  AMX-INT8 {}",
            yes(self.avx2),
            yes(self.avx512),
            yes(self.avx512_bf16),
            yes(self.amx_tile),
            yes(self.amx_bf16),
            yes(self.amx_int8)
        )?;
        if self.amx_tile {
            match &self.amx_refused {
                None => writeln!(f, "         AMX permission: granted by the kernel")?,
                Some(why) => writeln!(f, "         AMX permission: refused ({why})")?,
            }
        }
        writeln!(
            f,
            "         kernel tier: {} (best here: {})",
            self.cpu_tier, self.best_cpu_tier
        )?;
        for n in &self.numa_nodes {
            let kind = if n.cpus.is_empty() {
                "memory only (CXL candidate)".to_string()
            } else {
                format!("{} CPUs", n.cpus.len())
            };
            writeln!(
                f,
                "NUMA     numa:{}  {:.1} GiB ({:.1} GiB free), {kind}",
                n.id,
                gib(n.mem_total),
                gib(n.mem_free)
            )?;
        }
        if self.gpus.is_empty() {
            writeln!(
                f,
                "GPU      none: {}",
                self.gpu_absent.as_deref().unwrap_or("unknown")
            )?;
        }
        for g in &self.gpus {
            writeln!(
                f,
                "GPU {}    {}  sm_{}{}  {} SMs  {:.1} GiB ({:.1} GiB free)",
                g.ordinal,
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                g.multiprocessors,
                gib(g.total_mem as u64),
                gib(g.free_mem as u64)
            )?;
        }
        write!(
            f,
            "kernels  GPU kernels built: {}",
            yes(self.gpu_kernels_built)
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn detect_reports_cpu_and_a_node() {
        let c = super::Capabilities::detect();
        assert!(c.physical_cores >= 1 && c.pool_threads >= 1);
        assert!(!c.numa_nodes.is_empty());
        assert!(c.gpus.is_empty() == c.gpu_absent.is_some());
        let text = c.to_string();
        assert!(
            text.contains("kernel tier") && text.contains("NUMA"),
            "{text}"
        );
    }
}
