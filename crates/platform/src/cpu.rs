//! CPU feature detection, done once per process.
//!
//! AMX needs two things: the CPUID bits (leaf 7: EDX 22 AMX-BF16, 24 AMX-TILE, 25 AMX-INT8) and
//! the kernel's permission to use the tile data state, asked for with
//! `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`. Without that permission the first tile
//! instruction kills the process with SIGILL, so AMX counts as present only once it is granted.
//!
//! Kernels dispatch on [`cpu_tier`]: the best tier present, lowered by the environment variable
//! `TANDEM_CPU_TIER` (amx, avx512bf16, avx512, avx2, scalar) to force a lower path. A request
//! for a tier above what the machine has is clamped to what it has, with a notice.

use std::fmt;
use std::sync::OnceLock;

/// Kernel paths, best last so that `min` picks the lower of two tiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuTier {
    /// Plain Rust, no SIMD assumptions.
    Scalar,
    /// AVX2 + FMA, f32 arithmetic.
    Avx2,
    /// AVX-512F/BW/VL, f32 arithmetic.
    Avx512,
    /// AVX-512 with `vdpbf16ps`.
    Avx512Bf16,
    /// AMX tiles (BF16 and INT8), permission granted.
    Amx,
}

impl CpuTier {
    pub const ALL: [CpuTier; 5] = [
        CpuTier::Scalar,
        CpuTier::Avx2,
        CpuTier::Avx512,
        CpuTier::Avx512Bf16,
        CpuTier::Amx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CpuTier::Scalar => "scalar",
            CpuTier::Avx2 => "avx2",
            CpuTier::Avx512 => "avx512",
            CpuTier::Avx512Bf16 => "avx512bf16",
            CpuTier::Amx => "amx",
        }
    }

    pub fn parse(s: &str) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| crate::Error::BadCpuTier(s.to_string()))
    }

    /// Whether this machine can run kernels of this tier.
    pub fn available(self) -> bool {
        self <= cpu_caps().best_tier()
    }
}

impl fmt::Display for CpuTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the CPU offers, as detected (not lowered by the environment override).
#[derive(Clone, Debug, Default)]
pub struct CpuCaps {
    pub vendor: String,
    pub model_name: String,
    pub logical_cpus: usize,
    pub physical_cores: usize,
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512_bf16: bool,
    pub avx512_vnni: bool,
    pub amx_tile: bool,
    pub amx_bf16: bool,
    pub amx_int8: bool,
    /// The kernel granted the tile data state (`ARCH_REQ_XCOMP_PERM`). Meaningful only when
    /// `amx_tile` is set.
    pub amx_permitted: bool,
    /// Why AMX is unusable despite the CPUID bits, if that is the case.
    pub amx_refused: Option<String>,
}

impl CpuCaps {
    /// The best kernel tier the hardware and OS allow.
    pub fn best_tier(&self) -> CpuTier {
        if self.amx_tile && self.amx_bf16 && self.amx_permitted {
            CpuTier::Amx
        } else if self.avx512f && self.avx512bw && self.avx512vl && self.avx512_bf16 {
            CpuTier::Avx512Bf16
        } else if self.avx512f && self.avx512bw && self.avx512vl {
            CpuTier::Avx512
        } else if self.avx2 && self.fma {
            CpuTier::Avx2
        } else {
            CpuTier::Scalar
        }
    }

    /// Whether the AMX INT8 instructions can be used.
    pub fn amx_int8_usable(&self) -> bool {
        self.amx_tile && self.amx_int8 && self.amx_permitted
    }

    fn detect() -> Self {
        let mut c = CpuCaps {
            logical_cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            physical_cores: crate::pool::physical_core_ids().len().max(1),
            model_name: read_model_name().unwrap_or_default(),
            ..Default::default()
        };
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__cpuid, __cpuid_count};
            // CPUID is safe on x86-64 (every such processor has it).
            let leaf0 = __cpuid(0);
            let mut v = Vec::with_capacity(12);
            for r in [leaf0.ebx, leaf0.edx, leaf0.ecx] {
                v.extend_from_slice(&r.to_le_bytes());
            }
            c.vendor = String::from_utf8_lossy(&v).into_owned();
            c.avx2 = std::arch::is_x86_feature_detected!("avx2");
            c.fma = std::arch::is_x86_feature_detected!("fma");
            c.avx512f = std::arch::is_x86_feature_detected!("avx512f");
            c.avx512bw = std::arch::is_x86_feature_detected!("avx512bw");
            c.avx512vl = std::arch::is_x86_feature_detected!("avx512vl");
            c.avx512_bf16 = std::arch::is_x86_feature_detected!("avx512bf16");
            c.avx512_vnni = std::arch::is_x86_feature_detected!("avx512vnni");
            if leaf0.eax >= 7 {
                let l7 = __cpuid_count(7, 0);
                c.amx_bf16 = l7.edx & (1 << 22) != 0;
                c.amx_tile = l7.edx & (1 << 24) != 0;
                c.amx_int8 = l7.edx & (1 << 25) != 0;
            }
            if c.amx_tile {
                match request_amx_permission() {
                    Ok(()) => c.amx_permitted = true,
                    Err(e) => c.amx_refused = Some(e),
                }
            }
        }
        c
    }
}

/// Asks Linux for the AMX tile data state for this process (all threads, present and future).
#[cfg(target_arch = "x86_64")]
fn request_amx_permission() -> Result<(), String> {
    const ARCH_GET_XCOMP_PERM: libc::c_ulong = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_ulong = 18;
    // SAFETY: arch_prctl with these codes only reads/sets the process's XSAVE permission mask.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!(
            "arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) refused: {err}"
        ));
    }
    let mut mask: u64 = 0;
    // SAFETY: the kernel writes one u64 through the pointer we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_XCOMP_PERM,
            &mut mask as *mut u64,
        )
    };
    if rc != 0 || mask & (1 << XFEATURE_XTILEDATA) == 0 {
        return Err(format!(
            "tile data state not in the permitted mask ({mask:#x})"
        ));
    }
    Ok(())
}

fn read_model_name() -> Option<String> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    s.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_string())
}

/// The detected CPU features (AMX permission requested on first call).
pub fn cpu_caps() -> &'static CpuCaps {
    static CAPS: OnceLock<CpuCaps> = OnceLock::new();
    CAPS.get_or_init(CpuCaps::detect)
}

/// The tier kernels should use: the best available, lowered by `TANDEM_CPU_TIER` if set.
/// A bad value or an unavailable tier is reported once on stderr and ignored or clamped.
pub fn cpu_tier() -> CpuTier {
    static TIER: OnceLock<CpuTier> = OnceLock::new();
    *TIER.get_or_init(|| {
        let caps = cpu_caps();
        let best = caps.best_tier();
        if caps.amx_tile && !caps.amx_permitted {
            eprintln!(
                "tandem: AMX present but unusable ({}); using {best}",
                caps.amx_refused.as_deref().unwrap_or("permission refused")
            );
        }
        match std::env::var("TANDEM_CPU_TIER") {
            Err(_) => best,
            Ok(v) => match CpuTier::parse(&v) {
                Ok(t) if t <= best => t,
                Ok(t) => {
                    eprintln!("tandem: TANDEM_CPU_TIER={t} is not available here; using {best}");
                    best
                }
                Err(e) => {
                    eprintln!("tandem: {e}; using {best}");
                    best
                }
            },
        }
    })
}
