//! Placement (LIA): per decoder sublayer, CPU or GPU, for prefill and for decode; which layers
//! keep their weights on the GPU; where the others live.
//!
//! A policy is six flags in LIA's numbering (1 = CPU, 0 = GPU): S1 norm + QKV (+ RoPE, KV
//! append), S2 attention scores, S3 attention context, S4 output projection + residual,
//! S5 norm + FC1 or gate/up + activation, S6 FC2 or down + residual. S2 and S3 share a device.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Policy(pub [bool; 6]);

impl Policy {
    pub const FULL_GPU: Policy = Policy([false; 6]);
    pub const FULL_CPU: Policy = Policy([true; 6]);
    pub const ATTENTION_ON_CPU: Policy = Policy([false, true, true, false, false, false]);
    /// Linears on the CPU, attention on the GPU over GPU KV: (1,0,0,1,1,1).
    pub const LINEARS_ON_CPU: Policy = Policy([true, false, false, true, true, true]);

    /// Sublayer `s` (1-based, as LIA numbers them) runs on the CPU.
    pub fn on_cpu(&self, s: usize) -> bool {
        self.0[s - 1]
    }
    pub fn attention_on_cpu(&self) -> bool {
        self.0[1]
    }
    pub fn any_gpu(&self) -> bool {
        self.0.iter().any(|&c| !c)
    }
    pub fn any_cpu(&self) -> bool {
        self.0.iter().any(|&c| c)
    }
    /// Whether a GPU sublayer needs this layer's linear weights (S1, S4, S5, S6).
    pub fn gpu_linears(&self) -> bool {
        [1, 4, 5, 6].iter().any(|&s| !self.on_cpu(s))
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<&str> = self.0.iter().map(|&c| if c { "1" } else { "0" }).collect();
        write!(f, "({})", v.join(","))
    }
}

impl FromStr for Policy {
    type Err = Error;
    /// `0`, `1`, `2` (LIA's presets), or six flags: `0,1,1,0,0,0`, `(0,1,1,0,0,0)` or `011000`.
    fn from_str(s: &str) -> Result<Self> {
        let t: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && !"()[]".contains(*c))
            .collect();
        let p = match t.as_str() {
            "0" => Policy::FULL_GPU,
            "1" => Policy::FULL_CPU,
            "2" => Policy::ATTENTION_ON_CPU,
            _ => {
                let digits: Vec<char> = t.chars().filter(|&c| c != ',').collect();
                if digits.len() != 6 || digits.iter().any(|&c| c != '0' && c != '1') {
                    return Err(Error::Placement(format!(
                        "policy `{s}`: expected 0, 1, 2 or six 0/1 flags such as 0,1,1,0,0,0"
                    )));
                }
                let mut f = [false; 6];
                for (i, &c) in digits.iter().enumerate() {
                    f[i] = c == '1';
                }
                Policy(f)
            }
        };
        if p.0[1] != p.0[2] {
            return Err(Error::Placement(format!(
                "policy {p}: S2 (attention scores) and S3 (attention context) must run on the same device"
            )));
        }
        Ok(p)
    }
}

/// Which phase a per-layer override applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Phase {
    Prefill,
    Decode,
    Both,
}

/// `--layer-policy [prefill@|decode@]A-B:POLICY` (or a single layer `A:POLICY`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerOverride {
    pub first: usize,
    pub last: usize,
    pub phase: Phase,
    pub policy: Policy,
}

impl FromStr for LayerOverride {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Placement(format!(
                "layer policy `{s}`: {why}; expected [prefill@|decode@]A-B:POLICY, e.g. 24-47:1"
            ))
        };
        let (phase, rest) = match s.split_once('@') {
            Some(("prefill", r)) => (Phase::Prefill, r),
            Some(("decode", r)) => (Phase::Decode, r),
            Some((p, _)) => return Err(bad(&format!("unknown phase `{p}`"))),
            None => (Phase::Both, s),
        };
        let (range, pol) = rest.split_once(':').ok_or_else(|| bad("no `:`"))?;
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let first: usize = a.trim().parse().map_err(|_| bad("bad first layer"))?;
        let last: usize = b.trim().parse().map_err(|_| bad("bad last layer"))?;
        if last < first {
            return Err(bad("the range is empty"));
        }
        Ok(LayerOverride {
            first,
            last,
            phase,
            policy: pol.parse()?,
        })
    }
}

/// Where one layer runs and lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerPlacement {
    /// Weights in HBM for the whole run.
    pub gpu_resident: bool,
    pub prefill: Policy,
    pub decode: Policy,
}

impl LayerPlacement {
    /// Some sublayer runs on the GPU in prefill or decode.
    pub fn gpu_work(&self) -> bool {
        self.prefill.any_gpu() || self.decode.any_gpu()
    }

    /// Nothing of this layer touches the GPU.
    pub fn cpu_only(&self) -> bool {
        !self.gpu_resident && !self.gpu_work()
    }

    /// A non-resident layer whose decode linears run on the CPU (its attention on either side).
    pub fn decode_on_cpu(&self) -> bool {
        !self.gpu_resident && !self.decode.gpu_linears()
    }

    /// A non-resident layer whose GPU sublayers need its weights streamed over PCIe.
    pub fn streamed(&self) -> bool {
        !self.gpu_resident && (self.prefill.gpu_linears() || self.decode.gpu_linears())
    }
}

/// One character per layer, for a glance at a placement (decode policies): `G` resident on the
/// GPU, `S` streamed to the GPU over PCIe, `C` computed on the CPU; lower case (`g`, `s`) when
/// the layer's decode attention runs on the CPU, and `c` for a CPU layer whose decode attention
/// runs on the GPU.
pub fn layer_map(layers: &[LayerPlacement]) -> String {
    layers
        .iter()
        .map(|l| {
            match (
                l.gpu_resident,
                l.decode.gpu_linears(),
                l.decode.attention_on_cpu(),
            ) {
                (_, false, true) => 'C',
                (_, false, false) => 'c',
                (true, true, false) => 'G',
                (true, true, true) => 'g',
                (false, true, false) => 'S',
                (false, true, true) => 's',
            }
        })
        .collect()
}

/// Number of GPU-resident layers for a percentage: the first ⌊L·pct/100⌋ (LIA's rule).
pub fn resident_layers(layers: usize, gpu_percentage: f64) -> Result<usize> {
    if !(0.0..=100.0).contains(&gpu_percentage) || gpu_percentage.is_nan() {
        return Err(Error::Placement(format!(
            "gpu percentage {gpu_percentage} is outside 0..=100"
        )));
    }
    Ok(((layers as f64) * gpu_percentage / 100.0 + 1e-9).floor() as usize)
}

/// Per-layer placement from the global policies, the percentage and the overrides.
pub fn layer_placements(
    layers: usize,
    prefill: Policy,
    decode: Policy,
    gpu_percentage: f64,
    overrides: &[LayerOverride],
) -> Result<Vec<LayerPlacement>> {
    let resident = resident_layers(layers, gpu_percentage)?;
    let mut out: Vec<LayerPlacement> = (0..layers)
        .map(|l| LayerPlacement {
            gpu_resident: l < resident,
            prefill,
            decode,
        })
        .collect();
    for o in overrides {
        if o.last >= layers {
            return Err(Error::Placement(format!(
                "layer policy {}-{} names layers beyond the model's {layers} (0..={})",
                o.first,
                o.last,
                layers - 1
            )));
        }
        for p in &mut out[o.first..=o.last] {
            if o.phase != Phase::Decode {
                p.prefill = o.policy;
            }
            if o.phase != Phase::Prefill {
                p.decode = o.policy;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_vectors_parse() {
        assert_eq!("0".parse::<Policy>().unwrap(), Policy::FULL_GPU);
        assert_eq!("1".parse::<Policy>().unwrap(), Policy::FULL_CPU);
        assert_eq!("2".parse::<Policy>().unwrap(), Policy::ATTENTION_ON_CPU);
        assert_eq!(
            "(0,1,1,0,0,0)".parse::<Policy>().unwrap(),
            Policy::ATTENTION_ON_CPU
        );
        assert_eq!(
            "011000".parse::<Policy>().unwrap(),
            Policy::ATTENTION_ON_CPU
        );
        assert_eq!(Policy::ATTENTION_ON_CPU.to_string(), "(0,1,1,0,0,0)");
    }

    #[test]
    fn bad_policies_say_why() {
        let e = "0,1,0,0,0,0".parse::<Policy>().unwrap_err().to_string();
        assert!(e.contains("S2") && e.contains("S3"), "{e}");
        let e = "3".parse::<Policy>().unwrap_err().to_string();
        assert!(e.contains("six"), "{e}");
        assert!("0,1,1,0,0".parse::<Policy>().is_err());
        assert!("0,1,1,0,0,2".parse::<Policy>().is_err());
    }

    #[test]
    fn layers_follow_percentage_and_overrides() {
        let ov: Vec<LayerOverride> =
            vec!["24-47:1".parse().unwrap(), "decode@30:2".parse().unwrap()];
        let p = layer_placements(48, Policy::FULL_GPU, Policy::FULL_GPU, 50.0, &ov).unwrap();
        assert_eq!(p.iter().filter(|l| l.gpu_resident).count(), 24);
        assert!(p[23].gpu_resident && !p[24].gpu_resident);
        assert_eq!(p[24].prefill, Policy::FULL_CPU);
        assert_eq!(p[30].prefill, Policy::FULL_CPU);
        assert_eq!(p[30].decode, Policy::ATTENTION_ON_CPU);
        assert!(!p[24].streamed() && p[30].streamed());
        let map = layer_map(&p);
        assert_eq!(&map[22..32], "GGCCCCCCsC");
        let ov: Vec<LayerOverride> = vec!["decode@1:100111".parse().unwrap()];
        let p = layer_placements(2, Policy::FULL_GPU, Policy::FULL_GPU, 0.0, &ov).unwrap();
        assert_eq!(layer_map(&p), "Sc");
        assert_eq!(resident_layers(48, 100.0).unwrap(), 48);
        assert_eq!(resident_layers(7, 50.0).unwrap(), 3);
        assert!(resident_layers(48, 101.0).is_err());
        let e = resident_layers(48, -5.0).unwrap_err().to_string();
        assert!(e.contains("-5") && e.contains("0..=100"), "{e}");
        assert!(resident_layers(48, f64::NAN).is_err());
        let e = layer_placements(
            48,
            Policy::FULL_GPU,
            Policy::FULL_GPU,
            0.0,
            &["40-50:1".parse().unwrap()],
        )
        .unwrap_err();
        assert!(e.to_string().contains("48"), "{e}");
        assert!("x@1:1".parse::<LayerOverride>().is_err());
        assert!("5-3:1".parse::<LayerOverride>().is_err());
    }
}

/// LIA's split of the non-resident layers when weights live on the host: a fraction
/// `cpu / (cpu + pcie)` of them computed on the CPU (policy 1, streaming weights from DRAM at
/// `cpu` bytes/s) and the rest streamed to the GPU (policy 0, over PCIe), so that both
/// bandwidths work at once. The two kinds are interleaved (CPU layers spread evenly among
/// streamed ones) so that the copy of each streamed layer overlaps the CPU layers before it.
/// Returns one override per CPU layer, for `phase`: `Decode` keeps the prefill on the GPU
/// (every layer streamed for it, compute-bound there), `Both` puts the CPU layers' prefill on
/// the CPU too. The CPU layers get `policy`: [`Policy::FULL_CPU`], or
/// [`Policy::LINEARS_ON_CPU`] where their KV is better kept on the GPU (large batches).
pub fn auto_split(
    layers: usize,
    resident: usize,
    dram_bytes_s: f64,
    pcie_bytes_s: f64,
    phase: Phase,
    policy: Policy,
) -> Vec<LayerOverride> {
    let n = layers.saturating_sub(resident);
    if n == 0 || dram_bytes_s <= 0.0 {
        return Vec::new();
    }
    let f = dram_bytes_s / (dram_bytes_s + pcie_bytes_s.max(0.0));
    let k = (n as f64 * f).floor() as usize;
    spread(n, k)
        .into_iter()
        .enumerate()
        .filter(|&(_, on)| on)
        .map(|(j, _)| LayerOverride {
            first: resident + j,
            last: resident + j,
            phase,
            policy,
        })
        .collect()
}

/// `k` of `n` slots marked, spread evenly (never two unmarked in a row while at least half
/// are marked, and the reverse).
pub fn spread(n: usize, k: usize) -> Vec<bool> {
    let k = k.min(n);
    (0..n).map(|j| (j + 1) * k / n > j * k / n).collect()
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn split_follows_bandwidths_and_interleaves() {
        // DRAM 100 GB/s, PCIe 55 GB/s: 64.5 % of 48 host layers on the CPU.
        let ov = auto_split(48, 0, 100e9, 55e9, Phase::Both, Policy::FULL_CPU);
        assert_eq!(ov.len(), 30);
        // Never more than two CPU layers in a row, never two streamed ones in a row.
        let cpu: Vec<bool> = (0..48).map(|l| ov.iter().any(|o| o.first == l)).collect();
        assert!(cpu.windows(3).all(|w| !(w[0] && w[1] && w[2])));
        assert!(cpu.windows(2).all(|w| w[0] || w[1]));
        // Resident layers are left alone; no PCIe means everything on the CPU.
        assert!(
            auto_split(48, 24, 100e9, 55e9, Phase::Both, Policy::FULL_CPU)
                .iter()
                .all(|o| o.first >= 24)
        );
        let ov = auto_split(10, 0, 100e9, 0.0, Phase::Decode, Policy::LINEARS_ON_CPU);
        assert_eq!(ov.len(), 10);
        assert!(ov.iter().all(|o| o.policy == Policy::LINEARS_ON_CPU));
        assert!(auto_split(10, 10, 100e9, 55e9, Phase::Both, Policy::FULL_CPU).is_empty());
        for (n, k) in [(48, 0), (48, 1), (48, 30), (48, 48), (7, 3), (0, 0)] {
            let s = spread(n, k);
            assert_eq!((s.len(), s.iter().filter(|&&x| x).count()), (n, k));
        }
        assert_eq!(spread(4, 2), [false, true, false, true]);
    }
}
