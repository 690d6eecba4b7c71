//! The AMX tier of the paged decode segment: QKᵀ of each block on the tile unit, the online
//! softmax and PV on AVX-512, for one segment of one sequence over `nh` consecutive KV heads
//! (the same work, arguments and outputs as the ISPC segment function; see
//! kernels/paged_decode.ispc for the layouts). Written against [`Tiles`], so the same code runs
//! on the hardware ([`Hw`]) and, in tests, on the tile emulator ([`Emu`]) of machines without
//! AMX.
//!
//! Why this split: the ISPC build spends as many vector operations on QKᵀ (each K word widened,
//! 2·g FMAs, the per-token partial sums folded) as on PV. The tile unit takes QKᵀ off the vector
//! ports (four `tdpbf16ps` a block and KV head at d = 128), so that only PV's FMAs remain
//! there. PV stays on AVX-512 in f32: on tiles it needs the weights rounded to bf16, and the
//! earlier all-tile version of this tier ran at 36–43% of the read. On the GPU host this tier
//! is faster than the ISPC build at 8 query heads per KV head (60–70% of the read against
//! 49–58%) and slower at 4 and fewer (63–74% against 70–77% at 4): where the vector work is
//! small, the tile loads and products cost more than they save.
//!
//! Per block of 16 tokens, for each KV head `hh` of the call (query heads `g`, padded to `gp`
//! columns, `gp` = 4, 8 or 16; head_dim `d`, a multiple of 32):
//!
//! - `Sᵀ[16 tokens × gp] = K · Qᵀ`: K's rows as the cache stores them are the A tiles (16 tokens
//!   × 32 dims each, read in place: rows past the sequence's end only make their own rows of
//!   `Sᵀ` garbage, which the softmax masks), and Q, packed once per segment into VNNI pairs
//!   (`[16 dim pairs][gp][2]` per 32 dims, zero columns past `g`), the B tiles: `d / 32` products
//!   into one of four accumulators, stored to one of eight score slots in memory. The products
//!   run ahead of the vector work ([`Schedule`]: by default three (block, KV head) items'
//!   products at a time, one item ahead, `TANDEM_CPU_DECODE_AMX_LEAD`, 0 to 7;
//!   `TANDEM_CPU_DECODE_AMX_BURST`, 1 to 4, issues that many items' products together), so that
//!   a softmax reads scores stored long before (tile stores do not forward to later loads). The
//!   tile unit does not work beside PV for free: on the GPU host a core running 512-bit FMAs
//!   at full rate slows to about half speed while it also issues tile products, from a lower
//!   clock (2.35 → 1.77 GHz) and fewer FMAs a cycle, unless some 4,000 FMAs or more separate
//!   the products (amx-kernels' `amx_fma_overlap` bench group; docs/BENCHMARKS.md,
//!   twenty-fourth and twenty-fifth sessions), so the tier gains by the vector QKᵀ it removes,
//!   not by overlap. Bursts put
//!   several items' PV between two groups of products; a lead of a KV-head block or more reads
//!   K before the prefetch one block ahead has brought it (docs/BENCHMARKS.md, twenty-sixth
//!   session: on a 2-core AMX machine 1:3 beat 3:1 by 10 % at g = 8, and 4:4 did not; on the
//!   GPU host 1:3 beat it by 7 %, twenty-seventh session). A tile unit idle for 0.3–0.5 µs also
//!   makes the next burst wait some 250–290 ns, which 1:3 pays once every three items; a
//!   keep-alive product every few PV passes ([`Warm`], `TANDEM_CPU_DECODE_AMX_WARM`) pays it
//!   never, at the FMAs' cost, and lost to 1:3 on the GPU host.
//! - The online softmax of all `gp` columns at once on the `gp` vectors of `Sᵀ` (lane `l` of
//!   vector `j`: token `j·16/gp + l/gp`, head `l % gp`): max and sum over the vectors, then
//!   across the lane groups by 128/256-bit swaps; the running max and sum are vectors in the same
//!   lane pattern. The weights overwrite the scores.
//! - PV in passes of 8 heads × 1 chunk, then of up to 4 heads × 2 chunks (32 dims each) with
//!   the accumulators in registers across the block's valid tokens, each V word widened once
//!   (shift: even dim, mask: odd dim) for all heads of the pass, the weight broadcast; the
//!   accumulators `O` (f32, `[nh·g][d]`, each chunk as `[16 even][16 odd]`, the ISPC avx512
//!   build's partial-result order) are rescaled by `alpha = e^(m_old - m_new)` as a pass loads
//!   them. V rows past the sequence's end are never read.
//! - The K and V pages of the block `pf_ahead` blocks on are prefetched to L2 (their first
//!   `pf_lines` lines each), a few lines per token of PV.
//!
//! [`segment_pv`] (opt-in, `TANDEM_CPU_DECODE_AMX_PV=1`) runs PV on tiles too, for up to 8 query
//! heads per KV head: each full block's weights, rounded to bf16, in `(p, 0)` and `(0, p)` pairs
//! as the A tile, V's 16 rows × 32 dims as stored as the B tile, one product for the even and
//! one for the odd dims of each chunk (the O chunk order above), stored and added into O with
//! `alpha` by the vector units one item later. Its tiles are in [`config_pv`].
//!
//! Tiles (palette 1, one configuration for the segment):
//!
//! ```text
//! tmm0, 1, 6, 7  Sᵀ of items i ≡ 0, 1, 2, 3 (mod 4)  16 rows × 4·gp bytes (f32)
//! tmm2, tmm3     K chunk of even, odd chunks          16 rows × 64 bytes (32 dims)
//! tmm4, tmm5     Qᵀ chunk, even, odd chunks           16 rows (dim pairs) × 4·gp bytes
//! ```

use std::arch::x86_64::*;
use std::cell::RefCell;

use amx_kernels::simd::exp512;
use amx_kernels::tile::TileConfig;
use amx_kernels::tile_ops::Tiles;

use super::{BLOCK_SIZE, MAX_CALL_ELEMS, MAX_CALL_HEADS, MAX_HEAD_DIM};

/// One segment's work, as the ISPC segment function takes it (raw pointers: the caller's
/// `run_checked` proved every access in bounds and disjoint between segments).
pub(super) struct SegArgs {
    /// `[nh][g][d]` bf16.
    pub q: *const u16,
    pub k_cache: *mut u16,
    pub v_cache: *mut u16,
    /// The segment's slice of the block table.
    pub blocks: *const i32,
    pub ntok: usize,
    /// Elements from one block to the next, and from a block's start to the first head's rows.
    pub block_stride: usize,
    pub head_off: usize,
    pub d: usize,
    pub g: usize,
    pub nh: usize,
    pub scale: f32,
    /// `[nh][d]` bf16: the new token's K and V, written at token `append_at` first (if ≥ 0).
    pub new_k: *const u16,
    pub new_v: *const u16,
    pub append_at: i32,
    /// `[nh·g][d]` bf16, or null when the segment writes partial results.
    pub out: *mut u16,
    /// Per KV head `hh`: `[g][d]` at `hh · part_stride · d` and `[g][2]` at `hh · part_stride · 2`.
    pub part_o: *mut f32,
    pub part_ml: *mut f32,
    pub part_stride: usize,
    pub pf_ahead: usize,
    pub pf_lines: usize,
}

/// Most score columns of one KV head (query heads, padded).
const MAX_GP: usize = 16;

#[repr(C, align(64))]
struct Scratch {
    /// Qᵀ in VNNI pairs: `[nh][d / 32][16 dim pairs][gp][2]` (`nh·d·gp` ≤ 4 × the call's
    /// `nh·g·d` elements, `gp ≤ 4g`).
    qt: [u16; 4 * MAX_CALL_ELEMS],
    /// O, `[nh·g][d]` with each 32-dim chunk as `[16 even][16 odd]`.
    o: [f32; MAX_CALL_ELEMS],
    /// `Sᵀ` of up to [`S_SLOTS`] (block, KV head) items in flight, `[S_SLOTS][16][gp]` (rows
    /// `MAX_GP` apart); then the weights.
    s: [f32; S_SLOTS * BLOCK_SIZE * MAX_GP],
    /// The running max and sum of each KV head's columns, in the softmax's lane pattern.
    m: [[f32; 16]; MAX_CALL_HEADS],
    l: [[f32; 16]; MAX_CALL_HEADS],
    /// `alpha` of the current block's head, lanes `0..gp`.
    alpha: [f32; 16],
    /// PV on tiles ([`segment_pv`]): the block's weights as the A tile, `[gp][16]` 32-bit
    /// words `(p, 0)` (even dims) then `(0, p)` (odd dims), bf16 in each half.
    pa: [[u32; PV_MAX_GP * 16]; 2],
    /// The products of two items, `[2][chunks][even, odd][gp][16]` f32, and their heads' `alpha`.
    pv: [f32; 2 * (MAX_HEAD_DIM / 32) * 2 * PV_MAX_GP * 16],
    pv_alpha: [[f32; 16]; 2],
}

/// Score slots in memory: up to eight items' `Sᵀ` stored ahead of their softmax ([`Schedule`]).
const S_SLOTS: usize = 8;

/// Most query heads per KV head (padded) for which [`segment_pv`] runs PV on tiles; past it,
/// on AVX-512 as [`segment`] does.
const PV_MAX_GP: usize = 8;

/// PV's pass plan for the vector PV: `(heads, chunks)` of each kind of pass, taken greedily in
/// this order (as many passes of 8 heads as fit, then of 4, 2 and 1), each kind's chunks in runs
/// of its count then single ones ([`pv_heads`]). The dispatch and the prefetch spread both read
/// it, so they cannot disagree.
const PV_PLAN: [(usize, usize); 4] = [(8, 1), (4, 2), (2, 4), (1, 4)];

/// Vector PV passes over one KV head's `g` query heads and `chunks` chunks of 32 dims, by
/// [`PV_PLAN`].
fn pv_pass_count(g: usize, chunks: usize) -> usize {
    let mut h = 0;
    let mut n = 0;
    for (hg, cc) in PV_PLAN {
        while h + hg <= g {
            n += chunks / cc + chunks % cc;
            h += hg;
        }
    }
    n
}

thread_local! {
    /// Each pool thread's scratch (about 77 KiB; allocated once, reused by every segment).
    static SCRATCH: RefCell<Option<Box<Scratch>>> = const { RefCell::new(None) };
}

/// When the tile products of each (block, KV head) item run: in bursts of `burst` items, issued
/// as the item `i` with `i % burst == 0` starts its softmax, for the `burst` items from
/// `i + lead` on (items `0 .. lead` before the first). `burst` 1 is one item's products between
/// two items' PV, `lead` items ahead; `burst` 3 with `lead` 1 issues three items' products
/// together, so that three items' PV (about 3,000 FMAs at 8 query heads and d = 128) runs
/// between two bursts, and no product reads K further ahead than the prefetch (see the
/// header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Schedule {
    pub lead: usize,
    pub burst: usize,
}

impl Schedule {
    /// 1:3. On an H100 host (twenty-seventh session, 16 threads, 8 query heads per KV head,
    /// b64_ctx4k, 4 alternated runs each) it read 63.9–66.2 % of the plain read against
    /// 59.3–61.6 % for 3:1, the earlier default (one item's products, three items ahead), and
    /// 48.2 against 45.1 % on one thread; 0:4, 2:2 and 1:2 fell between them, and 3:1 with
    /// keep-alive products ([`Warm`]) 63.6–64.0 %.
    const DEFAULT: Schedule = Schedule { lead: 1, burst: 3 };

    /// `TANDEM_CPU_DECODE_AMX_LEAD` (0 to 7) and `TANDEM_CPU_DECODE_AMX_BURST` (1 to 4), read
    /// once; each unset one keeps [`Schedule::DEFAULT`]'s value.
    fn from_env() -> Schedule {
        static S: std::sync::OnceLock<Schedule> = std::sync::OnceLock::new();
        *S.get_or_init(|| Schedule {
            lead: platform::env::count("TANDEM_CPU_DECODE_AMX_LEAD", 0..=7)
                .unwrap_or(Self::DEFAULT.lead),
            burst: platform::env::count("TANDEM_CPU_DECODE_AMX_BURST", 1..=4)
                .unwrap_or(Self::DEFAULT.burst),
        })
    }

    /// The schedule that fits `slots` score slots in memory: every item's scores are stored
    /// before its softmax and not overwritten until it has run, so `lead + burst ≤ slots`
    /// (the burst shrinks first, then the lead).
    fn fit(self, slots: usize) -> Schedule {
        let burst = self.burst.clamp(1, slots);
        Schedule {
            lead: self.lead.min(slots - burst),
            burst,
        }
    }

    /// The items whose products are issued as item `i` of `items` starts (before its softmax);
    /// `i = None`: before the first item.
    fn issued_at(self, i: Option<usize>, items: usize) -> std::ops::Range<usize> {
        let r = match i {
            None => 0..self.lead,
            Some(i) if i % self.burst == 0 => i + self.lead..i + self.lead + self.burst,
            Some(_) => 0..0,
        };
        r.start.min(items)..r.end.min(items)
    }
}

/// Score columns for `g` query heads: 4, 8 or 16.
fn padded_group(g: usize) -> usize {
    g.next_power_of_two().clamp(4, MAX_GP)
}

/// The segment's tiles (see the header).
fn config(gp: usize) -> TileConfig {
    let mut c = TileConfig::palette1();
    let gb = 4 * gp as u16;
    for (t, colsb) in [
        (0, gb),
        (1, gb),
        (2, 64),
        (3, 64),
        (4, gb),
        (5, gb),
        (6, gb),
        (7, gb),
    ] {
        c.set(t, 16, colsb);
    }
    c
}

/// The tiles of [`segment_pv`]: Sᵀ of two items in flight in tmm0 and tmm1, one K chunk in
/// tmm2 and one Qᵀ chunk in tmm4; for PV the weights in tmm3 (`gp` rows of 16 token pairs), a V
/// chunk in tmm5 (16 tokens × 32 dims as stored) and the even and odd dims' products in tmm6
/// and tmm7 (`gp` rows × 16 f32).
fn config_pv(gp: usize) -> TileConfig {
    let mut c = TileConfig::palette1();
    let gb = 4 * gp as u16;
    for (t, rows, colsb) in [
        (0, 16, gb),
        (1, 16, gb),
        (2, 16, 64),
        (3, gp as u8, 64),
        (4, 16, gb),
        (5, 16, 64),
        (6, gp as u8, 64),
        (7, gp as u8, 64),
    ] {
        c.set(t, rows, colsb);
    }
    c
}

/// The weights of a full block as PV's A tiles (see `Scratch::pa`): `p[j]` in the softmax's
/// lane pattern (vector `j`, lane `l`: token `j·16/gp + l/gp`, head `l % gp`), transposed to a
/// row of 16 tokens per head and rounded to bf16 (to nearest even; the weights are finite).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn weights_to_tiles(p: &[__m512; MAX_GP], gp: usize, pa: &mut [[u32; PV_MAX_GP * 16]; 2]) {
    let tpv = 16 / gp;
    let r = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // Row r of head h comes from vector r / tpv, lane (r % tpv)·gp + h.
    let lane0 = _mm512_mullo_epi32(
        _mm512_and_si512(r, _mm512_set1_epi32(tpv as i32 - 1)),
        _mm512_set1_epi32(gp as i32),
    );
    let one = _mm512_set1_epi32(1);
    let half = _mm512_set1_epi32(0x7fff);
    for h in 0..gp {
        let idx = _mm512_add_epi32(lane0, _mm512_set1_epi32(h as i32));
        let mut row = _mm512_setzero_ps();
        for (j, pj) in p.iter().enumerate().take(gp) {
            let mask = (((1u32 << tpv) - 1) << (j * tpv)) as __mmask16;
            row = _mm512_mask_permutexvar_ps(row, mask, idx, *pj);
        }
        let bits = _mm512_castps_si512(row);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), one);
        let b16 = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(half, lsb)));
        _mm512_storeu_si512(pa[0].as_mut_ptr().add(16 * h) as *mut _, b16);
        _mm512_storeu_si512(
            pa[1].as_mut_ptr().add(16 * h) as *mut _,
            _mm512_slli_epi32::<16>(b16),
        );
    }
}

/// PV of one full block of one KV head on tiles (see [`config_pv`]): for each 32-dim chunk of
/// V as stored, the even and the odd dims' products of the `gp` heads, stored to `out`
/// (`[chunks][even, odd][gp][16]` f32); a share of the prefetches after each chunk.
#[inline(always)]
unsafe fn pv_tiles<T: Tiles>(
    v: *const u8,
    d: usize,
    pa: &[[u32; PV_MAX_GP * 16]; 2],
    gp: usize,
    out: *mut f32,
    pf: &mut Prefetch,
) {
    let (ae, ao) = (pa[0].as_ptr() as *const u8, pa[1].as_ptr() as *const u8);
    for c in 0..d / 32 {
        T::zero::<6>();
        T::zero::<7>();
        T::load::<5>(v.add(64 * c), 2 * d);
        T::load::<3>(ae, 64);
        T::dp_bf16::<6, 3, 5>();
        T::load::<3>(ao, 64);
        T::dp_bf16::<7, 3, 5>();
        let o = out.add(c * 2 * gp * 16) as *mut u8;
        T::store::<6>(o, 64);
        T::store::<7>(o.add(gp * 64), 64);
        pf.step();
    }
}

/// `O = alpha·O + P·V` of an item [`pv_tiles`] computed: `pv` its products, `alpha` its heads'
/// factors, `acc` its KV head's O rows.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pv_tiles_apply(
    pv: *const f32,
    alpha: &[f32; 16],
    g: usize,
    gp: usize,
    d: usize,
    acc: *mut f32,
) {
    for (h, &al) in alpha.iter().enumerate().take(g) {
        let a = _mm512_set1_ps(al);
        for c in 0..d / 32 {
            let o = acc.add(h * d + 32 * c);
            let e = pv.add((c * 2 * gp + h) * 16);
            let od = pv.add(((c * 2 + 1) * gp + h) * 16);
            _mm512_storeu_ps(
                o,
                _mm512_fmadd_ps(a, _mm512_loadu_ps(o), _mm512_loadu_ps(e)),
            );
            _mm512_storeu_ps(
                o.add(16),
                _mm512_fmadd_ps(a, _mm512_loadu_ps(o.add(16)), _mm512_loadu_ps(od)),
            );
        }
    }
}

/// `max` (`ADD` false) or sum (`ADD` true) of the `16 / gp` lane groups of `x`, every group
/// receiving the result: lane `l` then holds the reduction over all lanes `≡ l (mod gp)`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn reduce_groups<const ADD: bool>(mut x: __m512, gp: usize) -> __m512 {
    let combine = |x, y| {
        if ADD {
            _mm512_add_ps(x, y)
        } else {
            _mm512_max_ps(x, y)
        }
    };
    if gp <= 8 {
        // swap the 256-bit halves
        x = combine(x, _mm512_shuffle_f32x4::<0b01_00_11_10>(x, x));
    }
    if gp <= 4 {
        // swap neighbouring 128-bit lanes
        x = combine(x, _mm512_shuffle_f32x4::<0b10_11_00_01>(x, x));
    }
    x
}

/// `Sᵀ = K · Qᵀ` of one KV head and block into tile `C`, stored at `s` (rows `4·gp` bytes); the
/// K and Qᵀ chunks in tmm2 and tmm4, alternating with tmm3 and tmm5 where `ALT` (not in
/// [`segment_pv`], whose PV holds those).
#[inline(always)]
unsafe fn qk_head<T: Tiles, const C: u8, const ALT: bool>(
    k: *const u8,
    d: usize,
    qt: *const u8,
    gp: usize,
    s: *mut u8,
) {
    T::zero::<C>();
    let qstep = 16 * gp * 4; // bytes of one chunk's Qᵀ tile
    for c in 0..d / 32 {
        if !ALT || c % 2 == 0 {
            T::load::<2>(k.add(64 * c), 2 * d);
            T::load::<4>(qt.add(c * qstep), 4 * gp);
            T::dp_bf16::<C, 2, 4>();
        } else {
            T::load::<3>(k.add(64 * c), 2 * d);
            T::load::<5>(qt.add(c * qstep), 4 * gp);
            T::dp_bf16::<C, 3, 5>();
        }
    }
    T::store::<C>(s, 4 * gp);
}

/// The lines of the pages a head will read `pf_ahead` blocks on, prefetched a few at a time.
struct Prefetch {
    k: *const i8,
    v: *const i8,
    /// Lines per page to fetch, lines fetched so far (K's then V's), lines per `step`.
    lines: usize,
    next: usize,
    per: usize,
}

impl Prefetch {
    const NONE: Prefetch = Prefetch {
        k: std::ptr::null(),
        v: std::ptr::null(),
        lines: 0,
        next: 0,
        per: 0,
    };

    #[inline(always)]
    fn step(&mut self) {
        let end = (self.next + self.per).min(2 * self.lines);
        while self.next < end {
            let i = self.next;
            let p = if i < self.lines {
                self.k.wrapping_add(64 * i)
            } else {
                self.v.wrapping_add(64 * (i - self.lines))
            };
            // SAFETY: a prefetch is a hint; it does not fault on any address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p) };
            self.next += 1;
        }
    }
}

/// Keeps the tile unit awake through the vector PV: a tile product (tmm7 += tmm2 · tmm4, into
/// an Sᵀ tile, which holds nothing between two items' products) every `every` PV passes,
/// counted across items; 0: never (the default). A core whose tile unit has run no product for
/// 0.3–0.5 µs makes the next burst wait 250–290 ns, 350–570 ns after 3–5 µs and more after
/// longer (amx-kernels' `amx_wake` probe: a 2-core AMX VM, and an H100 host, whose threshold
/// was the shorter), while one product among the FMAs costs them about a hundred cycles. An
/// item of this tier reading from DRAM takes a microsecond or more, so most bursts find the
/// unit idle. On the GPU host, 1:3 without these beat 1:3 and 3:1 with one every two passes.
/// Not in [`segment_pv`], whose PV products keep the unit busy (and whose tmm7 has other rows).
struct Warm {
    every: usize,
    passes: usize,
}

impl Warm {
    /// `TANDEM_CPU_DECODE_AMX_WARM` (0 to 16, read once; default [`Warm::DEFAULT`]).
    const DEFAULT: usize = 0;

    fn from_env() -> usize {
        static W: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *W.get_or_init(|| {
            platform::env::count("TANDEM_CPU_DECODE_AMX_WARM", 0..=16).unwrap_or(Self::DEFAULT)
        })
    }

    /// Called at the start of every vector PV pass.
    #[inline(always)]
    unsafe fn pass<T: Tiles>(&mut self) {
        if self.every == 0 {
            return;
        }
        self.passes += 1;
        if self.passes >= self.every {
            self.passes = 0;
            T::dp_bf16::<7, 2, 4>();
        }
    }
}

/// PV of `HG` heads over chunks `c0 .. c0 + CC` of every row (see the header): `acc` is the
/// first head's O row (rows `d` apart), `p` its weights column in `[16][gp]`, `alpha` its
/// rescale factor (heads consecutive in both).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_pass<T: Tiles, const HG: usize, const CC: usize>(
    v: *const u16,
    d: usize,
    c0: usize,
    valid: usize,
    p: *const f32,
    gp: usize,
    alpha: *const f32,
    acc: *mut f32,
    pf: &mut Prefetch,
    warm: &mut Warm,
) {
    warm.pass::<T>();
    let odd = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let mut ae = [[_mm512_setzero_ps(); CC]; HG];
    let mut ao = [[_mm512_setzero_ps(); CC]; HG];
    for h in 0..HG {
        let a = _mm512_set1_ps(*alpha.add(h));
        for c in 0..CC {
            let o = acc.add(h * d + (c0 + c) * 32);
            ae[h][c] = _mm512_mul_ps(a, _mm512_loadu_ps(o));
            ao[h][c] = _mm512_mul_ps(a, _mm512_loadu_ps(o.add(16)));
        }
    }
    for t in 0..valid {
        let row = v.add(t * d + c0 * 32);
        for c in 0..CC {
            let w = _mm512_loadu_si512(row.add(32 * c) as *const _);
            let ve = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w));
            let vo = _mm512_castsi512_ps(_mm512_and_si512(w, odd));
            for h in 0..HG {
                let pw = _mm512_set1_ps(*p.add(t * gp + h));
                ae[h][c] = _mm512_fmadd_ps(pw, ve, ae[h][c]);
                ao[h][c] = _mm512_fmadd_ps(pw, vo, ao[h][c]);
            }
        }
        pf.step();
    }
    for h in 0..HG {
        for c in 0..CC {
            let o = acc.add(h * d + (c0 + c) * 32);
            _mm512_storeu_ps(o, ae[h][c]);
            _mm512_storeu_ps(o.add(16), ao[h][c]);
        }
    }
}

/// All chunks of PV for `HG` heads: passes of `CC` chunks, then single chunks.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_heads<T: Tiles, const HG: usize, const CC: usize>(
    v: *const u16,
    d: usize,
    valid: usize,
    p: *const f32,
    gp: usize,
    alpha: *const f32,
    acc: *mut f32,
    pf: &mut Prefetch,
    warm: &mut Warm,
) {
    let chunks = d / 32;
    let mut c0 = 0;
    while c0 + CC <= chunks {
        pv_pass::<T, HG, CC>(v, d, c0, valid, p, gp, alpha, acc, pf, warm);
        c0 += CC;
    }
    while c0 < chunks {
        pv_pass::<T, HG, 1>(v, d, c0, valid, p, gp, alpha, acc, pf, warm);
        c0 += 1;
    }
}

/// Runs one segment (see the module header).
///
/// # Safety
/// AVX-512 (F, BW, VL) is present; for [`amx_kernels::tile_ops::Hw`], AMX-BF16 is usable on
/// this thread. `a` describes memory as `run_checked` validates it: `g ≤ 16`, `nh·g ≤ 32`,
/// `nh·g·d ≤ 4096`, `d` a multiple of 32, every block id in range.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn segment<T: Tiles>(a: &SegArgs) {
    with_scratch(|sc| unsafe {
        segment_with::<T, false>(a, sc, Schedule::from_env(), Warm::from_env())
    })
}

/// [`segment`] with its products issued by a fixed [`Schedule`] and a keep-alive product every
/// `WARM` vector PV passes ([`Warm`]; tests).
///
/// # Safety
/// As [`segment`].
#[cfg(test)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn segment_sched<
    T: Tiles,
    const LEAD: usize,
    const BURST: usize,
    const WARM: usize,
>(
    a: &SegArgs,
) {
    let sched = Schedule {
        lead: LEAD,
        burst: BURST,
    };
    with_scratch(|sc| unsafe { segment_with::<T, false>(a, sc, sched, WARM) })
}

/// As [`segment`], with PV on tiles too where a KV head has at most 8 query heads: each full
/// block's weights, rounded to bf16, are the A tile and V's rows as stored the B tiles (one
/// product for the even dims with the weights in the low halves of the pairs, one for the odd
/// dims with them in the high halves), so that the vector units only rescale and add each
/// block's products into O, one item behind the tiles. The Sᵀ products run by the same
/// [`Schedule`] as in [`segment`], in two tiles rather than four (PV's products hold the
/// others). A sequence's last, partial block runs PV on AVX-512 (V rows past the end are never
/// read). Opt-in: `TANDEM_CPU_DECODE_AMX_PV=1`.
///
/// # Safety
/// As [`segment`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn segment_pv<T: Tiles>(a: &SegArgs) {
    with_scratch(|sc| unsafe { segment_with::<T, true>(a, sc, Schedule::from_env(), 0) })
}

fn with_scratch(f: impl FnOnce(&mut Scratch)) {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        // SAFETY: every field is plain numbers, for which all-zero bytes are valid.
        let sc = slot.get_or_insert_with(|| unsafe { Box::new(std::mem::zeroed()) });
        f(sc)
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn segment_with<T: Tiles, const PV: bool>(
    a: &SegArgs,
    sc: &mut Scratch,
    sched: Schedule,
    warm_every: usize,
) {
    let (d, g, nh) = (a.d, a.g, a.nh);
    let gp = padded_group(g);
    let chunks = d / 32;
    let head_step = BLOCK_SIZE * d; // one KV head's rows in a block
    let block = |i: usize| *a.blocks.add(i) as usize * a.block_stride + a.head_off;
    if a.append_at >= 0 {
        let t = a.append_at as usize;
        let off = block(t / BLOCK_SIZE) + (t % BLOCK_SIZE) * d;
        for hh in 0..nh {
            std::ptr::copy_nonoverlapping(
                a.new_k.add(hh * d),
                a.k_cache.add(off + hh * head_step),
                d,
            );
            std::ptr::copy_nonoverlapping(
                a.new_v.add(hh * d),
                a.v_cache.add(off + hh * head_step),
                d,
            );
        }
    }

    // Qᵀ tiles, O and the running max and sum.
    for hh in 0..nh {
        for c in 0..chunks {
            let tile = &mut sc.qt[(hh * chunks + c) * 16 * gp * 2..][..16 * gp * 2];
            for kp in 0..16 {
                for h in 0..gp {
                    let (x0, x1) = if h < g {
                        let src = a.q.add((hh * g + h) * d + 32 * c + 2 * kp);
                        (*src, *src.add(1))
                    } else {
                        (0, 0)
                    };
                    tile[(kp * gp + h) * 2] = x0;
                    tile[(kp * gp + h) * 2 + 1] = x1;
                }
            }
        }
        sc.m[hh] = [f32::NEG_INFINITY; 16];
        sc.l[hh] = [0.0; 16];
    }
    sc.o[..nh * g * d].fill(0.0);

    let nblocks = a.ntok.div_ceil(BLOCK_SIZE);
    let tpv = 16 / gp; // tokens per score vector
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let lane_tok = _mm512_srlv_epi32(iota, _mm512_set1_epi32(gp.trailing_zeros() as i32));
    // PV passes of one KV head, for spreading the prefetches over its token loops.
    let passes = pv_pass_count(g, chunks);
    let pf_lines = a.pf_lines.min(head_step * 2 / 64);
    // PV on tiles (`segment_pv`): two Sᵀ tiles, tmm0 and tmm1; otherwise four (tmm0, 1, 6, 7).
    // Either way each item's Sᵀ is stored as soon as its products end, so the tiles do not
    // bound the schedule: both use `S_SLOTS` slots in memory.
    let tiles_pv = PV && gp <= PV_MAX_GP;
    let tiles = if tiles_pv { 2 } else { 4 };
    T::config(&if tiles_pv { config_pv(gp) } else { config(gp) });
    // Sᵀ of item i (block i / nh, KV head i % nh) in tile i % tiles, stored to slot
    // i % S_SLOTS.
    let (s_base, qt_base) = (sc.s.as_mut_ptr(), sc.qt.as_ptr());
    let qk = |i: usize| {
        let (b, hh) = (i / nh, i % nh);
        let k = a.k_cache.add(block(b) + hh * head_step) as *const u8;
        let qt = qt_base.add(hh * chunks * 16 * gp * 2) as *const u8;
        let s = s_base.add((i % S_SLOTS) * 16 * MAX_GP) as *mut u8;
        match (tiles_pv, i % tiles) {
            (true, 0) => qk_head::<T, 0, false>(k, d, qt, gp, s),
            (true, _) => qk_head::<T, 1, false>(k, d, qt, gp, s),
            (false, 0) => qk_head::<T, 0, true>(k, d, qt, gp, s),
            (false, 1) => qk_head::<T, 1, true>(k, d, qt, gp, s),
            (false, 2) => qk_head::<T, 6, true>(k, d, qt, gp, s),
            (false, _) => qk_head::<T, 7, true>(k, d, qt, gp, s),
        }
    };
    // The tile products run ahead of the softmax and PV, in bursts (see `Schedule`).
    let items = nblocks * nh;
    let sched = sched.fit(S_SLOTS);
    let mut warm = Warm {
        every: if tiles_pv { 0 } else { warm_every },
        passes: 0,
    };
    let issue = |i: Option<usize>| {
        for j in sched.issued_at(i, items) {
            qk(j);
        }
    };
    // PV on tiles: the item whose products wait to be added into O (its KV head and buffer).
    let mut pending: Option<(usize, usize)> = None;
    let pv_len = chunks * 2 * gp * 16;
    // Adds the products in buffer `pb` into the O rows of KV head `ph`.
    let apply = |sc: &mut Scratch, ph: usize, pb: usize| {
        let acc = sc.o.as_mut_ptr().add(ph * g * d);
        pv_tiles_apply(
            sc.pv.as_ptr().add(pb * pv_len),
            &sc.pv_alpha[pb],
            g,
            gp,
            d,
            acc,
        );
    };
    issue(None);
    for i in 0..items {
        issue(Some(i));
        let (b, hh) = (i / nh, i % nh);
        let valid = (a.ntok - b * BLOCK_SIZE).min(BLOCK_SIZE);
        let base = block(b);
        let ahead = (a.pf_ahead > 0 && b + a.pf_ahead < nblocks).then(|| block(b + a.pf_ahead));
        {
            // Online softmax of the gp columns.
            let s = s_base.add((i % S_SLOTS) * 16 * MAX_GP);
            let scale = _mm512_set1_ps(a.scale);
            let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut x = [ninf; MAX_GP];
            let mut mx = ninf;
            for (j, xj) in x.iter_mut().enumerate().take(gp) {
                let live = _mm512_cmplt_epi32_mask(
                    _mm512_add_epi32(lane_tok, _mm512_set1_epi32((j * tpv) as i32)),
                    _mm512_set1_epi32(valid as i32),
                );
                *xj = _mm512_mask_mul_ps(ninf, live, _mm512_loadu_ps(s.add(16 * j)), scale);
                mx = _mm512_max_ps(mx, *xj);
            }
            let m_old = _mm512_loadu_ps(sc.m[hh].as_ptr());
            let m_new = _mm512_max_ps(m_old, reduce_groups::<false>(mx, gp));
            let mut sum = _mm512_setzero_ps();
            let mut pj = [_mm512_setzero_ps(); MAX_GP];
            for (j, xj) in x.iter().enumerate().take(gp) {
                // exp(-inf) is 0: masked tokens weigh nothing.
                let p = exp512(_mm512_sub_ps(*xj, m_new));
                let p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(*xj, ninf), p);
                _mm512_storeu_ps(s.add(16 * j), p);
                pj[j] = p;
                sum = _mm512_add_ps(sum, p);
            }
            // alpha = e^(m_old - m_new); 0 where nothing was seen yet (m_old = -inf).
            let seen = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(m_old, ninf);
            let alpha = _mm512_maskz_mov_ps(seen, exp512(_mm512_sub_ps(m_old, m_new)));
            let l_new = _mm512_fmadd_ps(
                _mm512_loadu_ps(sc.l[hh].as_ptr()),
                alpha,
                reduce_groups::<true>(sum, gp),
            );
            _mm512_storeu_ps(sc.m[hh].as_mut_ptr(), m_new);
            _mm512_storeu_ps(sc.l[hh].as_mut_ptr(), l_new);
            _mm512_storeu_ps(sc.alpha.as_mut_ptr(), alpha);

            let v = a.v_cache.add(base + hh * head_step) as *const u16;
            let mut pf = match ahead {
                Some(n) => Prefetch {
                    k: a.k_cache.add(n + hh * head_step) as *const i8,
                    v: a.v_cache.add(n + hh * head_step) as *const i8,
                    lines: pf_lines,
                    next: 0,
                    per: if tiles_pv && valid == BLOCK_SIZE {
                        (2 * pf_lines).div_ceil(chunks)
                    } else {
                        (2 * pf_lines).div_ceil(passes.max(1) * valid)
                    },
                },
                None => Prefetch::NONE,
            };
            if tiles_pv && valid == BLOCK_SIZE {
                // PV of this item on tiles, then the previous tile item's products into O.
                weights_to_tiles(&pj, gp, &mut sc.pa);
                let buf = i % 2;
                let out = sc.pv.as_mut_ptr().add(buf * pv_len);
                pv_tiles::<T>(v as *const u8, d, &sc.pa, gp, out, &mut pf);
                _mm512_storeu_ps(sc.pv_alpha[buf].as_mut_ptr(), alpha);
                if let Some((ph, pb)) = pending.replace((hh, buf)) {
                    apply(sc, ph, pb);
                }
                continue;
            }
            if let Some((ph, pb)) = pending.take() {
                apply(sc, ph, pb);
            }
            // PV by PV_PLAN: passes of 8, 4, 2, 1 heads (8 at once: each V word widened once
            // for all 8).
            let acc = sc.o.as_mut_ptr().add(hh * g * d);
            let al = sc.alpha.as_ptr();
            let mut h = 0;
            // One pass of kind `i` of PV_PLAN over heads h .. h + its head count.
            macro_rules! pass {
                ($i:literal) => {{
                    pv_heads::<T, { PV_PLAN[$i].0 }, { PV_PLAN[$i].1 }>(
                        v,
                        d,
                        valid,
                        s.add(h),
                        gp,
                        al.add(h),
                        acc.add(h * d),
                        &mut pf,
                        &mut warm,
                    );
                    h += PV_PLAN[$i].0;
                }};
            }
            while h + PV_PLAN[0].0 <= g {
                pass!(0);
            }
            // Fewer than 8 heads are left: at most one pass of each smaller kind, so an `if`
            // (a `while` here cost 3 points of the read at g = 4 on a 2-core AMX machine).
            if h + PV_PLAN[1].0 <= g {
                pass!(1);
            }
            if h + PV_PLAN[2].0 <= g {
                pass!(2);
            }
            if h + PV_PLAN[3].0 <= g {
                pass!(3);
            }
            debug_assert_eq!(h, g, "PV_PLAN left query heads without PV");
            const _: () = assert!(
                PV_PLAN.len() == 4
                    && PV_PLAN[0].0 == 2 * PV_PLAN[1].0
                    && PV_PLAN[1].0 == 2 * PV_PLAN[2].0
                    && PV_PLAN[2].0 == 2 * PV_PLAN[3].0
                    && PV_PLAN[3].0 == 1
            );
        }
    }
    if let Some((ph, pb)) = pending.take() {
        apply(sc, ph, pb);
    }
    T::release();

    if !a.out.is_null() {
        for hh in 0..nh {
            for h in 0..g {
                let r = hh * g + h;
                let inv = 1.0 / sc.l[hh][h];
                let row = &sc.o[r * d..(r + 1) * d];
                let out = a.out.add(r * d);
                for c in 0..chunks {
                    for n in 0..16 {
                        for (i, x) in [row[32 * c + n], row[32 * c + 16 + n]]
                            .into_iter()
                            .enumerate()
                        {
                            *out.add(32 * c + 2 * n + i) = half::bf16::from_f32(x * inv).to_bits();
                        }
                    }
                }
            }
        }
    } else {
        for hh in 0..nh {
            std::ptr::copy_nonoverlapping(
                sc.o.as_ptr().add(hh * g * d),
                a.part_o.add(hh * a.part_stride * d),
                g * d,
            );
            for h in 0..g {
                let ml = a.part_ml.add(hh * a.part_stride * 2 + 2 * h);
                *ml = sc.m[hh][h];
                *ml.add(1) = sc.l[hh][h];
            }
        }
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    /// Every schedule the environment can ask for, fitted to the kernel's slots (and to fewer,
    /// for `fit`'s own sake), issues each item's products once, before its softmax, into a slot
    /// that no later item's products overwrite until that softmax has read it.
    #[test]
    fn every_schedule_stores_each_item_before_its_softmax() {
        for slots in [2, S_SLOTS] {
            for lead in 0..=7 {
                for burst in 1..=4 {
                    let sched = Schedule { lead, burst }.fit(slots);
                    assert!(sched.lead + sched.burst <= slots && sched.burst >= 1);
                    for items in 0..=40 {
                        let ctx = format!(
                            "{lead}:{burst} fitted to {sched:?}, {slots} slots, {items} items"
                        );
                        let mut slot = vec![None; slots];
                        let mut issued = vec![0; items];
                        let store = |r: std::ops::Range<usize>,
                                     slot: &mut [Option<usize>],
                                     issued: &mut [usize]| {
                            for j in r {
                                issued[j] += 1;
                                slot[j % slots] = Some(j);
                            }
                        };
                        store(sched.issued_at(None, items), &mut slot, &mut issued);
                        for i in 0..items {
                            store(sched.issued_at(Some(i), items), &mut slot, &mut issued);
                            assert_eq!(slot[i % slots], Some(i), "{ctx}: item {i}'s scores");
                        }
                        assert!(issued.iter().all(|&n| n == 1), "{ctx}: issued {issued:?}");
                    }
                }
            }
        }
    }

    /// The plan's pass count (which spreads the prefetches) against the closed form of passes of
    /// 8 heads × 1 chunk, 4 × 2, 2 × 4 and 1 × 4, for every group size the kernel takes.
    #[test]
    fn pv_pass_count_matches_the_closed_form() {
        for chunks in [1, 2, 3, 4, 8] {
            let of = |cc: usize| chunks / cc + chunks % cc;
            for g in 1..=16 {
                let closed =
                    (g / 8) * chunks + (g % 8 / 4) * of(2) + (g % 4 / 2) * of(4) + (g % 2) * of(4);
                assert_eq!(
                    pv_pass_count(g, chunks),
                    closed,
                    "g = {g}, chunks = {chunks}"
                );
            }
        }
    }
}
