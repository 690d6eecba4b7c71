//! bf16 GEMM `C[M, N] = A[M, K] · Wᵀ` over a prepacked weight, f32 accumulation, fused
//! epilogues, on the best CPU tier (AMX, AVX512-BF16, AVX-512F, AVX2, scalar).
//!
//! Work split (all tiers): the output is cut into blocks of `rows × cols` (rows up to
//! [`M_BLOCK`], cols a whole number of packed 16-column blocks); the blocks are spread over the
//! shared pinned pool. Each block's kernel writes raw f32 accumulators into a per-thread scratch
//! (grown once, then reused: no allocation on the hot path), and the epilogue turns them into
//! output. For small M (decode) a block spans all rows and the column blocks are cut so that
//! every thread streams its own contiguous slice of the packed weight. The AMX tier may also cut
//! K into slices (`SplitK`, `TANDEM_AMX_KSPLIT`): a block's slices run as separate items, each
//! writing its partial sums into its own slot, and the last one to finish adds them (int8: as
//! i32, dequantized once) before the epilogue.

/// Calls `$micro::<MR, NR>($args)` for runtime `mr`, `nr` in 1..=4.
macro_rules! dispatch_micro {
    ($micro:ident, $mr:expr, $nr:expr, ($($arg:expr),*)) => {
        match ($mr, $nr) {
            (1, 1) => $micro::<1, 1>($($arg),*),
            (1, 2) => $micro::<1, 2>($($arg),*),
            (1, 3) => $micro::<1, 3>($($arg),*),
            (1, _) => $micro::<1, 4>($($arg),*),
            (2, 1) => $micro::<2, 1>($($arg),*),
            (2, 2) => $micro::<2, 2>($($arg),*),
            (2, 3) => $micro::<2, 3>($($arg),*),
            (2, _) => $micro::<2, 4>($($arg),*),
            (3, 1) => $micro::<3, 1>($($arg),*),
            (3, 2) => $micro::<3, 2>($($arg),*),
            (3, 3) => $micro::<3, 3>($($arg),*),
            (3, _) => $micro::<3, 4>($($arg),*),
            (_, 1) => $micro::<4, 1>($($arg),*),
            (_, 2) => $micro::<4, 2>($($arg),*),
            (_, 3) => $micro::<4, 3>($($arg),*),
            (_, _) => $micro::<4, 4>($($arg),*),
        }
    };
}

mod amx_bf16;
mod amx_tiles;
mod avx2_bf16;
mod avx2_int8;
mod avx512_bf16;
mod avx512bf16_bf16;
mod avx512vnni_int8;
pub mod ceiling;
mod epilogue;
mod int8;
mod pack;
mod pack_int8;
pub mod profile;
mod reference;
mod scalar_bf16;
mod scalar_int8;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};

use half::bf16;
use platform::CpuTier;
use rayon::prelude::*;

pub use epilogue::{Activation, Epilogue, OutElem, Residual};
pub use int8::{gemm_int8, gemm_int8_on};
pub use pack::{PackedWeight, WeightKind, BLOCK_K, BLOCK_N};
pub use pack_int8::{quantize_row_int8, PackedWeightI8, BLOCK_K_INT8};
pub use reference::{gemm_bf16_ref, gemm_int8_ref};

use crate::tile_ops::Hw;
use crate::{check_len, Error, Result};

/// Rows of one work block when M is large: with [`N_BLOCK_MAX`] columns, the A panel and the B
/// panel of one K chunk stay in L2 together.
pub const M_BLOCK: usize = 128;
/// Up to this many rows, one block spans all of M and the columns are split instead.
pub const M_SMALL: usize = 64;
/// Packed column blocks (of 16) per work block when M is large.
pub const N_BLOCK_MAX: usize = 8;

/// One tier's block kernel: raw f32 accumulators of rows `m0 .. m0 + rows` and packed column
/// blocks `pb0 .. pb1`, into `c` (row stride `(pb1 - pb0) · 16`).
///
/// Safety contract (checked by [`gemm_bf16`] before any kernel runs): `a` holds `M × K` with
/// `K = w.k()`, `m0 + rows ≤ M`, `pb0 < pb1 ≤ w.nblocks`, `c.len() ≥ rows · (pb1 - pb0) · 16`,
/// and the tier is available on this CPU.
pub(crate) type BlockKernel = unsafe fn(
    a: &[bf16],
    m0: usize,
    rows: usize,
    w: &PackedWeight,
    pb0: usize,
    pb1: usize,
    c: &mut [f32],
);

/// The block kernel of a SIMD tier (AMX runs [`amx_bf16::gemm_amx_bf16`] instead).
fn kernel_for(tier: CpuTier) -> BlockKernel {
    match tier {
        CpuTier::Amx => unreachable!("the AMX tier has its own driver"),
        CpuTier::Avx512Bf16 => avx512bf16_bf16::gemm_block_avx512bf16_bf16,
        CpuTier::Avx512 => avx512_bf16::gemm_block_avx512_bf16,
        CpuTier::Avx2 => avx2_bf16::gemm_block_avx2_bf16,
        CpuTier::Scalar => scalar_bf16::gemm_block_scalar_bf16,
    }
}

/// `out[M, out_cols] = epilogue(A[M, K] · Wᵀ)` on the tier chosen by `platform::cpu_tier()`.
///
/// `a` is row-major `[m, k]`; `out` is row-major `[m, w.n()]` (or `[m, w.n() / 2]` with
/// [`Activation::SiluMul`]), f32 or bf16. Shapes, lengths and the epilogue's operands are
/// checked; a mismatch is an error naming it.
pub fn gemm_bf16<O: OutElem>(
    a: &[bf16],
    m: usize,
    k: usize,
    w: &PackedWeight,
    out: &mut [O],
    ep: Epilogue,
) -> Result<()> {
    gemm_bf16_on(platform::cpu_tier(), a, m, k, w, out, ep)
}

/// [`gemm_bf16`] on an explicit tier (tests and benches); an error if this CPU cannot run it.
pub fn gemm_bf16_on<O: OutElem>(
    tier: CpuTier,
    a: &[bf16],
    m: usize,
    k: usize,
    w: &PackedWeight,
    out: &mut [O],
    ep: Epilogue,
) -> Result<()> {
    if !tier.available() {
        return Err(Error::Unsupported {
            needed: tier.name(),
            have: platform::cpu_caps().best_tier(),
        });
    }
    let shape = w.shape();
    check_args(a, m, k, &shape, out.len(), &ep)?;
    if m == 0 {
        return Ok(());
    }
    if tier == CpuTier::Amx {
        let kn = amx_tiles::Knobs::get();
        // SAFETY: check_args passed, m > 0, AMX is available (checked above) on every thread.
        unsafe { amx_bf16::gemm_amx_bf16::<Hw, O>(tier, kn, a, m, w, out, &ep) };
        return Ok(());
    }
    let kernel = kernel_for(tier);
    // SAFETY: check_args validated A against the weight and M; the plan keeps m0 + rows ≤ M and
    // pb0 < pb1 ≤ nblocks; run hands over rows · (pb1 - pb0) · 16 accumulators; the tier was
    // checked available above.
    run(
        tier,
        Blocking::SIMD,
        m,
        &shape,
        out,
        &ep,
        Partials::F32,
        |it, c| unsafe { kernel(a, it.m0, it.rows, w, it.pb0, it.pb1, c) },
        |_, _| {},
    );
    Ok(())
}

/// Checks every operand of a GEMM call against the weight.
pub(crate) fn check_args(
    a: &[bf16],
    m: usize,
    k: usize,
    w: &WeightShape,
    out_len: usize,
    ep: &Epilogue,
) -> Result<()> {
    if k != w.k {
        return Err(Error::Shape(format!(
            "gemm: A has K = {k} columns but the weight has K = {}",
            w.k
        )));
    }
    let mk = m
        .checked_mul(k)
        .ok_or_else(|| Error::Shape(format!("gemm: M·K = {m}·{k} overflows")))?;
    check_len("gemm: A[m, k]", mk, a.len())?;
    match (ep.activation, w.kind) {
        (Activation::SiluMul, WeightKind::Plain) => {
            return Err(Error::Shape(
                "gemm: SiLU·mul needs a fused gate/up weight (PackedWeight::from_bf16_gate_up)"
                    .into(),
            ))
        }
        (Activation::None | Activation::Relu, WeightKind::GateUp { .. }) => {
            return Err(Error::Shape(
                "gemm: a gate/up weight is only used with the SiLU·mul epilogue".into(),
            ))
        }
        _ => {}
    }
    let mn = m * w.out_cols();
    check_len("gemm: out[m, out_cols]", mn, out_len)?;
    if let Some(b) = ep.bias {
        check_len("gemm: bias[n]", w.n, b.len())?;
    }
    match ep.residual {
        Residual::Bf16(r) => check_len("gemm: residual[m, out_cols]", mn, r.len())?,
        Residual::F32(r) => check_len("gemm: residual[m, out_cols]", mn, r.len())?,
        Residual::None | Residual::Output => {}
    }
    Ok(())
}

/// The largest work block when M > [`M_SMALL`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Blocking {
    /// Rows of a block.
    pub m_block: usize,
    /// Most packed column blocks of a block (even).
    pub n_block_max: usize,
    /// Packed column blocks of a block when M ≤ [`M_SMALL`], where set (even); otherwise the
    /// plan sizes them for eight items a thread.
    pub n_block_small: Option<usize>,
    /// The order of the items (see [`Order`]).
    pub order: Order,
    /// K cut into slices (the AMX tier only; `None`: every item takes all of K).
    pub split: Option<SplitK>,
}

/// Cutting K into slices, so that a product with few column blocks still gives every thread
/// many items, and one with a long K keeps each item's part of A in a core's L2: item `i`
/// computes its block over one K slice, and the last of a block's slices to finish adds them
/// (in slice order, so the sum does not depend on which finished last) and runs the epilogue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SplitK {
    /// K tiles of the weight, and the tiles of one granule (a K chunk): slices are whole
    /// granules.
    pub kb: usize,
    pub chunk: usize,
    /// Slices asked for; 0: the automatic rule (below).
    pub slices: usize,
    /// Bytes of A; where M ≤ [`M_SMALL`], enough slices that each holds at most `a_max` of them.
    pub a_bytes: usize,
    pub a_max: usize,
    /// Where M > [`M_SMALL`], enough slices that every thread has at least `items` items.
    pub items: usize,
}

/// Most K slices of one product.
const MAX_SLICES: usize = 8;

/// The order in which the pool takes a plan's items. The pool hands each thread a contiguous
/// run of items first, so the order decides what a thread's items share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Column strip by column strip, every row block of a strip in turn: a thread's items
    /// share one weight strip, and all threads walk the row blocks (A) in step.
    Columns,
    /// Row block by row block: a thread's items share one block of A and stream the weight.
    Rows,
    /// As `Columns`, each strip starting at a different row block (strip `s` at `s mod
    /// m_items`), so that threads do not read the same rows of A at the same time.
    Skewed,
    /// As `Rows`, and (the AMX tier, M > [`M_SMALL`]) each thread packs the rows of A it uses
    /// into its own panel instead of all threads reading one shared panel.
    RowsOwn,
}

impl Blocking {
    /// The SIMD tiers' blocks ([`M_BLOCK`] × [`N_BLOCK_MAX`]).
    pub(crate) const SIMD: Blocking = Blocking {
        m_block: M_BLOCK,
        n_block_max: N_BLOCK_MAX,
        n_block_small: None,
        order: Order::Columns,
        split: None,
    };
}

/// One item of a [`Plan`]: rows `m0 .. m0 + rows`, packed blocks `pb0 .. pb1`, and the K tiles
/// `k.0 .. k.1` where K is sliced (`None`: all of K).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    pub m0: usize,
    pub rows: usize,
    pub pb0: usize,
    pub pb1: usize,
    pub k: Option<(usize, usize)>,
}

/// How the output is cut into blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    m: usize,
    m_block: usize,
    m_items: usize,
    /// Packed column blocks per item (even: AMX takes them in pairs, gate/up needs pairs).
    n_block: usize,
    n_items: usize,
    nblocks: usize,
    order: Order,
    /// K slices (1: none), the slices' granule in K tiles and the weight's K tiles.
    slices: usize,
    chunk: usize,
    kb: usize,
}

impl Plan {
    pub(crate) fn new(m: usize, nblocks: usize, threads: usize, b: Blocking) -> Self {
        let m_block = if m <= M_SMALL { m } else { b.m_block };
        let m_items = m.div_ceil(m_block);
        let pairs = nblocks.div_ceil(2);
        // Enough items for every thread to have two (balance), no wider than n_block_max when
        // the block is reused over many rows (L2), and whole pairs of blocks. Small M streams
        // the weight once and is bound by DRAM: eight items per thread there, so that a thread
        // slowed by its neighbours hands work to the others instead of leaving a tail.
        let per_thread = if m <= M_SMALL { 8 } else { 2 };
        let want_items = (per_thread * threads).div_ceil(m_items).max(1);
        let mut n_pairs = pairs.div_ceil(want_items).max(1);
        if m > M_SMALL {
            n_pairs = n_pairs.min(b.n_block_max / 2).max(1);
        } else if let Some(nb) = b.n_block_small {
            n_pairs = (nb / 2).max(1);
        }
        let n_block = 2 * n_pairs;
        let n_items = nblocks.div_ceil(n_block);
        let (slices, chunk, kb) = match b.split {
            None => (1, 1, 0),
            Some(sp) => {
                let chunk = sp.chunk.max(1);
                let want = if sp.slices > 0 {
                    sp.slices
                } else {
                    // M ≤ M_SMALL streams the weight once: slices for A's sake only (more
                    // items made out, 224 one-pair blocks, slower there); above, the blocks
                    // reuse A and need items enough to balance the threads.
                    if m <= M_SMALL {
                        sp.a_bytes.div_ceil(sp.a_max.max(1))
                    } else {
                        (sp.items * threads).div_ceil(m_items * n_items)
                    }
                };
                (
                    want.min(sp.kb.div_ceil(chunk)).clamp(1, MAX_SLICES),
                    chunk,
                    sp.kb,
                )
            }
        };
        Plan {
            m,
            m_block,
            m_items,
            n_block,
            n_items,
            nblocks,
            order: b.order,
            slices,
            chunk,
            kb,
        }
    }

    pub(crate) fn items(&self) -> usize {
        self.blocks() * self.slices
    }

    /// Output blocks (items of one K slice).
    pub(crate) fn blocks(&self) -> usize {
        self.m_items * self.n_items
    }

    /// K slices of every block (1: K is not sliced).
    pub(crate) fn slices(&self) -> usize {
        self.slices
    }

    /// f32 elements of one block's accumulators at most (a K slice's partial sums).
    pub(crate) fn block_len(&self) -> usize {
        self.m_block.min(self.m) * self.n_block * BLOCK_N
    }

    /// Item `i`'s output block and K slice: the slices outermost, so that the pool's runs of
    /// items share a slice (and its part of A).
    pub(crate) fn block_slice(&self, i: usize) -> (usize, usize) {
        (i % self.blocks(), i / self.blocks())
    }

    /// Item `i`, in the plan's [`Order`] within each K slice.
    pub(crate) fn item(&self, i: usize) -> Item {
        let (blk, s) = self.block_slice(i);
        let k = (self.slices > 1).then(|| {
            let granules = self.kb.div_ceil(self.chunk);
            let g0 = s * granules / self.slices;
            let g1 = (s + 1) * granules / self.slices;
            (g0 * self.chunk, (g1 * self.chunk).min(self.kb))
        });
        let i = blk;
        let (ni, mi) = match self.order {
            Order::Columns => (i / self.m_items, i % self.m_items),
            Order::Rows | Order::RowsOwn => (i % self.n_items, i / self.n_items),
            Order::Skewed => {
                let ni = i / self.m_items;
                (ni, (i + ni) % self.m_items)
            }
        };
        let m0 = mi * self.m_block;
        let pb0 = ni * self.n_block;
        Item {
            m0,
            rows: self.m_block.min(self.m - m0),
            pb0,
            pb1: (pb0 + self.n_block).min(self.nblocks),
            k,
        }
    }
}

/// Operands of one SIMD micro-kernel call: `mr` rows of A from `a` (row stride `k`), `nr`
/// packed column blocks from `b` (block stride `bs` elements), accumulators to `c` (row stride
/// `ldc`).
pub(crate) struct Micro {
    pub a: *const bf16,
    pub k: usize,
    pub b: *const bf16,
    pub bs: usize,
    pub c: *mut f32,
    pub ldc: usize,
}

/// Rows per SIMD micro-kernel call.
const SIMD_MR: usize = 4;

/// A SIMD tier's block kernel: the block walked in micro-tiles of up to [`SIMD_MR`] rows ×
/// `nr_max` packed column blocks, each handed to `micro(mr, nr, operands)`.
///
/// # Safety
/// The [`BlockKernel`] contract, and `micro` must be runnable on this CPU.
pub(crate) unsafe fn simd_block(
    a: &[bf16],
    m0: usize,
    rows: usize,
    w: &PackedWeight,
    pb0: usize,
    pb1: usize,
    c: &mut [f32],
    nr_max: usize,
    micro: unsafe fn(usize, usize, &Micro),
) {
    let ldc = (pb1 - pb0) * BLOCK_N;
    for nb0 in (pb0..pb1).step_by(nr_max) {
        let nr = (pb1 - nb0).min(nr_max);
        for r0 in (0..rows).step_by(SIMD_MR) {
            let p = Micro {
                a: a.as_ptr().add((m0 + r0) * w.k),
                k: w.k,
                b: w.block_ptr(nb0),
                bs: w.kb * pack::TILE_ELEMS,
                c: c.as_mut_ptr().add(r0 * ldc + (nb0 - pb0) * BLOCK_N),
                ldc,
            };
            micro((rows - r0).min(SIMD_MR), nr, &p);
        }
    }
}

/// Bits of the bf16 pair `A[2p], A[2p+1]` of one row as a little-endian u32 (even element in
/// the low half); past the end of an odd K, the missing element is zero.
///
/// # Safety
/// `row` points at `k` readable bf16 and `2p < k`.
#[inline(always)]
pub(crate) unsafe fn a_pair_bits(row: *const bf16, k: usize, p: usize) -> u32 {
    if 2 * p + 1 < k {
        (row.add(2 * p) as *const u32).read_unaligned()
    } else {
        row.add(2 * p).read().to_bits() as u32
    }
}

/// A pointer that several pool threads write through, each to its own rows × columns.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub *mut T);
// SAFETY: the items of a plan are disjoint, so no element is written by two threads.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

thread_local! {
    /// Per-thread f32 accumulators of one block: grown on first use, then reused.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a per-thread scratch of at least `len` f32 (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    crate::scratch::with_buf(&SCRATCH, len, |s| f(&mut s[..len]))
}

/// What the driver and the argument checks need to know of a packed weight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WeightShape {
    pub n: usize,
    pub k: usize,
    pub kind: WeightKind,
    pub nblocks: usize,
}

impl WeightShape {
    /// Output columns of a product with this weight.
    pub(crate) fn out_cols(&self) -> usize {
        match self.kind {
            WeightKind::Plain => self.n,
            WeightKind::GateUp { inter } => inter,
        }
    }
}

thread_local! {
    /// The calling thread's K-slice partial sums and per-block counts of a sliced product.
    static PARTIALS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SLICES_DONE: RefCell<Vec<AtomicU32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `n` counters at zero (this thread's, reused; private ones on re-entry).
fn with_counters<R>(n: usize, f: impl FnOnce(&[AtomicU32]) -> R) -> R {
    crate::scratch::with_buf(&SLICES_DONE, n, |v| {
        v[..n].iter().for_each(|c| c.store(0, Ordering::Relaxed));
        f(&v[..n])
    })
}

platform::tier_vectorized! {
    /// `c[i] += x[i]` on the widest vectors `tier` allows.
    fn add_assign(c: &mut [f32], x: &[f32]) {
        c.iter_mut().zip(x).for_each(|(c, x)| *c += x);
    }
}

platform::tier_vectorized! {
    /// `c[i] += x[i]` over i32 accumulators stored as bits in f32 slots (wrapping, as the
    /// tiles' own sums), on the widest vectors `tier` allows.
    fn add_assign_i32(c: &mut [f32], x: &[f32]) {
        c.iter_mut().zip(x).for_each(|(c, x)| {
            *c = f32::from_bits((c.to_bits() as i32).wrapping_add(x.to_bits() as i32) as u32)
        });
    }
}

/// How [`run`] hands its items to the pool's threads (`TANDEM_GEMM_SCHED`, read once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sched {
    /// rayon's splitting of the item range, with work stealing (`steal`, the default).
    Steal,
    /// Every thread started at once, each claiming the next item from a shared counter until
    /// none is left (`claim`): as even as the items are, with no chain of wake-ups. On the GPU
    /// host it kept the kernels busier (+0.02–0.06 of the pool's time) and the joins shorter,
    /// but was not faster (0.97× on int8 o and down, 1.01× bf16; docs/BENCHMARKS.md), and at 64
    /// rows it hands a thread items 16 apart rather than a contiguous run of weight columns.
    Claim,
}

fn sched() -> Sched {
    static S: std::sync::OnceLock<Sched> = std::sync::OnceLock::new();
    *S.get_or_init(|| {
        let choices = [("steal", Sched::Steal), ("claim", Sched::Claim)];
        platform::env::choice("TANDEM_GEMM_SCHED", &choices, Sched::Steal)
    })
}

/// Runs `body(i)` for every `i < items` on the pool, as [`sched`] says.
fn for_items(items: usize, body: impl Fn(usize) + Sync) {
    match sched() {
        Sched::Steal => platform::install(|| (0..items).into_par_iter().for_each(&body)),
        Sched::Claim => {
            let next = std::sync::atomic::AtomicUsize::new(0);
            platform::install(|| {
                platform::pool().broadcast(|_| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= items {
                        break;
                    }
                    body(i);
                })
            });
        }
    }
}

/// What a block's accumulators hold before `finish` (see [`run`]), and so how the K
/// slices' partial sums add up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Partials {
    /// f32 sums, added in slice order (the result does not depend on which slice finished last).
    F32,
    /// i32 sums as bits in the f32 slots (int8 before it is dequantized): added exactly, then
    /// finished (dequantized) once per block.
    I32,
}

/// Runs `kernel(item, acc)` for every item of the plan on the pool, then, once per block,
/// `finish(item, acc)` (int8 dequantizes there) and the epilogue into `out`. `kernel` must fill
/// `acc` (`rows × (pb1 - pb0)·16` slots) with the item's accumulators as `partials` says, over
/// its K slice where the plan slices K (see [`SplitK`]): the slices' partial sums are added
/// before `finish`, so that it runs once per block whatever the slices.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<O: OutElem>(
    tier: CpuTier,
    blocking: Blocking,
    m: usize,
    w: &WeightShape,
    out: &mut [O],
    ep: &Epilogue,
    partials: Partials,
    kernel: impl Fn(&Item, &mut [f32]) + Sync,
    finish: impl Fn(&Item, &mut [f32]) + Sync,
) {
    let plan = Plan::new(m, w.nblocks, platform::pool_threads(), blocking);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let gate_up = matches!(w.kind, WeightKind::GateUp { .. });
    let out_cols = w.out_cols();
    // Finishing and the epilogue of one block's summed accumulators.
    let epilogue = |it: &Item, c: &mut [f32]| {
        finish(it, c);
        let ldc = (it.pb1 - it.pb0) * BLOCK_N;
        let (col0, cols) = if gate_up {
            let c0 = it.pb0 / 2 * BLOCK_N;
            (c0, (it.pb1 / 2 * BLOCK_N).min(out_cols) - c0)
        } else {
            (
                it.pb0 * BLOCK_N,
                (it.pb1 * BLOCK_N).min(out_cols) - it.pb0 * BLOCK_N,
            )
        };
        let dst = epilogue::BlockDst {
            out: out_ptr.get(),
            out_cols,
            m0: it.m0,
            col0,
        };
        // SAFETY: out holds M · out_cols (checked); this block's epilogue runs once and owns
        // rows m0.. × its columns; the tier is available (checked by the caller).
        unsafe { epilogue::apply_on(tier, c, ldc, it.rows, cols, gate_up, w.n, ep, &dst) };
    };
    let items = plan.items();
    // TANDEM_AMX_PROFILE (see `profile`): this run's hand-over, and its items' span.
    let (t0, span, f0) = (
        profile::Mark::now(),
        profile::Span::new(),
        profile::Faults::now(),
    );
    if plan.slices() == 1 {
        let body = |i: usize| {
            span.start(&t0);
            let it = plan.item(i);
            with_scratch(it.rows * (it.pb1 - it.pb0) * BLOCK_N, |c| {
                let t = profile::Mark::now();
                kernel(&it, c);
                span.kernel(&t);
                let t = profile::Mark::now();
                epilogue(&it, c);
                t.add_to(profile::Field::Tail);
            });
            span.end(&t0);
        };
        if items == 1 {
            body(0);
        } else {
            for_items(items, body);
        }
        span.book(&t0, items);
        f0.add_to(profile::Field::RunFaults);
        return;
    }
    // K sliced: each item writes its partial sums straight into its slot; the block's last
    // slice to finish adds the other slots into slice 0's, in slice order, and finishes that.
    let (blocks, slices, slot) = (plan.blocks(), plan.slices(), plan.block_len());
    let add = match partials {
        Partials::F32 => add_assign,
        Partials::I32 => add_assign_i32,
    };
    crate::scratch::with_buf(&PARTIALS, slices * blocks * slot, |parts| {
        let parts = SharedMut(parts.as_mut_ptr());
        // SAFETY (callers): slot (s, blk) lies inside the slices · blocks · slot buffer.
        let slot_ptr = |s: usize, blk: usize| unsafe { parts.get().add((s * blocks + blk) * slot) };
        with_counters(blocks, |done| {
            let body = |i: usize| {
                span.start(&t0);
                let it = plan.item(i);
                let (blk, s) = plan.block_slice(i);
                let len = it.rows * (it.pb1 - it.pb0) * BLOCK_N;
                // SAFETY: slot (s, blk) is this item's alone until its count below, and
                // `len ≤ slot`.
                let mine = unsafe { std::slice::from_raw_parts_mut(slot_ptr(s, blk), len) };
                let t = profile::Mark::now();
                kernel(&it, mine);
                span.kernel(&t);
                // AcqRel: the slots written before every other slice's increment are visible
                // to the one that sees the count complete.
                if done[blk].fetch_add(1, Ordering::AcqRel) as usize + 1 < slices {
                    span.end(&t0);
                    return;
                }
                let t = profile::Mark::now();
                // SAFETY: every slice of this block has written its slot (the count), and
                // only this item touches them from here on.
                let sum = unsafe { std::slice::from_raw_parts_mut(slot_ptr(0, blk), len) };
                for s2 in 1..slices {
                    // SAFETY: as above; slot s2 ≠ slot 0.
                    let theirs = unsafe { std::slice::from_raw_parts(slot_ptr(s2, blk), len) };
                    add(tier, sum, theirs);
                }
                epilogue(&it, sum);
                t.add_to(profile::Field::Tail);
                span.end(&t0);
            };
            for_items(items, body);
        })
    });
    span.book(&t0, items);
    f0.add_to(profile::Field::RunFaults);
}

#[cfg(test)]
mod tests;
