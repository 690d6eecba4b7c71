//! One AMX tile product, the smallest complete use of the AMX chain: tile configuration,
//! loads, `tdpbf16ps`, store, release. It proves the toolchain and the OS permission path;
//! the GEMM builds on the same pieces.
//!
//! Shapes: `C[16×16] f32 += A[16×32] bf16 · B[32×16] bf16`, all row-major.
//! AMX wants B in VNNI pairs: row `k/2` of the packed tile holds, for each column `n`, the two
//! elements `B[k][n], B[k+1][n]` side by side (16 rows × 64 bytes).
//!
//! Tiles: tmm0 = C (16 rows × 64 B f32), tmm1 = A (16 rows × 64 B bf16), tmm2 = B packed
//! (16 rows × 64 B bf16 pairs).

use half::bf16;

use crate::{check_len, Error, Result};

pub const TILE_M: usize = 16;
pub const TILE_N: usize = 16;
pub const TILE_K: usize = 32;

/// The 64-byte operand of `ldtilecfg` (palette 1).
#[repr(C, align(64))]
#[derive(Default)]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    _reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Sets tile `t` to `rows` rows of `colsb` bytes.
    pub fn set(&mut self, t: usize, rows: u8, colsb: u16) {
        self.colsb[t] = colsb;
        self.rows[t] = rows;
    }
    /// `(rows, bytes per row)` of tile `t`.
    pub fn get(&self, t: usize) -> (usize, usize) {
        (self.rows[t] as usize, self.colsb[t] as usize)
    }
    pub fn palette1() -> Self {
        TileConfig {
            palette: 1,
            ..Default::default()
        }
    }
}

/// Packs a row-major `[32×16]` bf16 block into VNNI pairs (`[16][16][2]`).
pub fn pack_b_vnni(b: &[bf16]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; TILE_K * TILE_N];
    for k in 0..TILE_K {
        for n in 0..TILE_N {
            out[(k / 2) * TILE_N * 2 + n * 2 + (k % 2)] = b[k * TILE_N + n];
        }
    }
    out
}

/// `C += A · B` for one 16×32×16 tile product, on AMX.
pub fn tile_dot_bf16(a: &[bf16], b: &[bf16], c: &mut [f32]) -> Result<()> {
    check_len("tile_dot_bf16: A", TILE_M * TILE_K, a.len())?;
    check_len("tile_dot_bf16: B", TILE_K * TILE_N, b.len())?;
    check_len("tile_dot_bf16: C", TILE_M * TILE_N, c.len())?;
    let caps = platform::cpu_caps();
    if caps.best_tier() != platform::CpuTier::Amx {
        return Err(Error::Unsupported {
            needed: "AMX-BF16",
            have: caps.best_tier(),
        });
    }
    let bp = pack_b_vnni(b);
    let mut cfg = TileConfig::palette1();
    cfg.set(0, 16, 64);
    cfg.set(1, 16, 64);
    cfg.set(2, 16, 64);
    let stride: usize = 64;
    // SAFETY: AMX is present and permitted (checked above). Every tile access stays inside the
    // checked slices: 16 rows × 64 bytes at a 64-byte stride for A (16×32 bf16), packed B
    // (16×32 bf16) and C (16×16 f32). The tile state is released before returning.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!(
            "ldtilecfg [{cfg}]",
            "tileloadd tmm0, [{c} + {s}*1]",
            "tileloadd tmm1, [{a} + {s}*1]",
            "tileloadd tmm2, [{b} + {s}*1]",
            "tdpbf16ps tmm0, tmm1, tmm2",
            "tilestored [{c} + {s}*1], tmm0",
            "tilerelease",
            cfg = in(reg) &cfg as *const TileConfig,
            a = in(reg) a.as_ptr(),
            b = in(reg) bp.as_ptr(),
            c = in(reg) c.as_mut_ptr(),
            s = in(reg) stride,
            options(nostack),
        );
    }
    Ok(())
}

/// Reference twin of [`tile_dot_bf16`]: f64 accumulation, then added to C in f32.
pub fn tile_dot_bf16_ref(a: &[bf16], b: &[bf16], c: &mut [f32]) -> Result<()> {
    check_len("tile_dot_bf16_ref: A", TILE_M * TILE_K, a.len())?;
    check_len("tile_dot_bf16_ref: B", TILE_K * TILE_N, b.len())?;
    check_len("tile_dot_bf16_ref: C", TILE_M * TILE_N, c.len())?;
    for m in 0..TILE_M {
        for n in 0..TILE_N {
            let mut s = 0f64;
            for k in 0..TILE_K {
                s += a[m * TILE_K + k].to_f64() * b[k * TILE_N + n].to_f64();
            }
            c[m * TILE_N + n] += s as f32;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Products of bf16 values are exact in f32; only the order of the 32 f32 additions differs
    /// from the f64 reference: a few ulps of the largest partial sum.
    const TOL_ABS: f32 = 1e-4;

    fn random_bf16(rng: &mut impl Rng, n: usize) -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect()
    }

    #[test]
    fn vnni_packing_places_pairs() {
        let b: Vec<bf16> = (0..TILE_K * TILE_N)
            .map(|i| bf16::from_f32(i as f32))
            .collect();
        let p = pack_b_vnni(&b);
        // B[3][5] is the odd member of pair row 1, column 5.
        assert_eq!(p[TILE_N * 2 + 5 * 2 + 1], b[3 * TILE_N + 5]);
    }

    #[test]
    fn amx_tile_dot_matches_reference() {
        if !platform::testing::amx_or_skip() {
            return;
        }
        let mut rng = rand::rngs::StdRng::from_entropy();
        let a = random_bf16(&mut rng, TILE_M * TILE_K);
        let b = random_bf16(&mut rng, TILE_K * TILE_N);
        let init: Vec<f32> = (0..TILE_M * TILE_N)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let mut c = init.clone();
        let mut r = init;
        tile_dot_bf16(&a, &b, &mut c).unwrap();
        tile_dot_bf16_ref(&a, &b, &mut r).unwrap();
        for (i, (x, y)) in c.iter().zip(&r).enumerate() {
            assert!((x - y).abs() <= TOL_ABS, "C[{i}]: amx {x} vs reference {y}");
        }
    }

    #[test]
    fn short_slices_are_errors() {
        let a = vec![bf16::ZERO; 10];
        let b = vec![bf16::ZERO; TILE_K * TILE_N];
        let mut c = vec![0f32; TILE_M * TILE_N];
        let e = tile_dot_bf16(&a, &b, &mut c).unwrap_err();
        assert!(matches!(e, Error::Len { got: 10, .. }), "{e}");
    }
}
