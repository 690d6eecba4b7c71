//! AMX tier of the bf16 GEMM block kernel (`tdpbf16ps`), inline asm.
//!
//! Micro-kernel: a 32 × 32 block of C, K walked 32 at a time, C held in tiles across the whole
//! K chunk. Tile allocation (palette 1, every row 64 bytes):
//!
//! ```text
//! tmm0  C rows  0..16, cols  0..16  f32   (r0 rows)      tmm4  A rows  0..16 × 32 k  bf16 (r0 rows)
//! tmm1  C rows  0..16, cols 16..32  f32   (r0 rows)      tmm5  A rows 16..32 × 32 k  bf16 (r1 rows)
//! tmm2  C rows 16..32, cols  0..16  f32   (r1 rows)      tmm6  B block nb   (16 k-pairs × 16 cols × 2)
//! tmm3  C rows 16..32, cols 16..32  f32   (r1 rows)      tmm7  B block nb+1
//! ```
//!
//! Per K step: 4 tile loads (A straight from the row-major activations with the row stride,
//! B from the packed weight, contiguous), 4 `tdpbf16ps`. A block with fewer than 32 rows sets
//! the tile rows (`r0`, `r1`) in the configuration instead of padding; a missing second A tile
//! or B block is replaced by a duplicate of the first, whose results are never stored. A K
//! that is not a multiple of 32 ends with one step whose A tile comes from a zero-padded copy
//! of the last columns (the weight is zero-padded already).
//!
//! Blocking: K is cut into chunks of [`KC_TILES`] tiles; within a chunk the block's rows are
//! taken 32 at a time and its columns 32 at a time, so the A panel (≤ 128 rows) and the B
//! panel (≤ 128 columns) of one chunk (512 KiB each at most) stay in L2 while they are reused.
//! C goes to the thread's f32 scratch between chunks.
//!
//! `ldtilecfg` is per thread: each call configures the tiles itself and releases them at the
//! end, so any pool thread can run any block.

use std::arch::asm;

use half::bf16;

use super::pack::{PackedWeight, BLOCK_K, BLOCK_N, TILE_ELEMS};
use crate::tile::TileConfig;

/// K tiles (of 32) per chunk: 2048 deep.
pub const KC_TILES: usize = 64;

/// The zero-padded last K columns of 32 rows of A (one tail tile per A tile).
#[repr(C, align(64))]
struct TailTiles([[bf16; BLOCK_K]; 32]);

fn config(r0: usize, r1: usize) -> TileConfig {
    let mut cfg = TileConfig::palette1();
    for t in [0, 1, 4] {
        cfg.set(t, r0 as u8, 64);
    }
    for t in [2, 3, 5] {
        cfg.set(t, r1 as u8, 64);
    }
    cfg.set(6, 16, 64);
    cfg.set(7, 16, 64);
    cfg
}

macro_rules! tile_io {
    ($load:ident, $store:ident, $zero:ident, $t:literal) => {
        #[inline(always)]
        unsafe fn $load(p: *const f32, stride: usize) {
            asm!(concat!("tileloadd ", $t, ", [{p} + {s}*1]"), p = in(reg) p, s = in(reg) stride, options(nostack, readonly));
        }
        #[inline(always)]
        unsafe fn $store(p: *mut f32, stride: usize) {
            asm!(concat!("tilestored [{p} + {s}*1], ", $t), p = in(reg) p, s = in(reg) stride, options(nostack));
        }
        #[inline(always)]
        unsafe fn $zero() {
            asm!(concat!("tilezero ", $t), options(nostack, nomem));
        }
    };
}
tile_io!(load_c0, store_c0, zero_c0, "tmm0");
tile_io!(load_c1, store_c1, zero_c1, "tmm1");
tile_io!(load_c2, store_c2, zero_c2, "tmm2");
tile_io!(load_c3, store_c3, zero_c3, "tmm3");

/// `steps` K steps of the 2 × 2 micro-kernel on tmm0–3 (see the header for the tiles).
#[inline(always)]
unsafe fn k_steps(
    a0: *const bf16,
    a1: *const bf16,
    lda_bytes: usize,
    b0: *const bf16,
    b1: *const bf16,
    steps: usize,
) {
    asm!(
        "2:",
        "tileloadd tmm4, [{a0} + {lda}*1]",
        "tileloadd tmm5, [{a1} + {lda}*1]",
        "tileloadd tmm6, [{b0} + {bs}*1]",
        "tileloadd tmm7, [{b1} + {bs}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a0}, 64",
        "add {a1}, 64",
        "add {b0}, 1024",
        "add {b1}, 1024",
        "dec {n}",
        "jnz 2b",
        a0 = inout(reg) a0 => _,
        a1 = inout(reg) a1 => _,
        b0 = inout(reg) b0 => _,
        b1 = inout(reg) b1 => _,
        n = inout(reg) steps => _,
        lda = in(reg) lda_bytes,
        bs = in(reg) 64usize,
        options(nostack, readonly),
    );
}

/// See [`BlockKernel`](super::BlockKernel) for the contract.
pub(crate) unsafe fn gemm_block_amx_bf16(
    a: &[bf16],
    m0: usize,
    rows: usize,
    w: &PackedWeight,
    pb0: usize,
    pb1: usize,
    c: &mut [f32],
) {
    let (k, kb) = (w.k, w.kb);
    let (kfull, ktail) = (k / BLOCK_K, k % BLOCK_K);
    let ldc = (pb1 - pb0) * BLOCK_N;
    let (lda_bytes, ldc_bytes) = (k * 2, ldc * 4);
    let mut tail = TailTiles([[bf16::ZERO; BLOCK_K]; 32]);
    let mut configured = None;
    for kc0 in (0..kb).step_by(KC_TILES) {
        let kc1 = (kc0 + KC_TILES).min(kb);
        let has_tail = ktail != 0 && kc1 == kb;
        let steps = if has_tail { kfull - kc0 } else { kc1 - kc0 };
        for mp in (0..rows).step_by(32) {
            let r0 = (rows - mp).min(16);
            let r1 = (rows - mp - r0).min(16);
            if configured != Some((r0, r1)) {
                let cfg = config(r0, if r1 > 0 { r1 } else { r0 });
                // SAFETY: AMX is available (caller's contract); the configuration is a valid
                // palette-1 layout (rows ≤ 16, 64-byte rows).
                asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
                configured = Some((r0, r1));
            }
            let arow0 = a.as_ptr().add((m0 + mp) * k);
            let a0 = arow0.add(kc0 * BLOCK_K);
            let a1 = if r1 > 0 { a0.add(16 * k) } else { a0 };
            if has_tail {
                for (r, t) in tail.0.iter_mut().enumerate().take(r0 + r1) {
                    let src = &a[(m0 + mp + r) * k + kfull * BLOCK_K..(m0 + mp + r + 1) * k];
                    t[..ktail].copy_from_slice(src);
                    t[ktail..].fill(bf16::ZERO);
                }
            }
            let t0 = tail.0.as_ptr() as *const bf16;
            let t1 = if r1 > 0 { t0.add(16 * BLOCK_K) } else { t0 };
            for np in (pb0..pb1).step_by(2) {
                let two = np + 1 < pb1;
                let b0 = w.block_ptr(np).add(kc0 * TILE_ELEMS);
                let b1 = if two {
                    w.block_ptr(np + 1).add(kc0 * TILE_ELEMS)
                } else {
                    b0
                };
                let c00 = c.as_mut_ptr().add(mp * ldc + (np - pb0) * BLOCK_N);
                let c10 = c00.wrapping_add(16 * ldc);
                // SAFETY: the C tiles are inside the scratch (rows × ldc), only the ones this
                // block owns are loaded or stored; A rows m0+mp .. +r0+r1 and K tiles
                // kc0 .. kc0+steps are inside A; B tiles kc0 .. kc1 are inside the weight.
                if kc0 == 0 {
                    zero_c0();
                    zero_c1();
                    zero_c2();
                    zero_c3();
                } else {
                    load_c0(c00, ldc_bytes);
                    if two {
                        load_c1(c00.add(BLOCK_N), ldc_bytes);
                    }
                    if r1 > 0 {
                        load_c2(c10, ldc_bytes);
                        if two {
                            load_c3(c10.add(BLOCK_N), ldc_bytes);
                        }
                    }
                }
                if steps > 0 {
                    k_steps(a0, a1, lda_bytes, b0, b1, steps);
                }
                if has_tail {
                    k_steps(
                        t0,
                        t1,
                        64,
                        b0.add(steps * TILE_ELEMS),
                        b1.add(steps * TILE_ELEMS),
                        1,
                    );
                }
                store_c0(c00, ldc_bytes);
                if two {
                    store_c1(c00.add(BLOCK_N), ldc_bytes);
                }
                if r1 > 0 {
                    store_c2(c10, ldc_bytes);
                    if two {
                        store_c3(c10.add(BLOCK_N), ldc_bytes);
                    }
                }
            }
        }
    }
    // SAFETY: releases this thread's tile state; the next block configures again.
    asm!("tilerelease", options(nostack, nomem));
}
