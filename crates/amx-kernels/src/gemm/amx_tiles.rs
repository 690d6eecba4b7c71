//! The AMX GEMM shared by bf16 (`tdpbf16ps`) and int8 (`tdpbssd`), written against
//! [`Tiles`](crate::tile_ops::Tiles): the same code runs on the hardware ([`Hw`], one asm
//! instruction per tile op) and under the emulator ([`Emu`](crate::tile_ops::Emu)) in the tests
//! of machines without AMX. bf16 and int8 differ only in the dot-product instruction and in
//! what one 64-byte tile row holds (32 bf16 or 64 int8 of K; the B tiles are the VNNI pairs or
//! quads of the packed weights).
//!
//! Micro-kernel: a 32 × 32 block of C, K walked one tile (64 bytes of a row) at a time, C held
//! in tiles across one K chunk. Tile allocation (palette 1, every row 64 bytes):
//!
//! ```text
//! tmm0  C rows  0..16, cols  0..16  f32|i32 (r0 rows)    tmm4  A rows  0..16 × 64 bytes of K (r0 rows)
//! tmm1  C rows  0..16, cols 16..32  f32|i32 (r0 rows)    tmm5  A rows 16..32 × 64 bytes of K (r1 rows)
//! tmm2  C rows 16..32, cols  0..16  f32|i32 (r1 rows)    tmm6  B block nb   (16 rows of pairs|quads × 16 cols)
//! tmm3  C rows 16..32, cols 16..32  f32|i32 (r1 rows)    tmm7  B block nb+1
//! ```
//!
//! Per K step: 2 A tiles from the panel, 2 B tiles from the packed weight (both contiguous,
//! 64-byte row stride), 4 dot products; a group of 16 rows or fewer skips tmm5 and its two
//! products. A group with fewer than 32 rows sets the tile rows (`r0`, `r1`) in the
//! configuration instead of padding; a missing second B block is replaced by a duplicate of
//! the first, whose results are never stored.
//!
//! A panel: before any block reads it, all of A is copied into
//! `[32-row group][K tile][32 rows][64 bytes]` in a pool pass of its own (`TANDEM_AMX_PREP=items`
//! has the blocks' items copy it as they start; see [`APrep`]; `TANDEM_AMX_PANELS=2` alternates
//! two panels, call by call), the last tile of each row zero-padded past K
//! (the weights are zero-padded already), so that one K step of one group is 2 KiB in one
//! piece: no cache-set conflicts between the 16 rows of a tile load, no tail step, and no copy
//! inside the blocks (a block of a decode GEMM spans all rows, and used to repack them).
//! The int8 GEMM quantizes A straight into this layout (`TANDEM_AMX_A=copy`: into rows, then
//! copied like bf16's A). `TANDEM_AMX_A=direct|auto` reads A in place instead, one tile row
//! per row of A at the caller's row stride ([`ASrc`]; `auto` only where A's rows start on
//! 64-byte lines): no copy and, for bf16, no freshly written panel, whose reads slowed o and
//! down by 18–44 % on the GPU host (docs/BENCHMARKS.md), at the price of 16 rows a tile load
//! that may share cache sets (int8's quantized rows are written afresh either way).
//!
//! Blocking ([`Knobs`], each an environment variable read once, a tuning knob; defaults in
//! [`Knobs::DEFAULT`]): a work block is up to `TANDEM_AMX_MB` rows × `TANDEM_AMX_NB` column
//! blocks (default 128 × 8; M ≤ 64: all rows × `TANDEM_AMX_NB_SMALL` column blocks, default 2,
//! or with `=0` as many as give each thread eight work blocks). K is cut into chunks of `TANDEM_AMX_KC` tiles
//! (default 32); within a chunk the block's 32 × 32 tiles run either row group outside
//! (`TANDEM_AMX_ROWS_OUTER=1`: the group's A strip of the chunk stays in L1 or L2 while the B
//! tiles of every column pair stream) or column pair outside (`=0`, the default: the pair's B
//! strip is read from memory once and reused by every row group while the groups' A streams
//! from L2). C goes to the block's f32 scratch between chunks. `TANDEM_AMX_PF_A` / `TANDEM_AMX_PF_B` prefetch (`prefetcht0`) the
//! A / B tiles that many K steps ahead (0: off); `TANDEM_AMX_PF_A2` / `TANDEM_AMX_PF_B2` the same
//! into L2 on the first pass over the operand (a distance of one chunk fetches the next
//! chunk's). `TANDEM_AMX_T1=a|b|ab` loads A, B or both with `tileloaddt1` (the hint that the
//! data will not be reused), and `TANDEM_AMX_ORDER=rows|skewed|own` changes the order in which
//! the pool takes the work blocks (see `Order`); with `own` (M > 64) there is no shared panel:
//! each pool thread packs the rows of A its blocks use into a panel of its own, once per call
//! and row block (the row order hands it runs of blocks on the same rows), so that a line of
//! the panel is written and read by one core. On the GPU host the GEMM ran 18–44% faster on o
//! and down when the shared panel had not just been written (docs/BENCHMARKS.md); `own` was
//! the candidate fix, and measured there it was no faster than the shared panel (sixth session).
//!
//! What bounds it: on one thread the 2 × 2 kernel runs at the full `tdpbf16ps` rate with one
//! operand in L1 (`amx_ceiling/l1`, `/l1a_l2b`; 46–65 % with both in L2). On all 16 threads of
//! the GPU host, the same kernel with every operand in its core's own L1 reaches only 6–8
//! TFLOP/s, about a third of sixteen times one thread, while the products alone scale to 12
//! threads: a ceiling of the host, which the 64-row product from DRAM reaches within 10–20 %.
//! Measured again with 2 ms calls (sixteenth session): any second busy core halves each core's
//! rate from L1, whichever pair of the VM's CPUs, while one core alone reaches the full rate at
//! times; so the limit lies outside the VM (the physical cores' other hardware threads, or the
//! package's power), and the VM cannot read its clock to tell which. The blockings that keep A in L1 (`TANDEM_AMX_ROWS_OUTER=1` with
//! short chunks) were 12–33 % slower than the defaults at 64, 128 and 512 rows, and a 2 × 1
//! kernel with double-buffered operands slower than the 2 × 2 (docs/BENCHMARKS.md, fifteenth
//! session).
//!
//! `TANDEM_AMX_NB_DEEP` widens the blocks of M ≤ 64 rows whose A is past `TANDEM_AMX_DEEP_A`
//! bytes (1 MiB), so that fewer blocks re-read each K chunk of A from the L3; off by default:
//! two pairs a block made OPT-30B's FC2 (A 3.7 MB at 64 rows) 3–7 % slower end to end on the
//! GPU host (docs/BENCHMARKS.md).
//!
//! `TANDEM_AMX_KSPLIT=off|auto|N` cuts K into slices ([`SplitK`](super::SplitK)): each item
//! computes its block over one slice of K chunks, and the last slice of a block to finish adds
//! the partial sums (in slice order; int8 as i32, dequantized once) and runs the epilogue.
//! `auto` (the default) slices where M ≤ 64 so that a slice of A holds at most
//! `TANDEM_AMX_DEEP_A` bytes and stays in a core's L2 while the pool's runs of items (one slice
//! at a time) stream their weight strips (OPT-30B's FC2 at 64 rows: A is 3.7 MB, four slices;
//! +17 % cold on the GPU host, its down 6 % shorter end to end), and where M > 64 so that
//! every thread has `TANDEM_AMX_KSPLIT_ITEMS` (8) items (LLaMA-3-8B o and down at 128 rows: 32
//! blocks, two a thread; 1.12–1.37× there). Slicing for
//! items at M ≤ 64 made OPT-30B's out (224 one-pair blocks) 7–9 % slower, so it does not.
//!
//! `TANDEM_AMX_SMALL=b1` runs blocks of 16, 32, 48 or 64 rows on a B-stationary kernel
//! instead ([`gemm_block_amx_b1`]: C as four 16-row tiles of one column block, each B tile
//! loaded once and used by every row tile); an opt-in for measurement, not the default: on the
//! GPU host it ran the 64-row products of OPT-30B with cold weights at 0.87–0.94× the 2 × 2
//! kernel, which loads one tile per tile product where it loads 1.25 (docs/BENCHMARKS.md).
//!
//! `ldtilecfg` is per thread: each block configures the tiles itself and releases them at the
//! end, so any pool thread can run any block.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};

use rayon::prelude::*;

use platform::env::choice;
use platform::CpuTier;

use super::pack::BLOCK_N;
use super::{
    run, Epilogue, Item, Order, OutElem, Partials, SharedMut, SplitK, WeightShape, M_SMALL,
};
use crate::tile::TileConfig;
use crate::tile_ops::Tiles;

/// Bytes of one tile row, of one tile, of one K step of a 32-row group in the A panel.
pub(crate) const ROW: usize = 64;
pub(crate) const TILE_BYTES: usize = 16 * ROW;
pub(crate) const A_STEP: usize = 2 * TILE_BYTES;

/// The blocking and prefetch choices of the AMX GEMM (see the module header).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Knobs {
    /// K tiles per chunk (`TANDEM_AMX_KC`).
    pub kc: usize,
    /// Row groups outside the column pairs (`TANDEM_AMX_ROWS_OUTER=1|0`); `None`: for blocks
    /// of more than [`M_SMALL`] rows only.
    pub rows_outer: Option<bool>,
    /// Prefetch distance in K steps for the A panel and the B tiles (0: none), into L1.
    pub pf_a: usize,
    pub pf_b: usize,
    /// The same into L2 (`prefetcht1`), issued only on the first pass over the operand in a
    /// chunk (B: the first row group of a pair; A: the first pair of a group); a distance of
    /// `kc` fetches the next chunk's tiles of the same rows or columns.
    pub pf_a2: usize,
    pub pf_b2: usize,
    /// Rows of a work block when M > [`M_SMALL`] (a multiple of 32; `TANDEM_AMX_MB`).
    pub m_block: usize,
    /// Most packed column blocks of a work block when M > [`M_SMALL`] (even; `TANDEM_AMX_NB`).
    pub n_block: usize,
    /// Packed column blocks of a work block when M ≤ [`M_SMALL`] (even;
    /// `TANDEM_AMX_NB_SMALL`, 0 for `None`); `None`: as many as give each thread eight blocks.
    pub n_block_small: Option<usize>,
    /// The order of the work blocks (`TANDEM_AMX_ORDER=columns|rows|skewed`).
    pub order: Order,
    /// Which operands are loaded with `tileloaddt1` (the not-reused hint): bit 0 A, bit 1 B
    /// (`TANDEM_AMX_T1=none|a|b|ab`).
    pub t1: u8,
    /// Blocks of at most [`M_SMALL`] rows, a multiple of 16, on the B-stationary micro-kernel
    /// ([`gemm_block_amx_b1`]; `TANDEM_AMX_SMALL=b1`; the default `2x2` is [`micro`]).
    pub b_stationary: bool,
    /// Where the tile loads read A (`TANDEM_AMX_A=panel|copy|direct|auto`, see [`ASrc`]).
    pub a_src: ASrc,
    /// Who runs A's pass into the panel (`TANDEM_AMX_PREP=pass|items`): a pool pass of its own
    /// before the blocks' (`pass`, the default), or the blocks' items, as they start (`items`).
    /// See [`APrep`].
    pub prep_in_items: bool,
    /// A panels a calling thread alternates between, call by call (`TANDEM_AMX_PANELS=1|2`):
    /// with two, a panel is rewritten two calls after it was last read instead of one.
    pub panels: usize,
    /// Packed column blocks of a work block when M ≤ [`M_SMALL`] and A (M rows of K) holds
    /// more than `deep_a_bytes` (`TANDEM_AMX_NB_DEEP`, even; `None`: as `n_block_small`). A
    /// block walks its K chunks outside its column pairs, so each chunk of A is read from the
    /// L3 once a block: an A past the L2 (OPT-30B's FC2 at 64 rows: 3.7 MB) is read again by
    /// every block, where wider blocks read it fewer times, at the price of fewer blocks to
    /// balance the threads with.
    pub n_block_deep: Option<usize>,
    /// A's bytes above which `n_block_deep` applies (`TANDEM_AMX_DEEP_A`, default 1 MiB); with
    /// K slices chosen automatically, the most of A one slice holds where M ≤ [`M_SMALL`].
    pub deep_a_bytes: usize,
    /// K slices (`TANDEM_AMX_KSPLIT=off|auto|N`; [`SplitK`]): 1 off, 0 automatic (the
    /// default: where M ≤ [`M_SMALL`], slices of A no larger than `deep_a_bytes`; above, enough
    /// for `split_items` items a thread), N that many (at most one a K chunk).
    pub k_split: usize,
    /// Items a thread should have where M > [`M_SMALL`] before K is sliced automatically
    /// (`TANDEM_AMX_KSPLIT_ITEMS`, default 8).
    pub split_items: usize,
}

/// Where the AMX GEMM's tile loads read A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ASrc {
    /// Always from the A panel, copied first (the module header's layout).
    Panel,
    /// In place, each tile row one row of A at the caller's row stride, wherever the rows hold
    /// whole K tiles (K a multiple of 32 for bf16; the int8 GEMM's quantized rows always do);
    /// the panel otherwise.
    Direct,
    /// In place where [`ASrc::Direct`] would be and A's rows also start on 64-byte lines (A
    /// 64-byte aligned, a row stride of whole lines), so that no tile row straddles two lines.
    Auto,
    /// From the panel, as [`ASrc::Panel`], but for int8 too by a copy: A quantized into rows
    /// first, then copied into the panel (`TANDEM_AMX_A=copy`). With `Panel` the int8 GEMM
    /// quantizes A straight into the panel's layout, with no copy; bf16 copies with either.
    Copy,
}

impl Knobs {
    /// The defaults, from two sweeps on the GPU host (bf16; llama3-8b o M=512, gate_up
    /// M=64 and 128, down M=2048). Against K chunks of 16, row groups outside for M > 64,
    /// B prefetched into L1 two steps ahead and 256 × 256 blocks, each of these alone was
    /// faster in all four cases of one run: chunks of 32 (1.07–1.65×), column pairs outside
    /// (1.12–1.48×), no L1 prefetch (1.10–1.29×); 128 × 128 blocks in three (1.0–1.42×). Of
    /// seven combinations, this one had the best geometric mean in the second run; the host's
    /// figures moved by up to 25 % between the two runs (torch too), so the margins are rough.
    /// Small M (≤ 64 rows) takes one column pair a block: in two alternated rounds on OPT-30B's
    /// qkv, fc1 and fc2 with cold weights, that was 1.0–1.4× the eight-blocks-a-thread sizing at
    /// M = 1, 8, 32 and 64 (qkv M = 1: 87 → 103–123 GB/s; M = 64: 3.5–3.9 → 4.2–4.6 TFLOP/s),
    /// within the spread on fc2, and two pairs fell in between (docs/BENCHMARKS.md).
    pub(crate) const DEFAULT: Knobs = Knobs {
        kc: 32,
        rows_outer: Some(false),
        pf_a: 0,
        pf_b: 0,
        pf_a2: 0,
        pf_b2: 32,
        m_block: 128,
        n_block: 8,
        n_block_small: Some(2),
        order: Order::Columns,
        t1: 0,
        b_stationary: false,
        a_src: ASrc::Panel,
        prep_in_items: false,
        panels: 1,
        n_block_deep: None,
        deep_a_bytes: 1 << 20,
        k_split: 0,
        split_items: 8,
    };

    /// The defaults with the environment's overrides, read once.
    pub(crate) fn get() -> &'static Knobs {
        static K: std::sync::OnceLock<Knobs> = std::sync::OnceLock::new();
        K.get_or_init(|| {
            let num = |name: &str, default: usize| match std::env::var(name) {
                Err(_) => default,
                Ok(v) => v.trim().parse::<usize>().unwrap_or_else(|_| {
                    eprintln!("tandem: {name}={v:?} is not a count; using {default}");
                    default
                }),
            };
            let d = Knobs::DEFAULT;
            Knobs {
                kc: num("TANDEM_AMX_KC", d.kc).max(1),
                rows_outer: choice(
                    "TANDEM_AMX_ROWS_OUTER",
                    &[("auto", None), ("1", Some(true)), ("0", Some(false))],
                    d.rows_outer,
                ),
                pf_a: num("TANDEM_AMX_PF_A", d.pf_a),
                pf_b: num("TANDEM_AMX_PF_B", d.pf_b),
                pf_a2: num("TANDEM_AMX_PF_A2", d.pf_a2),
                pf_b2: num("TANDEM_AMX_PF_B2", d.pf_b2),
                m_block: num("TANDEM_AMX_MB", d.m_block).div_ceil(32).max(1) * 32,
                n_block: num("TANDEM_AMX_NB", d.n_block).div_ceil(2).max(1) * 2,
                n_block_small: match std::env::var("TANDEM_AMX_NB_SMALL") {
                    Err(_) => d.n_block_small,
                    Ok(_) => match num("TANDEM_AMX_NB_SMALL", 2) {
                        0 => None,
                        nb => Some(nb.div_ceil(2) * 2),
                    },
                },
                t1: choice(
                    "TANDEM_AMX_T1",
                    &[("none", 0), ("a", 1), ("b", 2), ("ab", 3)],
                    d.t1,
                ),
                b_stationary: choice(
                    "TANDEM_AMX_SMALL",
                    &[("2x2", false), ("b1", true)],
                    d.b_stationary,
                ),
                n_block_deep: match num("TANDEM_AMX_NB_DEEP", 0) {
                    0 => d.n_block_deep,
                    nb => Some(nb.div_ceil(2) * 2),
                },
                deep_a_bytes: num("TANDEM_AMX_DEEP_A", d.deep_a_bytes),
                k_split: match std::env::var("TANDEM_AMX_KSPLIT").as_deref() {
                    Err(_) => d.k_split,
                    Ok("off") => 1,
                    Ok("auto") => 0,
                    Ok(v) => match v.trim().parse::<usize>() {
                        Ok(n) if n > 0 => n,
                        _ => {
                            let using = match d.k_split {
                                0 => "auto".to_string(),
                                1 => "off".to_string(),
                                n => n.to_string(),
                            };
                            eprintln!(
                                "tandem: TANDEM_AMX_KSPLIT={v:?} is not off, auto or a count; using {using}"
                            );
                            d.k_split
                        }
                    },
                },
                split_items: num("TANDEM_AMX_KSPLIT_ITEMS", d.split_items),
                a_src: choice(
                    "TANDEM_AMX_A",
                    &[
                        ("panel", ASrc::Panel),
                        ("copy", ASrc::Copy),
                        ("direct", ASrc::Direct),
                        ("auto", ASrc::Auto),
                    ],
                    d.a_src,
                ),
                prep_in_items: choice(
                    "TANDEM_AMX_PREP",
                    &[("items", true), ("pass", false)],
                    d.prep_in_items,
                ),
                panels: choice("TANDEM_AMX_PANELS", &[("1", 1), ("2", 2)], d.panels),
                order: choice(
                    "TANDEM_AMX_ORDER",
                    &[
                        ("columns", Order::Columns),
                        ("rows", Order::Rows),
                        ("skewed", Order::Skewed),
                        ("own", Order::RowsOwn),
                    ],
                    d.order,
                ),
            }
        })
    }

    /// The work blocks of the plan for `m` rows of A taking `a_bytes` in all, `kb` K tiles.
    pub(crate) fn blocking(&self, m: usize, a_bytes: usize, kb: usize) -> super::Blocking {
        let deep = m <= M_SMALL && a_bytes > self.deep_a_bytes;
        super::Blocking {
            m_block: self.m_block,
            n_block_max: self.n_block,
            n_block_small: match self.n_block_deep {
                Some(nb) if deep => Some(nb),
                _ => self.n_block_small,
            },
            order: self.order,
            split: (self.k_split != 1).then_some(SplitK {
                kb,
                chunk: self.kc.max(1),
                slices: self.k_split,
                a_bytes,
                a_max: self.deep_a_bytes,
                items: self.split_items,
            }),
        }
    }

    /// Whether a block of `rows` rows walks its row groups outside the column pairs.
    pub(crate) fn rows_outer(&self, rows: usize) -> bool {
        self.rows_outer.unwrap_or(rows > M_SMALL)
    }
}

/// One 64-byte line of the A panel (the alignment `tileloadd` rows want).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Line(pub(crate) [u8; 64]);

impl Default for Line {
    fn default() -> Self {
        Line([0; 64])
    }
}

thread_local! {
    /// The calling thread's A panel (grown once, reused).
    static PANEL: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    /// Its second panel (`TANDEM_AMX_PANELS=2`).
    static PANEL2: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Bytes of the A panel of `m` rows and `kb` K tiles.
pub(crate) fn panel_bytes(m: usize, kb: usize) -> usize {
    m.div_ceil(32) * kb * A_STEP
}

/// Where K tile `t` of row `r` (of the group in slot `r / 32`) starts in a panel of `kb` K
/// tiles a group.
pub(crate) fn panel_offset(r: usize, t: usize, kb: usize) -> usize {
    ((r / 32) * kb + t) * A_STEP + (r % 32) * ROW
}

/// Activations as the caller has them: `m` rows at stride `lda` bytes, `row_bytes` of them
/// meaningful (K elements), to be cut into `kb` tiles of 64 bytes; or, with `packed`, already
/// in the A panel's layout (the module header's; `lda` and `row_bytes` unused), as the int8
/// GEMM quantizes them.
pub(crate) struct ASource {
    pub a: *const u8,
    pub lda: usize,
    pub row_bytes: usize,
    pub m: usize,
    pub kb: usize,
    pub packed: bool,
}

// SAFETY: A is only read, by every packing job at once.
unsafe impl Sync for ASource {}

/// K tiles of one row group that one pool job copies into the panel: enough jobs for every
/// thread even where M has few row groups (128 rows are four).
const PACK_TILES: usize = 16;

/// Copies K tiles `t0 .. t1` of row group `g` of A into group slot `slot` of the panel at
/// `dst` (layout in the module header); each full 64-byte piece is one fixed-size copy.
///
/// # Safety
/// `src` describes readable memory with `row_bytes ≤ kb · 64` and `g < m.div_ceil(32)`; `dst`
/// holds at least `slot + 1` group slots of `kb` tiles, no other thread writes the part
/// written here.
unsafe fn pack_group(src: &ASource, dst: *mut u8, g: usize, slot: usize, t0: usize, t1: usize) {
    let (m, lda, row_bytes, kb) = (src.m, src.lda, src.row_bytes, src.kb);
    let rows = (m - 32 * g).min(32);
    for r in 0..rows {
        let row = src.a.add((32 * g + r) * lda);
        let mut out = dst.add(panel_offset(32 * slot + r, t0, kb));
        for t in t0..t1 {
            let n = row_bytes.saturating_sub(t * ROW).min(ROW);
            if n == ROW {
                (out as *mut [u8; ROW])
                    .write((row.add(t * ROW) as *const [u8; ROW]).read_unaligned());
            } else {
                if n > 0 {
                    std::ptr::copy_nonoverlapping(row.add(t * ROW), out, n);
                }
                std::ptr::write_bytes(out.add(n), 0, ROW - n);
            }
            out = out.add(A_STEP);
        }
    }
}

/// A's pass into the panel (the bf16 copy, or int8's quantization), cut into jobs that write
/// disjoint parts of it. Either a pool pass of its own runs them before the blocks
/// ([`APrep::run_all`], the default), or the blocks' items do, as they start
/// ([`APrep::ensure`], `TANDEM_AMX_PREP=items`): an item claims jobs from a counter until none
/// is left, then waits for the ones that other threads are running. A claimed job is running
/// on a thread that does nothing else until it ends, so the wait ends; and the pool is handed
/// work once a call instead of twice. On the GPU host the items' way measured 0.945× over int8
/// cells and 0.926× over bf16 ones (docs/BENCHMARKS.md, twentieth session): what A's pass
/// costs there is its writes (a separate pass of 66–77 µs on an int8 o product at 128 rows
/// does 30–40 µs of work a thread), not the hand-over.
pub(crate) struct APrep<'a> {
    jobs: usize,
    job: &'a (dyn Fn(usize) + Sync),
    next: AtomicUsize,
    done: AtomicUsize,
    /// Set where a job panicked, so that the threads waiting for it panic too (no hang).
    failed: AtomicBool,
}

impl<'a> APrep<'a> {
    /// `jobs` jobs of `job` (`job(j)` for every `j < jobs`, once each, on any thread).
    pub(crate) fn new(jobs: usize, job: &'a (dyn Fn(usize) + Sync)) -> Self {
        APrep {
            jobs,
            job,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// No jobs (A needs no pass).
    pub(crate) fn none() -> APrep<'static> {
        APrep::new(0, &|_| {})
    }

    /// Runs job `j`, its time booked as `PrepWork`.
    fn run_job(&self, j: usize) {
        let t = super::profile::Mark::now();
        (self.job)(j);
        t.add_to(super::profile::Field::PrepWork);
    }

    /// Runs every job now, on the pool (here where `serial`), and books the pass as `Prep`.
    pub(crate) fn run_all(&self, serial: bool) {
        let (t, f) = (super::profile::Mark::now(), super::profile::Faults::now());
        let job = |j: usize| self.run_job(j);
        if serial {
            (0..self.jobs).for_each(job);
        } else {
            platform::install(|| (0..self.jobs).into_par_iter().for_each(job));
        }
        self.next.store(self.jobs, Ordering::Relaxed);
        self.done.store(self.jobs, Ordering::Release);
        t.add_to(super::profile::Field::Prep);
        f.add_to(super::profile::Field::PrepFaults);
    }

    /// Returns once every job has run: claims and runs jobs while any is left, then waits for
    /// those that other threads are running (their writes are visible on return).
    pub(crate) fn ensure(&self) {
        if self.done.load(Ordering::Acquire) >= self.jobs {
            return;
        }
        let t = super::profile::Mark::now();
        loop {
            let j = self.next.fetch_add(1, Ordering::Relaxed);
            if j >= self.jobs {
                break;
            }
            // Marks the pass failed where the job unwinds, so that no thread waits for it.
            struct Failed<'f>(&'f AtomicBool);
            impl Drop for Failed<'_> {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        self.0.store(true, Ordering::Release);
                    }
                }
            }
            let _failed = Failed(&self.failed);
            self.run_job(j);
            self.done.fetch_add(1, Ordering::AcqRel);
        }
        platform::pool::spin_until(|| {
            self.done.load(Ordering::Acquire) >= self.jobs || self.failed.load(Ordering::Acquire)
        });
        assert!(
            !self.failed.load(Ordering::Acquire),
            "a job of the GEMM's pass over A panicked on another thread"
        );
        t.add_to(super::profile::Field::PrepItems);
    }
}

/// This thread's panel buffer for the next call: with two panels, the two alternate.
pub(crate) fn panel_key(
    kn: &Knobs,
    one: &'static std::thread::LocalKey<RefCell<Vec<Line>>>,
    two: &'static std::thread::LocalKey<RefCell<Vec<Line>>>,
) -> &'static std::thread::LocalKey<RefCell<Vec<Line>>> {
    thread_local! {
        static CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let n = CALLS.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    if kn.panels > 1 && n.is_multiple_of(2) {
        two
    } else {
        one
    }
}

/// Runs `f` with this thread's panel (layout in the module header; one of two, alternating,
/// with [`Knobs::panels`] 2) and the jobs that copy A into it ([`APrep`]), already run unless
/// the knobs put them in the items ([`Knobs::prep_in_items`]): one row group × up to
/// [`PACK_TILES`] K tiles a job, each full 64-byte piece one fixed-size copy (vector moves, no
/// `memcpy` call: the copy of a 2048 × 4096 A ran at about 5 GB/s a thread with one call per
/// piece).
///
/// # Safety
/// `src` describes readable memory (`m` rows of `row_bytes` at stride `lda`), and
/// `row_bytes ≤ kb · 64`; `f` reads the panel only after [`APrep::ensure`] (or where the jobs
/// ran already).
pub(crate) unsafe fn with_panel<R>(
    src: &ASource,
    kn: &Knobs,
    f: impl FnOnce(*const u8, &APrep) -> R,
) -> R {
    let bytes = panel_bytes(src.m, src.kb);
    crate::scratch::with_buf(panel_key(kn, &PANEL, &PANEL2), bytes / ROW, |buf| {
        let dst = SharedMut(buf.as_mut_ptr() as *mut u8);
        let (groups, kb) = (src.m.div_ceil(32), src.kb);
        let per_group = kb.div_ceil(PACK_TILES);
        let pack = |j: usize| {
            let (g, t0) = (j / per_group, (j % per_group) * PACK_TILES);
            // SAFETY: this job's (group, tiles) of the panel are its own; A as the caller says.
            pack_group(src, dst.get(), g, g, t0, (t0 + PACK_TILES).min(kb));
        };
        let prep = APrep::new(groups * per_group, &pack);
        if !kn.prep_in_items {
            prep.run_all(groups * kb < 64);
        }
        f(dst.get() as *const u8, &prep)
    })
}

/// The AMX GEMM on tiles `T`: A (`src`) copied into the panel, then the plan's blocks on the
/// pool, each block's accumulators (summed over K slices: i32 for `INT8`) handed to
/// `finish(item, acc)` (int8 dequantizes there) before the epilogue on `ep_tier`. Where `src`
/// is `packed` (in the panel's layout already), `a_prep` holds the jobs that write it (each
/// item ensures them before its kernel; see [`APrep`]).
///
/// # Safety
/// The arguments passed `check_args` (`src` is A of the weight `w`, `b` its first packed block,
/// blocks `b_stride` bytes apart), `m > 0`, the tiles `T` (with AMX-INT8 for `INT8` on `Hw`)
/// are usable on the pool's threads and `ep_tier` is available; a packed `src` holds A once
/// `a_prep` has run.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_amx<T: Tiles, O: OutElem, const INT8: bool>(
    ep_tier: CpuTier,
    kn: &Knobs,
    src: &ASource,
    w: &WeightShape,
    b: *const u8,
    b_stride: usize,
    out: &mut [O],
    ep: &Epilogue,
    a_prep: &APrep,
    finish: impl Fn(&Item, &mut [f32]) + Sync,
) {
    // The operands but the panel (a reference: closures on the pool capture the whole Sync
    // struct, not its raw-pointer fields).
    let base = &AmxOperands {
        panel: std::ptr::null(),
        row0: 0,
        al: ALayout::panel(src.kb),
        kb: src.kb,
        b,
        b_stride,
    };
    // A read in place (no panel) where the knob allows it for this A (see `ASrc`).
    let whole = src.row_bytes == src.kb * ROW;
    let lines = (src.a as usize).is_multiple_of(ROW) && src.lda.is_multiple_of(ROW);
    let direct = !src.packed
        && match kn.a_src {
            ASrc::Panel | ASrc::Copy => false,
            ASrc::Direct => whole,
            ASrc::Auto => whole && lines,
        };
    // SAFETY (both blocks below): the plan's blocks start on multiples of 32 rows
    // (Knobs::blocking) and stay inside M and the weight's blocks; c holds rows · (pb1 - pb0)
    // · 16; the panel holds the block's row groups from row `row0` (caller's contract for the
    // rest).
    // (int8's accumulators stay i32 until `finish`, once per block after the K slices' sums.)
    let block = |op: &AmxOperands, it: &Item, c: &mut [f32]| {
        let (m0, rows, pb0, pb1) = (it.m0, it.rows, it.pb0, it.pb1);
        let k = it.k.unwrap_or((0, op.kb));
        if kn.b_stationary && rows <= M_SMALL && rows.is_multiple_of(16) {
            gemm_block_amx_b1::<T, INT8>(op, m0, rows, pb0, pb1, k, c, kn);
        } else {
            gemm_block_amx::<T, INT8>(op, m0, rows, pb0, pb1, k, c, kn);
        }
    };
    // Order::RowsOwn: no shared panel, each block's rows packed by its thread (this call's
    // number tells a thread's panel of this call from one of an earlier call).
    let own = (kn.order == Order::RowsOwn && src.m > M_SMALL && !direct && !src.packed)
        .then(|| OWN_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
    let blocks = |shared: AmxOperands, prep: &APrep| {
        let shared = &shared;
        run(
            ep_tier,
            kn.blocking(src.m, src.m * src.row_bytes, src.kb),
            src.m,
            w,
            out,
            ep,
            if INT8 { Partials::I32 } else { Partials::F32 },
            |it, c| {
                prep.ensure();
                match own {
                    Some(call) => with_own_panel(src, call, it.m0, it.rows, |panel| {
                        let op = AmxOperands {
                            panel,
                            row0: it.m0,
                            ..*shared
                        };
                        block(&op, it, c)
                    }),
                    None => block(shared, it, c),
                }
            },
            finish,
        )
    };
    let none = APrep::none();
    match own {
        _ if src.packed => blocks(
            AmxOperands {
                panel: src.a,
                ..*base
            },
            a_prep,
        ),
        _ if direct => blocks(
            AmxOperands {
                panel: src.a,
                al: ALayout::direct(src.lda),
                ..*base
            },
            &none,
        ),
        Some(_) => blocks(*base, &none),
        None => with_panel(src, kn, |panel, prep| {
            blocks(AmxOperands { panel, ..*base }, prep)
        }),
    }
}

thread_local! {
    /// A pool thread's own panel ([`Order::RowsOwn`]): the call and the first row it holds.
    static OWN: RefCell<(u64, usize, Vec<Line>)> = const { RefCell::new((0, 0, Vec::new())) };
}

/// Calls of [`gemm_amx`] with [`Order::RowsOwn`] so far: a thread's own panel is reused only
/// within one call (A may change between calls at the same address).
static OWN_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs `f` with rows `m0 .. m0 + rows` of A in this thread's own panel ([`Order::RowsOwn`]:
/// no shared panel), packed unless the panel already holds them from this `call` (the row
/// order hands a thread runs of blocks with the same rows), so that each line of A is written
/// and read by one core.
///
/// # Safety
/// As [`with_panel`], and `m0` is a multiple of 32 with `m0 + rows ≤ src.m`.
unsafe fn with_own_panel<R>(
    src: &ASource,
    call: u64,
    m0: usize,
    rows: usize,
    f: impl FnOnce(*const u8) -> R,
) -> R {
    let groups = rows.div_ceil(32);
    let need = groups * src.kb * A_STEP / ROW;
    let body = |own: &mut (u64, usize, Vec<Line>)| {
        if own.0 != call || own.1 != m0 || own.2.len() < need {
            if own.2.len() < need {
                own.2.resize(need, Line::default());
            }
            let dst = own.2.as_mut_ptr() as *mut u8;
            for gl in 0..groups {
                // SAFETY: the thread's own buffer holds `groups` slots; A as the caller says.
                unsafe { pack_group(src, dst, m0 / 32 + gl, gl, 0, src.kb) };
            }
            (own.0, own.1) = (call, m0);
        }
        f(own.2.as_ptr() as *const u8)
    };
    OWN.with(|cell| match cell.try_borrow_mut() {
        Ok(mut own) => body(&mut own),
        Err(_) => body(&mut (0, 0, Vec::new())),
    })
}

/// Where a block kernel finds its operands.
#[derive(Clone, Copy)]
pub(crate) struct AmxOperands {
    /// A from row `row0`, laid out as `al` says: the A panel (see the module header; `row0` 0
    /// for the shared panel of all of M, the block's first row for a thread's own panel), or A
    /// itself in place (`row0` 0); and the K tiles of a row.
    pub panel: *const u8,
    pub row0: usize,
    pub al: ALayout,
    pub kb: usize,
    /// The first packed block of the weight, and the bytes from one block to the next.
    pub b: *const u8,
    pub b_stride: usize,
}

// SAFETY: the operands are only read, by every block at once.
unsafe impl Sync for AmxOperands {}

/// A palette-1 configuration for a row group of `r0` + `r1` rows (`r1` may be 0).
fn config(r0: usize, r1: usize) -> TileConfig {
    let r1 = if r1 > 0 { r1 } else { r0 };
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

/// `C += A · B` on tiles `C`, `A`, `B`: `tdpbssd` for int8, `tdpbf16ps` for bf16.
#[inline(always)]
pub(crate) unsafe fn dp<T: Tiles, const INT8: bool, const C: u8, const A: u8, const B: u8>() {
    if INT8 {
        T::dp_ssd::<C, A, B>()
    } else {
        T::dp_bf16::<C, A, B>()
    }
}

/// `prefetcht0` (`L2`: `prefetcht1`) of `lines` cache lines from `p` (a hint: never faults,
/// any address).
#[inline(always)]
fn prefetch<const L2: bool>(p: *const u8, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in 0..lines {
        let q = p.wrapping_add(i * ROW) as *const i8;
        // SAFETY: prefetch does not access memory architecturally; SSE is baseline on x86-64.
        unsafe {
            if L2 {
                _mm_prefetch::<_MM_HINT_T1>(q)
            } else {
                _mm_prefetch::<_MM_HINT_T0>(q)
            }
        };
    }
}

/// Prefetch distances (K steps, 0: none) of one micro-kernel call: A and B into L1, into L2.
#[derive(Clone, Copy)]
pub(crate) struct Prefetch {
    pub a: usize,
    pub b: usize,
    pub a2: usize,
    pub b2: usize,
    /// [`Knobs::t1`].
    pub t1: u8,
    /// Steps from the call's first one past which nothing is prefetched (see
    /// [`prefetch_end`]; `usize::MAX`: no limit).
    pub end: usize,
}

impl Default for Prefetch {
    /// No prefetch, and no limit.
    fn default() -> Self {
        Prefetch {
            a: 0,
            b: 0,
            a2: 0,
            b2: 0,
            t1: 0,
            end: usize::MAX,
        }
    }
}

/// How a block kernel finds A: the tile of a 32-row group's first 16 rows at K step `s` is at
/// `group_base + s · step`, its rows `stride` bytes apart, the group's other 16 rows `half`
/// bytes further, and group `g` `g · group` bytes past group 0.
#[derive(Clone, Copy)]
pub(crate) struct ALayout {
    pub stride: usize,
    pub step: usize,
    pub half: usize,
    pub group: usize,
}

impl ALayout {
    /// The A panel of `kb` K tiles a group (the module header's layout).
    pub(crate) fn panel(kb: usize) -> Self {
        ALayout {
            stride: ROW,
            step: A_STEP,
            half: TILE_BYTES,
            group: kb * A_STEP,
        }
    }

    /// A in place, rows `lda` bytes apart, each tile row 64 bytes of one row.
    fn direct(lda: usize) -> Self {
        ALayout {
            stride: lda,
            step: ROW,
            half: 16 * lda,
            group: 32 * lda,
        }
    }

    /// Row `r` (0..32) of the group's tile at `a`.
    #[inline(always)]
    fn row(&self, a: *const u8, r: usize) -> *const u8 {
        a.wrapping_add((r / 16) * self.half + (r % 16) * self.stride)
    }
}

/// `steps` K steps of the micro-kernel on tmm0–3 (tmm0–1 only unless `TWO`, the group has a
/// second 16 rows): A from `a` as `al` lays it out, B from `b0` and `b1` (1 KiB per step).
#[inline(always)]
pub(crate) unsafe fn micro<T: Tiles, const INT8: bool, const TWO: bool>(
    a: *const u8,
    al: ALayout,
    b0: *const u8,
    b1: *const u8,
    steps: usize,
    pf: Prefetch,
) {
    let a_rows = if TWO { 32 } else { 16 };
    for s in 0..steps {
        let (a, b0, b1) = (
            a.add(s * al.step),
            b0.add(s * TILE_BYTES),
            b1.add(s * TILE_BYTES),
        );
        if pf.t1 & 1 != 0 {
            T::load_t1::<4>(a, al.stride);
        } else {
            T::load::<4>(a, al.stride);
        }
        if pf.t1 & 2 != 0 {
            T::load_t1::<6>(b0, ROW);
        } else {
            T::load::<6>(b0, ROW);
        }
        dp::<T, INT8, 0, 4, 6>();
        if pf.t1 & 2 != 0 {
            T::load_t1::<7>(b1, ROW);
        } else {
            T::load::<7>(b1, ROW);
        }
        dp::<T, INT8, 1, 4, 7>();
        if TWO {
            if pf.t1 & 1 != 0 {
                T::load_t1::<5>(a.add(al.half), al.stride);
            } else {
                T::load::<5>(a.add(al.half), al.stride);
            }
            dp::<T, INT8, 2, 5, 6>();
            dp::<T, INT8, 3, 5, 7>();
        }
        if pf.b > 0 {
            prefetch::<false>(b0.wrapping_add(pf.b * TILE_BYTES), 16);
            prefetch::<false>(b1.wrapping_add(pf.b * TILE_BYTES), 16);
        }
        if pf.a > 0 {
            prefetch_a::<false>(a.wrapping_add(pf.a * al.step), &al, a_rows);
        }
        if pf.b2 > 0 && s + pf.b2 < pf.end {
            prefetch::<true>(b0.wrapping_add(pf.b2 * TILE_BYTES), 16);
            prefetch::<true>(b1.wrapping_add(pf.b2 * TILE_BYTES), 16);
        }
        if pf.a2 > 0 && s + pf.a2 < pf.end {
            prefetch_a::<true>(a.wrapping_add(pf.a2 * al.step), &al, a_rows);
        }
    }
}

/// The K tile from which an item covering tiles `.. k1` of `kb` prefetches nothing: the end of
/// its K slice, whose next tiles belong to another item; none where it runs to the end of K,
/// whose next lines start the neighbouring block's.
fn prefetch_end(k1: usize, kb: usize) -> usize {
    if k1 < kb {
        k1
    } else {
        usize::MAX
    }
}

/// [`prefetch`] of the first `rows` rows of the A tile(s) at `a` (one 64-byte line a row).
#[inline(always)]
fn prefetch_a<const L2: bool>(a: *const u8, al: &ALayout, rows: usize) {
    for r in 0..rows {
        prefetch::<L2>(al.row(a, r), 1);
    }
}

/// Accumulators (f32 for bf16, i32 bits for int8) of rows `m0 .. m0 + rows` × packed blocks
/// `pb0..pb1` over K tiles `k0 .. k1`, into `c` (row stride `(pb1 - pb0) · 16`).
///
/// # Safety
/// The tiles `T` models are usable on this thread (AMX, and AMX-INT8 for `INT8`, for `Hw`);
/// `m0` is a multiple of 32; `op` describes a panel of at least `m0 + rows` rows and a weight
/// with blocks up to `pb1`; `k0 < k1 ≤ op.kb`; `c` holds `rows · (pb1 - pb0) · 16` elements.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_block_amx<T: Tiles, const INT8: bool>(
    op: &AmxOperands,
    m0: usize,
    rows: usize,
    pb0: usize,
    pb1: usize,
    (k0, k1): (usize, usize),
    c: &mut [f32],
    kn: &Knobs,
) {
    debug_assert_eq!(m0 % 32, 0);
    debug_assert!(k0 < k1 && k1 <= op.kb);
    let ldc = (pb1 - pb0) * BLOCK_N;
    let ldc_bytes = ldc * 4;
    let kc = kn.kc.max(1);
    let rows_outer = kn.rows_outer(rows);
    let groups = rows.div_ceil(32);
    let pairs = (pb1 - pb0).div_ceil(2);
    let cbase = c.as_mut_ptr() as *mut u8;
    let pf_end = prefetch_end(k1, op.kb);
    let mut configured = None;
    for kc0 in (k0..k1).step_by(kc) {
        let steps = (kc0 + kc).min(k1) - kc0;
        for i in 0..pairs * groups {
            let (pi, g) = if rows_outer {
                (i % pairs, i / pairs)
            } else {
                (i / groups, i % groups)
            };
            let mp = 32 * g;
            let r0 = (rows - mp).min(16);
            let r1 = (rows - mp - r0).min(16);
            if configured != Some((r0, r1)) {
                T::config(&config(r0, r1));
                configured = Some((r0, r1));
            }
            let np = pb0 + 2 * pi;
            let two_cols = np + 1 < pb1;
            let b0 = op.b.add(np * op.b_stride + kc0 * TILE_BYTES);
            let b1 = if two_cols { b0.add(op.b_stride) } else { b0 };
            let a = op
                .panel
                .add(((m0 - op.row0) / 32 + g) * op.al.group + kc0 * op.al.step);
            // SAFETY (C tiles): inside the scratch (rows × ldc); only the ones this group and
            // pair own are loaded or stored.
            let c00 = cbase.add((mp * ldc + (np - pb0) * BLOCK_N) * 4);
            let c01 = c00.wrapping_add(BLOCK_N * 4);
            let c10 = c00.wrapping_add(16 * ldc_bytes);
            let c11 = c10.wrapping_add(BLOCK_N * 4);
            let two_rows = r1 > 0;
            if kc0 == k0 {
                T::zero::<0>();
                T::zero::<1>();
                T::zero::<2>();
                T::zero::<3>();
            } else {
                T::load::<0>(c00, ldc_bytes);
                if two_cols {
                    T::load::<1>(c01, ldc_bytes);
                }
                if two_rows {
                    T::load::<2>(c10, ldc_bytes);
                    if two_cols {
                        T::load::<3>(c11, ldc_bytes);
                    }
                }
            }
            let pf = Prefetch {
                a: kn.pf_a,
                b: kn.pf_b,
                a2: if pi == 0 { kn.pf_a2 } else { 0 },
                b2: if g == 0 { kn.pf_b2 } else { 0 },
                t1: kn.t1,
                end: pf_end - kc0,
            };
            if two_rows {
                micro::<T, INT8, true>(a, op.al, b0, b1, steps, pf);
            } else {
                micro::<T, INT8, false>(a, op.al, b0, b1, steps, pf);
            }
            T::store::<0>(c00, ldc_bytes);
            if two_cols {
                T::store::<1>(c01, ldc_bytes);
            }
            if two_rows {
                T::store::<2>(c10, ldc_bytes);
                if two_cols {
                    T::store::<3>(c11, ldc_bytes);
                }
            }
        }
    }
    T::release();
}

/// The B-stationary block kernel (`TANDEM_AMX_SMALL=b1`) for blocks of 16, 32, 48 or 64 rows,
/// the decode GEMMs of batches up to 64 with weights from DRAM. Tile allocation (palette 1,
/// every tile 16 rows × 64 bytes):
///
/// ```text
/// tmm0..tmm3  C rows 0..16, 16..32, 32..48, 48..64 of one 16-column block   f32|i32
/// tmm4..tmm6  A rows of C tile i in tmm(4 + i mod 3) (C tile 3 reuses tmm4)
/// tmm7        B: one K tile of the column block
/// ```
///
/// Per K step one B tile is loaded and used by every row tile, so each weight byte is loaded
/// from memory once and never again from L2 (the 2 × 2 [`micro`] loads a pair's B tiles once
/// per 32-row group), at the price of one A load per product. Within a K chunk the block's
/// column blocks run one after another over the same chunk of A (rows × chunk × 64 bytes:
/// 32 KiB for 64 rows and chunks of 8), which stays in L1 while the B tiles stream; C goes to
/// the block's scratch between chunks, as in [`gemm_block_amx`].
///
/// # Safety
/// As [`gemm_block_amx`], and `rows` is 16, 32, 48 or 64.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_block_amx_b1<T: Tiles, const INT8: bool>(
    op: &AmxOperands,
    m0: usize,
    rows: usize,
    pb0: usize,
    pb1: usize,
    (k0, k1): (usize, usize),
    c: &mut [f32],
    kn: &Knobs,
) {
    debug_assert!(m0.is_multiple_of(32) && rows.is_multiple_of(16) && (16..=64).contains(&rows));
    debug_assert!(k0 < k1 && k1 <= op.kb);
    let ldc_bytes = (pb1 - pb0) * BLOCK_N * 4;
    let kc = kn.kc.max(1);
    let tiles = rows / 16;
    let mut cfg = TileConfig::palette1();
    for t in 0..8 {
        cfg.set(t, 16, 64);
    }
    T::config(&cfg);
    let cbase = c.as_mut_ptr() as *mut u8;
    let pf_end = prefetch_end(k1, op.kb);
    // A tile i of K step k: 32-row group i / 2, its half i % 2.
    let al = op.al;
    let a_tile = |i: usize, k: usize| {
        op.panel
            .add(((m0 - op.row0) / 32 + i / 2) * al.group + k * al.step + (i % 2) * al.half)
    };
    for kc0 in (k0..k1).step_by(kc) {
        let kend = (kc0 + kc).min(k1);
        for nb in pb0..pb1 {
            let b = op.b.add(nb * op.b_stride);
            // SAFETY (C tiles): tile i is rows 16i.. of the scratch, the block's column nb.
            let ct = |i: usize| cbase.add(16 * i * ldc_bytes + (nb - pb0) * BLOCK_N * 4);
            if kc0 == k0 {
                T::zero::<0>();
                T::zero::<1>();
                T::zero::<2>();
                T::zero::<3>();
            } else {
                c_tiles::<T, false>(tiles, &ct, ldc_bytes);
            }
            for k in kc0..kend {
                let bk = b.add(k * TILE_BYTES);
                T::load::<7>(bk, ROW);
                if kn.pf_b > 0 {
                    prefetch::<false>(bk.wrapping_add(kn.pf_b * TILE_BYTES), 16);
                }
                if kn.pf_b2 > 0 && k + kn.pf_b2 < pf_end {
                    prefetch::<true>(bk.wrapping_add(kn.pf_b2 * TILE_BYTES), 16);
                }
                T::load::<4>(a_tile(0, k), al.stride);
                dp::<T, INT8, 0, 4, 7>();
                if tiles > 1 {
                    T::load::<5>(a_tile(1, k), al.stride);
                    dp::<T, INT8, 1, 5, 7>();
                }
                if tiles > 2 {
                    T::load::<6>(a_tile(2, k), al.stride);
                    dp::<T, INT8, 2, 6, 7>();
                }
                if tiles > 3 {
                    T::load::<4>(a_tile(3, k), al.stride);
                    dp::<T, INT8, 3, 4, 7>();
                }
            }
            c_tiles::<T, true>(tiles, &ct, ldc_bytes);
        }
    }
    T::release();
}

/// Loads C tiles tmm0 .. tmm(n − 1) from `at(i)` (`STORE`: stores them there), row stride
/// `stride` bytes.
#[inline(always)]
unsafe fn c_tiles<T: Tiles, const STORE: bool>(
    n: usize,
    at: &impl Fn(usize) -> *mut u8,
    stride: usize,
) {
    #[inline(always)]
    unsafe fn one<T: Tiles, const I: u8, const STORE: bool>(p: *mut u8, stride: usize) {
        if STORE {
            T::store::<I>(p, stride)
        } else {
            T::load::<I>(p, stride)
        }
    }
    one::<T, 0, STORE>(at(0), stride);
    if n > 1 {
        one::<T, 1, STORE>(at(1), stride);
    }
    if n > 2 {
        one::<T, 2, STORE>(at(2), stride);
    }
    if n > 3 {
        one::<T, 3, STORE>(at(3), stride);
    }
}
