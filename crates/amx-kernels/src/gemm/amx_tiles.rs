//! The AMX GEMM block kernel shared by bf16 (`tdpbf16ps`) and int8 (`tdpbssd`), inline asm.
//! The two differ only in the dot-product instruction and in what one 64-byte tile row holds
//! (32 bf16 or 64 int8 of K; the B tiles are the VNNI pairs or quads of the packed weights).
//!
//! Micro-kernel: a 32 × 32 block of C, K walked one tile (64 bytes of a row) at a time, C
//! held in tiles across the whole K chunk. Tile allocation (palette 1, every row 64 bytes):
//!
//! ```text
//! tmm0  C rows  0..16, cols  0..16  f32|i32 (r0 rows)    tmm4  A rows  0..16 × 64 bytes of K (r0 rows)
//! tmm1  C rows  0..16, cols 16..32  f32|i32 (r0 rows)    tmm5  A rows 16..32 × 64 bytes of K (r1 rows)
//! tmm2  C rows 16..32, cols  0..16  f32|i32 (r1 rows)    tmm6  B block nb   (16 rows of pairs|quads × 16 cols)
//! tmm3  C rows 16..32, cols 16..32  f32|i32 (r1 rows)    tmm7  B block nb+1
//! ```
//!
//! Per K step: 4 tile loads (A from a per-thread contiguous copy of the 32 rows' K chunk,
//! `[step][32 rows][64 B]`, made once per chunk and reused by every column pair, or straight
//! from the row-major activations with `TANDEM_AMX_PACK_A=0`; B from the packed weight,
//! contiguous), 4 `tdpbf16ps`. A block with fewer than 32 rows sets
//! the tile rows (`r0`, `r1`) in the configuration instead of padding; a missing second A tile
//! or B block is replaced by a duplicate of the first, whose results are never stored. A K
//! that does not fill its last tile ends with one step whose A tile comes from a zero-padded
//! copy of the last bytes of each row (the weights are zero-padded already).
//!
//! Blocking: K is cut into chunks of [`kc_tiles`] tiles (64). Within a chunk every row group
//! of 32 rows is packed first (the A panel, ≤ 128 rows × 4 KiB, stays in L2). A decode block
//! (all of M ≤ 64 rows, thousands of columns) then walks its columns 32 at a time, each pair of
//! B blocks (128 KiB) going through every row group before the next pair, so that each B tile
//! comes from memory once; a large-M block (≤ 128 columns, whose B panel stays in L2) walks
//! the row groups outside instead (see [`rows_outer`]). C goes to the thread's f32 scratch
//! between chunks.
//!
//! `ldtilecfg` is per thread: each call configures the tiles itself and releases them at the
//! end, so any pool thread can run any block.

use std::arch::asm;

use super::pack::BLOCK_N;
use super::M_SMALL;
use crate::tile::TileConfig;

/// K tiles per chunk (2048 deep in bf16); `TANDEM_AMX_KC` overrides it (a tuning knob).
pub fn kc_tiles() -> usize {
    static KC: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KC.get_or_init(|| {
        std::env::var("TANDEM_AMX_KC")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .unwrap_or(64)
    })
}

/// Whether A is copied into a contiguous tile panel first: on by default (faster in the six
/// cases measured on the GPU host, by 11–40 % in single runs, see docs/BENCHMARKS.md);
/// `TANDEM_AMX_PACK_A=0` reads A in place (a tuning knob).
pub fn pack_a() -> bool {
    static PACK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PACK.get_or_init(|| std::env::var("TANDEM_AMX_PACK_A").map_or(true, |v| v != "0"))
}

/// Whether a block of `rows` rows walks its row groups outside the column pairs. Large-M
/// blocks (more than [`M_SMALL`] rows, at most 8 column blocks whose B panel stays in L2) do:
/// on the GPU host, OPT-30B FC1 at M = 2048 took 95.8 ms that way against 128.6 ms with the
/// pairs outside. Decode blocks (all rows, thousands of columns) walk the pairs outside, or
/// every row group would read B from memory again: the 64-row GEMM went from 3.3–3.6 to
/// 4.8 TFLOP/s. `TANDEM_AMX_ROWS_OUTER=1` or `=0` forces one order (a tuning knob).
pub fn rows_outer(rows: usize) -> bool {
    static R: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        std::env::var("TANDEM_AMX_ROWS_OUTER")
            .ok()
            .map(|v| v == "1")
    })
    .unwrap_or(rows > M_SMALL)
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

thread_local! {
    /// This thread's packed A panel (grown once, reused).
    static APACK: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's A panel buffer of at least `bytes` bytes. The pointer stays valid until the
/// next call on this thread (the buffer only grows).
fn apack(bytes: usize) -> *mut u8 {
    APACK.with(|b| {
        let mut b = b.borrow_mut();
        let lines = bytes.div_ceil(64);
        if b.len() < lines {
            b.resize(lines, Line([0; 64]));
        }
        b.as_mut_ptr() as *mut u8
    })
}

/// Bytes of one tile row, and of one B tile.
const ROW: usize = 64;
const TILE_BYTES: usize = 16 * ROW;

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

macro_rules! k_steps_asm {
    ($name:ident, $dot:literal) => {
        /// `steps` K steps of the 2 × 2 micro-kernel on tmm0–3 (see the header for the tiles).
        #[inline(always)]
        unsafe fn $name(
            a0: *const u8,
            a1: *const u8,
            lda_bytes: usize,
            a_step: usize,
            b0: *const u8,
            b1: *const u8,
            steps: usize,
        ) {
    asm!(
        "2:",
        "tileloadd tmm4, [{a0} + {lda}*1]",
        "tileloadd tmm5, [{a1} + {lda}*1]",
        "tileloadd tmm6, [{b0} + {bs}*1]",
        "tileloadd tmm7, [{b1} + {bs}*1]",
        concat!($dot, " tmm0, tmm4, tmm6"),
        concat!($dot, " tmm1, tmm4, tmm7"),
        concat!($dot, " tmm2, tmm5, tmm6"),
        concat!($dot, " tmm3, tmm5, tmm7"),
        "add {a0}, {astep}",
        "add {a1}, {astep}",
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
        astep = in(reg) a_step,
        bs = in(reg) 64usize,
        options(nostack, readonly),
            );
        }
    };
}
k_steps_asm!(k_steps_bf16, "tdpbf16ps");
k_steps_asm!(k_steps_int8, "tdpbssd");

/// Where a block kernel finds its operands.
pub(crate) struct AmxOperands {
    /// Row `m0` of A.
    pub a: *const u8,
    /// Bytes from one row of A to the next; each row has `kb` tiles' worth of bytes unless
    /// `tail_bytes` is non-zero, in which case the last tile's row holds only that many.
    pub lda: usize,
    pub tail_bytes: usize,
    /// The first packed block of the weight, the bytes between blocks, tiles per block.
    pub b: *const u8,
    pub b_stride: usize,
    pub kb: usize,
}

/// Accumulators (f32 for bf16, i32 bits for int8) of rows `0..rows` of `op.a` × packed blocks
/// `pb0..pb1`, into `c` (row stride `(pb1 - pb0) · 16`).
///
/// # Safety
/// AMX (and AMX-INT8 for `INT8`) is usable on this thread; `op` describes readable memory for
/// `rows` rows and blocks up to `pb1`; `c` holds `rows · (pb1 - pb0) · 16` elements.
pub(crate) unsafe fn gemm_block_amx<const INT8: bool>(
    op: &AmxOperands,
    rows: usize,
    pb0: usize,
    pb1: usize,
    c: &mut [f32],
) {
    let kb = op.kb;
    let kfull = if op.tail_bytes > 0 { kb - 1 } else { kb };
    let ldc = (pb1 - pb0) * BLOCK_N;
    let (lda_bytes, ldc_bytes) = (op.lda, ldc * 4);
    let k_steps = if INT8 { k_steps_int8 } else { k_steps_bf16 };
    let mut configured = None;
    let kc = kc_tiles();
    let pack = pack_a();
    let rows_outer = rows_outer(rows);
    let groups = rows.div_ceil(32);
    let group_rows = |g: usize| {
        let mp = g * 32;
        let r0 = (rows - mp).min(16);
        (mp, r0, (rows - mp - r0).min(16))
    };
    for kc0 in (0..kb).step_by(kc) {
        let kc1 = (kc0 + kc).min(kb);
        let has_tail = op.tail_bytes != 0 && kc1 == kb;
        let steps = if has_tail { kfull - kc0 } else { kc1 - kc0 };
        // This thread's panel: every row group's A for the chunk (when packed), then every
        // group's zero-padded tail tiles (when K ends inside a tile).
        let packed = if pack {
            groups * steps * 2 * TILE_BYTES
        } else {
            0
        };
        let tails = if has_tail { groups * 2 * TILE_BYTES } else { 0 };
        let panel = apack(packed + tails);
        for g in 0..groups {
            let (mp, r0, r1) = group_rows(g);
            let arow0 = op.a.add(mp * lda_bytes);
            // A copied tile by tile into the contiguous panel (2 KiB per K step: no
            // cache-set conflicts between the 16 rows of one tile load when the row stride is
            // a multiple of 4 KiB, and the copy is reused by every column pair), or read in
            // place (TANDEM_AMX_PACK_A=0).
            if pack {
                let dst = panel.add(g * steps * 2 * TILE_BYTES);
                for s in 0..steps {
                    for r in 0..r0 + r1 {
                        let src = arow0.add(r * lda_bytes + (kc0 + s) * ROW);
                        std::ptr::copy_nonoverlapping(
                            src,
                            dst.add(s * 2 * TILE_BYTES + r * ROW),
                            ROW,
                        );
                    }
                }
            }
            if has_tail {
                let t = panel.add(packed + g * 2 * TILE_BYTES);
                for r in 0..32 {
                    let row = t.add(r * ROW);
                    let n = if r < r0 + r1 { op.tail_bytes } else { 0 };
                    if n > 0 {
                        std::ptr::copy_nonoverlapping(
                            arow0.add(r * lda_bytes + kfull * ROW),
                            row,
                            n,
                        );
                    }
                    std::ptr::write_bytes(row.add(n), 0, ROW - n);
                }
            }
        }
        // Column pairs outside, row groups inside: a pair's B tiles of the chunk (128 KiB) are
        // read from memory once and reused from the cache by every row group, however many
        // columns the block spans (a small-M block spans thousands: with the row groups
        // outside, a 64-row block read each B tile from memory twice).
        let pairs = (pb1 - pb0).div_ceil(2);
        for i in 0..pairs * groups {
            let (pi, g) = if rows_outer {
                (i % pairs, i / pairs)
            } else {
                (i / groups, i % groups)
            };
            let np = pb0 + 2 * pi;
            let two = np + 1 < pb1;
            let b0 = op.b.add(np * op.b_stride + kc0 * TILE_BYTES);
            let b1 = if two { b0.add(op.b_stride) } else { b0 };
            {
                let (mp, r0, r1) = group_rows(g);
                if configured != Some((r0, r1)) {
                    let cfg = config(r0, if r1 > 0 { r1 } else { r0 });
                    // SAFETY: AMX is available (caller's contract); the configuration is a
                    // valid palette-1 layout (rows ≤ 16, 64-byte rows).
                    asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
                    configured = Some((r0, r1));
                }
                let (a0, a_lda, a_step) = if pack {
                    (
                        panel.add(g * steps * 2 * TILE_BYTES) as *const u8,
                        ROW,
                        2 * TILE_BYTES,
                    )
                } else {
                    (op.a.add(mp * lda_bytes + kc0 * ROW), lda_bytes, ROW)
                };
                let a1 = if r1 > 0 { a0.add(16 * a_lda) } else { a0 };
                let t0 = panel.wrapping_add(packed + g * 2 * TILE_BYTES) as *const u8;
                let t1 = if r1 > 0 { t0.add(16 * ROW) } else { t0 };
                let c00 = c.as_mut_ptr().add(mp * ldc + (np - pb0) * BLOCK_N);
                let c10 = c00.wrapping_add(16 * ldc);
                // SAFETY: the C tiles are inside the scratch (rows × ldc), only the ones this
                // block owns are loaded or stored; A rows m0+mp .. +r0+r1 and K tiles
                // kc0 .. kc0+steps are inside A (or its panel); B tiles kc0 .. kc1 are inside
                // the weight; the tail tiles are in the panel.
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
                    k_steps(a0, a1, a_lda, a_step, b0, b1, steps);
                }
                if has_tail {
                    let (bt0, bt1) = (b0.add(steps * TILE_BYTES), b1.add(steps * TILE_BYTES));
                    k_steps(t0, t1, ROW, ROW, bt0, bt1, 1);
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
