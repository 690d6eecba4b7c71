//! What the host is and how tandem uses it.
//!
//! This crate is the one place that detects hardware (CPU features with the AMX permission,
//! NUMA nodes), names memory tiers, owns the pinned CPU thread pool and aligned host buffers.
//! Every other crate asks here instead of probing on its own. CUDA devices are the exception:
//! they are detected by `cuda-kernels`, which owns the driver, and `engine::caps` joins both.

/// Defines `fn name(tier: CpuTier, args…)` whose body is compiled three times, for AVX-512F, for
/// AVX2 and for the baseline, and runs in the widest of them that `tier` allows and the CPU
/// has: for plain loops that the compiler vectorizes by itself, lane by lane, so that every
/// width gives the same results.
#[macro_export]
macro_rules! tier_vectorized {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name(tier: $crate::CpuTier, $($a: $t),*) {
            #[inline(always)]
            fn body($($a: $t),*) $body
            /// # Safety
            /// AVX-512F is present.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($a: $t),*) {
                body($($a),*)
            }
            /// # Safety
            /// AVX2 is present.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2($($a: $t),*) {
                body($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            {
                let caps = $crate::cpu_caps();
                if tier >= $crate::CpuTier::Avx512 && caps.avx512f {
                    // SAFETY: AVX-512F is present (checked just above).
                    return unsafe { avx512($($a),*) };
                }
                if tier >= $crate::CpuTier::Avx2 && caps.avx2 {
                    // SAFETY: AVX2 is present (checked just above).
                    return unsafe { avx2($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}

pub mod cpu;
pub mod env;
pub mod mem;
pub mod membw;
pub mod numa;
pub mod pool;
pub mod testing;

pub use cpu::{cpu_caps, cpu_tier, CpuCaps, CpuTier};
pub use mem::{HostBuf, MemTier};
pub use numa::{numa_nodes, NumaNode};
pub use pool::{install, pool, pool_threads};

/// Errors of this crate: each names what was asked and what exists.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown memory tier `{0}`: expected gpu, pinned, pageable or numa:N")]
    BadTier(String),
    #[error("memory tier numa:{node} does not exist on this machine; nodes with memory: {have}")]
    NoSuchNode { node: u32, have: String },
    #[error(
        "memory tier {0} cannot be allocated by the platform crate (it needs the CUDA driver)"
    )]
    NeedsCuda(MemTier),
    #[error("allocation of {bytes} bytes on {tier} failed")]
    Alloc { bytes: usize, tier: MemTier },
    #[error("unknown CPU tier `{0}` in TANDEM_CPU_TIER: expected amx, avx512bf16, avx512, avx2 or scalar")]
    BadCpuTier(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
