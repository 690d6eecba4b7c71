//! AMX tile instructions behind one trait, with two implementations:
//!
//! - [`Hw`]: each method is one instruction in inline asm (`tileloadd tmm{T}`, `tdpbf16ps`, …),
//!   the tile register named by a const generic, so a kernel written against [`Tiles`] compiles
//!   to the same instruction stream as hand-written asm.
//! - [`Emu`]: a software model of the eight tile registers and the configuration (per thread),
//!   with the shape checks the hardware makes (#UD there, a panic here). Kernels written
//!   against [`Tiles`] run under it on any x86-64, so their blocking, tails, tile allocation and
//!   addressing are tested on machines without AMX (CI); the same kernel with [`Hw`] runs on the
//!   AMX host's tests.
//!
//! Semantics modelled (Intel SDM, "Intel AMX instruction set reference"): `tileloadd` loads
//! `rows` rows of `colsb` bytes from `base + r·stride` and zeroes the rest of the register;
//! `tilestored` writes `rows × colsb` bytes; `tdpbf16ps C, A, B` adds, for every row `m` and f32
//! column `n`, Σ_k A[m][2k]·B[k][2n] + A[m][2k+1]·B[k][2n+1] (bf16 products in f32);
//! `tdpbssd` / `tdpbusd` the same over quads of int8 (signed·signed, unsigned·signed) into i32.
//! Rounding: the hardware flushes bf16 denormals and rounds its internal sums differently from
//! this model's sequential f32 sums; tests compare against f64 references with tolerances that
//! cover both.

use crate::tile::TileConfig;

/// The AMX tile operations a kernel uses.
///
/// # Safety
/// Every method is `unsafe`: the caller guarantees that the pointers cover `rows × colsb` bytes
/// of the configured tile at the given stride, that the tiles named are configured with
/// shapes the instruction accepts, and (for [`Hw`]) that AMX is usable on this thread.
#[allow(clippy::missing_safety_doc)]
pub trait Tiles {
    /// `ldtilecfg`.
    unsafe fn config(cfg: &TileConfig);
    /// `tilerelease`.
    unsafe fn release();
    /// `tileloadd tmmT, [p + stride]`.
    unsafe fn load<const T: u8>(p: *const u8, stride: usize);
    /// `tileloaddt1 tmmT, [p + stride]`: the same load, hinting that the data will not be
    /// reused (so that it does not push reused data out of L1).
    unsafe fn load_t1<const T: u8>(p: *const u8, stride: usize) {
        Self::load::<T>(p, stride)
    }
    /// `tilestored [p + stride], tmmT`.
    unsafe fn store<const T: u8>(p: *mut u8, stride: usize);
    /// `tilezero tmmT`.
    unsafe fn zero<const T: u8>();
    /// `tdpbf16ps tmmC, tmmA, tmmB`.
    unsafe fn dp_bf16<const C: u8, const A: u8, const B: u8>();
    /// `tdpbssd tmmC, tmmA, tmmB`.
    unsafe fn dp_ssd<const C: u8, const A: u8, const B: u8>();
    /// `tdpbusd tmmC, tmmA, tmmB`.
    unsafe fn dp_usd<const C: u8, const A: u8, const B: u8>();
}

/// The hardware: one instruction per method.
pub struct Hw;

impl Tiles for Hw {
    #[inline(always)]
    unsafe fn config(cfg: &TileConfig) {
        std::arch::asm!("ldtilecfg [{}]", in(reg) cfg as *const TileConfig, options(nostack, readonly));
    }
    #[inline(always)]
    unsafe fn release() {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }
    #[inline(always)]
    unsafe fn load<const T: u8>(p: *const u8, stride: usize) {
        std::arch::asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p, s = in(reg) stride, options(nostack, readonly));
    }
    #[inline(always)]
    unsafe fn load_t1<const T: u8>(p: *const u8, stride: usize) {
        std::arch::asm!("tileloaddt1 tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p, s = in(reg) stride, options(nostack, readonly));
    }
    #[inline(always)]
    unsafe fn store<const T: u8>(p: *mut u8, stride: usize) {
        std::arch::asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) p, s = in(reg) stride, options(nostack));
    }
    #[inline(always)]
    unsafe fn zero<const T: u8>() {
        std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem));
    }
    #[inline(always)]
    unsafe fn dp_bf16<const C: u8, const A: u8, const B: u8>() {
        std::arch::asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem));
    }
    #[inline(always)]
    unsafe fn dp_ssd<const C: u8, const A: u8, const B: u8>() {
        std::arch::asm!("tdpbssd tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem));
    }
    #[inline(always)]
    unsafe fn dp_usd<const C: u8, const A: u8, const B: u8>() {
        std::arch::asm!("tdpbusd tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem));
    }
}

/// The software model (see the module header). Slow; for tests.
pub struct Emu;

struct EmuState {
    /// `(rows, colsb)` per register; `None` until `config`.
    shape: Option<[(usize, usize); 8]>,
    reg: [[u8; 1024]; 8],
}

thread_local! {
    static EMU: std::cell::RefCell<EmuState> = const {
        std::cell::RefCell::new(EmuState { shape: None, reg: [[0; 1024]; 8] })
    };
}

impl EmuState {
    fn shape(&self, t: u8) -> (usize, usize) {
        let s = self
            .shape
            .expect("AMX emulator: tile instruction before ldtilecfg");
        let (rows, colsb) = s[t as usize];
        assert!(
            rows > 0 && colsb > 0,
            "AMX emulator: tmm{t} is not configured"
        );
        (rows, colsb)
    }

    /// Checks the shapes of `C += A·B` as the hardware does and returns (M, K groups, N).
    fn dp_shape(&self, c: u8, a: u8, b: u8) -> (usize, usize, usize) {
        assert!(
            c != a && c != b && a != b,
            "AMX emulator: tdp with repeated tmm{c}/{a}/{b}"
        );
        let (cm, cn) = self.shape(c);
        let (am, ak) = self.shape(a);
        let (bk, bn) = self.shape(b);
        assert_eq!(
            cm, am,
            "AMX emulator: C tmm{c} has {cm} rows, A tmm{a} {am}"
        );
        assert_eq!(
            cn, bn,
            "AMX emulator: C tmm{c} row is {cn} bytes, B tmm{b} {bn}"
        );
        assert_eq!(
            ak / 4,
            bk,
            "AMX emulator: A tmm{a} row is {ak} bytes, B tmm{b} has {bk} rows"
        );
        (cm, bk, cn / 4)
    }
}

fn bf16_at(t: &[u8; 1024], i: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([t[2 * i], t[2 * i + 1]]) as u32) << 16)
}

impl Emu {
    /// `C += A·B` on the model's registers after the hardware's shape checks: `cell(a, b, i,
    /// j, k_groups, c)` gives the new 4-byte element (i, j) of C from its old bytes.
    fn dp_with<const C: u8, const A: u8, const B: u8>(
        cell: impl Fn(&[u8; 1024], &[u8; 1024], usize, usize, usize, [u8; 4]) -> [u8; 4],
    ) {
        EMU.with(|e| {
            let mut e = e.borrow_mut();
            let (m, kg, n) = e.dp_shape(C, A, B);
            let (ra, rb) = (e.reg[A as usize], e.reg[B as usize]);
            let rc = &mut e.reg[C as usize];
            for i in 0..m {
                for j in 0..n {
                    let at = 4 * (i * 16 + j);
                    let old = rc[at..at + 4].try_into().unwrap();
                    rc[at..at + 4].copy_from_slice(&cell(&ra, &rb, i, j, kg, old));
                }
            }
        })
    }

    fn dp_int8<const C: u8, const A: u8, const B: u8>(a_unsigned: bool) {
        Self::dp_with::<C, A, B>(|ra, rb, i, j, kg, old| {
            let mut s = i32::from_le_bytes(old);
            for k in 0..kg {
                for q in 0..4 {
                    let x = ra[i * 64 + 4 * k + q];
                    let x = if a_unsigned { x as i32 } else { x as i8 as i32 };
                    let y = rb[k * 64 + 4 * j + q] as i8 as i32;
                    s = s.wrapping_add(x * y);
                }
            }
            s.to_le_bytes()
        })
    }
}

impl Tiles for Emu {
    unsafe fn config(cfg: &TileConfig) {
        EMU.with(|e| {
            let mut e = e.borrow_mut();
            let mut s = [(0, 0); 8];
            for (t, v) in s.iter_mut().enumerate() {
                let (rows, colsb) = cfg.get(t);
                assert!(
                    rows <= 16 && colsb <= 64,
                    "AMX emulator: tmm{t} is {rows} × {colsb} B"
                );
                *v = (rows, colsb);
            }
            e.shape = Some(s);
            e.reg = [[0; 1024]; 8];
        })
    }
    unsafe fn release() {
        EMU.with(|e| e.borrow_mut().shape = None)
    }
    unsafe fn load<const T: u8>(p: *const u8, stride: usize) {
        EMU.with(|e| {
            let mut e = e.borrow_mut();
            let (rows, colsb) = e.shape(T);
            let r = &mut e.reg[T as usize];
            *r = [0; 1024];
            for i in 0..rows {
                std::ptr::copy_nonoverlapping(p.add(i * stride), r.as_mut_ptr().add(i * 64), colsb);
            }
        })
    }
    unsafe fn store<const T: u8>(p: *mut u8, stride: usize) {
        EMU.with(|e| {
            let e = e.borrow();
            let (rows, colsb) = e.shape(T);
            let r = &e.reg[T as usize];
            for i in 0..rows {
                std::ptr::copy_nonoverlapping(r.as_ptr().add(i * 64), p.add(i * stride), colsb);
            }
        })
    }
    unsafe fn zero<const T: u8>() {
        EMU.with(|e| {
            let mut e = e.borrow_mut();
            e.shape(T);
            e.reg[T as usize] = [0; 1024];
        })
    }
    unsafe fn dp_bf16<const C: u8, const A: u8, const B: u8>() {
        Self::dp_with::<C, A, B>(|ra, rb, i, j, kg, old| {
            let mut s = f32::from_le_bytes(old);
            for k in 0..kg {
                s += bf16_at(ra, i * 32 + 2 * k) * bf16_at(rb, k * 32 + 2 * j)
                    + bf16_at(ra, i * 32 + 2 * k + 1) * bf16_at(rb, k * 32 + 2 * j + 1);
            }
            s.to_le_bytes()
        })
    }
    unsafe fn dp_ssd<const C: u8, const A: u8, const B: u8>() {
        Self::dp_int8::<C, A, B>(false)
    }
    unsafe fn dp_usd<const C: u8, const A: u8, const B: u8>() {
        Self::dp_int8::<C, A, B>(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tile::{pack_b_vnni, tile_dot_bf16_ref, TILE_K, TILE_M, TILE_N};
    use half::bf16;
    use rand::{Rng, SeedableRng};

    /// One 16×32×16 product through `K`, as `tile::tile_dot_bf16` does it in asm.
    unsafe fn one_product<K: Tiles>(a: &[bf16], b: &[bf16], c: &mut [f32]) {
        let bp = pack_b_vnni(b);
        let mut cfg = TileConfig::palette1();
        for t in 0..3 {
            cfg.set(t, 16, 64);
        }
        K::config(&cfg);
        K::load::<0>(c.as_ptr() as *const u8, 64);
        K::load::<1>(a.as_ptr() as *const u8, 64);
        K::load::<2>(bp.as_ptr() as *const u8, 64);
        K::dp_bf16::<0, 1, 2>();
        K::store::<0>(c.as_mut_ptr() as *mut u8, 64);
        K::release();
    }

    fn check<K: Tiles>() {
        let mut rng = rand::rngs::StdRng::from_entropy();
        let a: Vec<bf16> = (0..TILE_M * TILE_K)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect();
        let b: Vec<bf16> = (0..TILE_K * TILE_N)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect();
        let init: Vec<f32> = (0..TILE_M * TILE_N)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let (mut c, mut r) = (init.clone(), init);
        unsafe { one_product::<K>(&a, &b, &mut c) };
        tile_dot_bf16_ref(&a, &b, &mut r).unwrap();
        for (i, (x, y)) in c.iter().zip(&r).enumerate() {
            assert!((x - y).abs() <= 1e-4, "C[{i}]: {x} vs reference {y}");
        }
    }

    #[test]
    fn emulated_tile_product_matches_reference() {
        check::<Emu>();
    }

    #[test]
    fn hw_tile_product_matches_reference() {
        if !platform::testing::amx_or_skip() {
            return;
        }
        check::<Hw>();
    }

    #[test]
    fn emulated_int8_quads() {
        let mut cfg = TileConfig::palette1();
        cfg.set(0, 2, 8);
        cfg.set(1, 2, 8);
        cfg.set(2, 2, 8);
        let a: [i8; 16] = [1, -2, 3, -4, 5, 6, 7, 8, -1, -1, -1, -1, 2, 2, 2, 2];
        let b: [i8; 16] = [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, -1, 0, 1, 2];
        let mut c = [7i32; 4];
        unsafe {
            Emu::config(&cfg);
            Emu::load::<0>(c.as_ptr() as *const u8, 8);
            Emu::load::<1>(a.as_ptr() as *const u8, 8);
            Emu::load::<2>(b.as_ptr() as *const u8, 8);
            Emu::dp_ssd::<0, 1, 2>();
            Emu::store::<0>(c.as_mut_ptr() as *mut u8, 8);
            Emu::release();
        }
        // C[0][0] = 7 + (1-2+3-4)·1 + (5+6+7+8)·3 = 7 - 2 + 78.
        assert_eq!(c[0], 83);
        // C[1][1] = 7 + (-1)(2·4) + 2·(-1+0+1+2) = 7 - 8 + 4.
        assert_eq!(c[3], 3);
    }

    #[test]
    #[should_panic(expected = "rows")]
    fn emulated_shape_mismatch_panics() {
        let mut cfg = TileConfig::palette1();
        cfg.set(0, 16, 64);
        cfg.set(1, 8, 64);
        cfg.set(2, 16, 64);
        unsafe {
            Emu::config(&cfg);
            Emu::dp_bf16::<0, 1, 2>();
        }
    }
}
