//! Measured ceilings of the AMX GEMM's micro-kernel, for the benches: the same instruction
//! stream as [`amx_tiles::micro`](super::amx_tiles) on every pool thread at once, with the
//! operands where the GEMM might find them.
//!
//! - [`Ceiling::Tdp`] / [`Ceiling::TdpInt8`]: four `tdpbf16ps` (`tdpbssd`) per step on
//!   registers only, no loads: the dot-product throughput.
//! - [`Ceiling::Tdp6`]: six independent accumulators on one A and one B tile, no loads: if it
//!   beats [`Ceiling::Tdp`], four chains in flight do not cover the instruction's latency.
//! - [`Ceiling::L1`]: the 2 × 2 micro-kernel, A and B cycling through 16 KiB each (L1);
//!   [`Ceiling::L1Int8`]: the same with `tdpbssd`, the int8 GEMM's kernel.
//! - [`Ceiling::L2`]: the same over 512 KiB each (L2, past L1), no prefetch;
//!   [`Ceiling::L2Prefetch`]: with B and A prefetched two steps ahead.
//! - [`Ceiling::L1A`]: A cycling through 16 KiB (L1) while B cycles through 512 KiB (L2);
//!   [`Ceiling::L1B`]: the reverse. Where one operand stays in L1 (a short K chunk of A reused
//!   by several column pairs, or of B by several row groups), these bound the kernel.
//! - [`Ceiling::Tdp2`]: two accumulators on registers, no loads: whether two chains of
//!   `tdpbf16ps` cover its latency.
//! - [`Ceiling::L1Db`], [`Ceiling::L1ADb`], [`Ceiling::L2Db`]: a 2 × 1 kernel (two C tiles, one
//!   B tile, 32 rows of A) whose A and B tiles are double-buffered in the other six registers,
//!   so that every load has a whole step to land and never waits for a product still reading
//!   its register; 1.5 tile loads a product, against the 2 × 2 kernel's one. Operands in L1; A
//!   in L1 with B in L2; both in L2. Measured on the GPU host, they lose to the 2 × 2 kernel,
//!   which already runs at the products' full rate on one thread with an operand in L1
//!   (docs/BENCHMARKS.md, fifteenth session).
//!
//! And [`simd_fma_ceiling`]: 512-bit f32 FMAs on registers only, every pool thread at once, the
//! vector units' own ceiling (which the SIMD tiers, and the CPU paged decode attention, share).
//!
//! And [`overlap_ceiling`]: whether a core's tile products and its 512-bit FMAs run side by
//! side. Each round issues a given number of FMAs, `tdpbf16ps` on resident tiles and dependent
//! scalar multiplies (a clock: 3 cycles each, whatever the vector units do), block by block;
//! the time a round against each part alone says which part bounds it and at what clock. The
//! AMX decode tier of the CPU paged attention (ispc-kernels) mixes exactly these.
//!
//! And [`wake_probe`]: what a burst of tile products costs after the core's tile unit has had
//! nothing to do for a while. The core spins (`pause`) for a gap, then issues four products
//! and 256 FMAs, timed by the TSC; against the same after no gap, the difference is the wait
//! for an idle tile unit (on a 2-core AMX VM: none up to about 0.5 µs of idleness, about 250
//! ns after it, about 500 ns after a few µs). The AMX decode tier's schedule issues its products
//! in bursts for this (ispc-kernels, `TANDEM_CPU_DECODE_AMX_BURST`; `_WARM` adds keep-alive
//! products, off by default).

use std::cell::RefCell;

use super::amx_tiles::{dp, micro, ALayout, Line, Prefetch, A_STEP, ROW, TILE_BYTES};
use crate::tile::TileConfig;
use crate::tile_ops::{Hw, Tiles};
use crate::{Error, Result};

/// Which ceiling [`amx_ceiling`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ceiling {
    Tdp,
    TdpInt8,
    Tdp6,
    L1,
    L2,
    L2Prefetch,
    L1A,
    L1B,
    Tdp2,
    L1Db,
    L1ADb,
    L2Db,
    L1Int8,
}

/// What one round of [`overlap_ceiling`] issues on each pool thread, interleaved in steps: a
/// step issues 32 of the FMAs, one of the products and 32 of the multiplies, as long as each
/// part has any left, so the shorter parts run at the round's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// Independent 512-bit f32 FMAs (eight accumulators, products of zeros: no denormals); a
    /// multiple of 32. Two ports retire two a cycle: `fmas / 2` cycles alone.
    pub fmas: usize,
    /// `tdpbf16ps` on resident zeroed 16 × 64-byte tiles, four accumulators in turn: 16 cycles
    /// each alone.
    pub products: usize,
    /// A chain of dependent 64-bit `imul` (3 cycles each, which nothing shortens); a multiple
    /// of 32. Where its `3 · chain` cycles exceed the rest's, it bounds the round, and
    /// `3 · chain` over the ns a round is the core's clock in GHz while the rest runs beside.
    pub chain: usize,
}

impl Overlap {
    fn check(&self) -> Result<()> {
        if !self.fmas.is_multiple_of(32)
            || !self.chain.is_multiple_of(32)
            || self.fmas + self.products + self.chain == 0
        {
            return Err(Error::Shape(format!(
                "overlap ceiling: {self:?}: FMAs and multiplies must be multiples of 32, and a round must issue something"
            )));
        }
        Ok(())
    }

    /// Cycles a round takes if its parts all run side by side at their own rates.
    pub fn ideal_cycles(&self) -> usize {
        (self.fmas / 2).max(16 * self.products).max(3 * self.chain)
    }
}

thread_local! {
    static BUF: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// `steps` K steps of the micro-kernel's four dot products, without its loads.
#[inline(always)]
unsafe fn tdp_only<const INT8: bool>(steps: usize) {
    for _ in 0..steps {
        dp::<Hw, INT8, 0, 4, 6>();
        dp::<Hw, INT8, 1, 4, 7>();
        dp::<Hw, INT8, 2, 5, 6>();
        dp::<Hw, INT8, 3, 5, 7>();
    }
}

/// `steps` rounds of six `tdpbf16ps` into tmm0–5 from tmm6 and tmm7, no loads.
#[inline(always)]
unsafe fn tdp_six(steps: usize) {
    for _ in 0..steps {
        dp::<Hw, false, 0, 6, 7>();
        dp::<Hw, false, 1, 6, 7>();
        dp::<Hw, false, 2, 6, 7>();
        dp::<Hw, false, 3, 6, 7>();
        dp::<Hw, false, 4, 6, 7>();
        dp::<Hw, false, 5, 6, 7>();
    }
}

/// `steps` rounds of two `tdpbf16ps` into tmm0 and tmm1, no loads.
#[inline(always)]
unsafe fn tdp_two(steps: usize) {
    for _ in 0..steps {
        dp::<Hw, false, 0, 2, 6>();
        dp::<Hw, false, 1, 3, 6>();
    }
}

/// `steps` K steps (even, ≥ 2) of the 2 × 1 double-buffered kernel: C in tmm0 (rows 0–15) and
/// tmm1 (16–31); A of even steps in tmm2/3 and B in tmm6, of odd steps in tmm4/5 and tmm7. Each
/// product is followed by a load of the step after next into the register that the step before
/// freed. The prologue loads step 0; the last loads fetch step 0 again (wrapping), whose
/// results are never used. A at `a` in the panel layout `al`, B one tile a step at `b`.
#[inline(always)]
unsafe fn micro_2x1_db(a: *const u8, al: ALayout, b: *const u8, steps: usize) {
    Hw::load::<2>(a, al.stride);
    Hw::load::<3>(a.add(al.half), al.stride);
    Hw::load::<6>(b, ROW);
    let mut s = 0;
    while s + 2 <= steps {
        let (a1, b1) = (a.add((s + 1) * al.step), b.add((s + 1) * TILE_BYTES));
        dp::<Hw, false, 0, 2, 6>();
        Hw::load::<4>(a1, al.stride);
        dp::<Hw, false, 1, 3, 6>();
        Hw::load::<5>(a1.add(al.half), al.stride);
        Hw::load::<7>(b1, ROW);
        let s2 = (s + 2) % steps;
        let (a2, b2) = (a.add(s2 * al.step), b.add(s2 * TILE_BYTES));
        dp::<Hw, false, 0, 4, 7>();
        Hw::load::<2>(a2, al.stride);
        dp::<Hw, false, 1, 5, 7>();
        Hw::load::<3>(a2.add(al.half), al.stride);
        Hw::load::<6>(b2, ROW);
        s += 2;
    }
}

/// K steps that one ceiling cycles A and B through (8: 16 KiB each, in L1; 256: 512 KiB, in L2).
fn spans(kind: Ceiling) -> (usize, usize) {
    match kind {
        Ceiling::Tdp | Ceiling::TdpInt8 | Ceiling::Tdp6 | Ceiling::Tdp2 => (1, 1),
        Ceiling::L1 | Ceiling::L1Db | Ceiling::L1Int8 => (8, 8),
        Ceiling::L2 | Ceiling::L2Prefetch | Ceiling::L2Db => (256, 256),
        Ceiling::L1A | Ceiling::L1ADb => (8, 256),
        Ceiling::L1B => (256, 8),
    }
}

/// Runs `steps` K steps (rounded up to the ceiling's span) of the micro-kernel on every pool
/// thread at once; returns the operations done (2 per multiply-add, all threads).
pub fn amx_ceiling(kind: Ceiling, steps: usize) -> Result<u64> {
    if platform::cpu_caps().best_tier() != platform::CpuTier::Amx
        || (matches!(kind, Ceiling::TdpInt8 | Ceiling::L1Int8)
            && !platform::cpu_caps().amx_int8_usable())
    {
        return Err(Error::Unsupported {
            needed: "AMX",
            have: platform::cpu_caps().best_tier(),
        });
    }
    let (sa, sb) = spans(kind);
    let span = sa.max(sb);
    // The micro-kernel runs `inner` steps at a time; the operand with the longer span moves on
    // by `inner` steps from call to call, the other starts over.
    let inner = sa.min(sb);
    let rounds = steps.div_ceil(span);
    let threads = platform::pool().broadcast(|_| {
        // A: sa × 2 KiB, then B: two blocks of sb × 1 KiB; values 1.0 (bf16) throughout, which
        // the int8 kinds multiply as the bytes -128 and 63 (wrapping sums: only timed).
        let lines = (sa * A_STEP + 2 * sb * TILE_BYTES) / 64;
        crate::scratch::with_buf(&BUF, lines, |buf| {
            // Filled once per thread (values 1.0), so that a call times only the kernel.
            let one = [0x80u8, 0x3f];
            if buf[lines - 1].0[..2] != one {
                for l in buf.iter_mut().take(lines) {
                    for (i, x) in l.0.iter_mut().enumerate() {
                        *x = one[i % 2];
                    }
                }
            }
            let a = buf.as_ptr() as *const u8;
            let b0 = a.wrapping_add(sa * A_STEP);
            let b1 = b0.wrapping_add(sb * TILE_BYTES);
            let al = ALayout::panel(sa);
            let mut cfg = TileConfig::palette1();
            for t in 0..8 {
                cfg.set(t, 16, 64);
            }
            // SAFETY: AMX is usable (checked above); every load stays inside buf (sa steps of A,
            // sb of B).
            unsafe {
                Hw::config(&cfg);
                Hw::load::<4>(a, 64);
                Hw::load::<5>(a, 64);
                Hw::load::<6>(b0, 64);
                Hw::load::<7>(b1, 64);
                for _ in 0..rounds {
                    match kind {
                        Ceiling::Tdp => tdp_only::<false>(span),
                        Ceiling::TdpInt8 => tdp_only::<true>(span),
                        Ceiling::Tdp6 => tdp_six(span),
                        Ceiling::Tdp2 => tdp_two(span),
                        Ceiling::L1
                        | Ceiling::L1Int8
                        | Ceiling::L2
                        | Ceiling::L1A
                        | Ceiling::L1B
                        | Ceiling::L1Db
                        | Ceiling::L1ADb
                        | Ceiling::L2Db => {
                            let db_kernel =
                                matches!(kind, Ceiling::L1Db | Ceiling::L1ADb | Ceiling::L2Db);
                            for j in 0..span / inner {
                                let (da, db) = if sa > sb {
                                    (j * inner * A_STEP, 0)
                                } else {
                                    (0, j * inner * TILE_BYTES)
                                };
                                let (a, b0, b1) =
                                    (a.wrapping_add(da), b0.wrapping_add(db), b1.wrapping_add(db));
                                if db_kernel {
                                    micro_2x1_db(a, al, b0, inner)
                                } else if kind == Ceiling::L1Int8 {
                                    micro::<Hw, true, true>(
                                        a,
                                        al,
                                        b0,
                                        b1,
                                        inner,
                                        Prefetch::default(),
                                    )
                                } else {
                                    micro::<Hw, false, true>(
                                        a,
                                        al,
                                        b0,
                                        b1,
                                        inner,
                                        Prefetch::default(),
                                    )
                                }
                            }
                        }
                        Ceiling::L2Prefetch => micro::<Hw, false, true>(
                            a,
                            al,
                            b0,
                            b1,
                            span,
                            Prefetch {
                                a: 2,
                                b: 2,
                                ..Prefetch::default()
                            },
                        ),
                    }
                }
                let mut c = [0f32; 256];
                Hw::store::<0>(c.as_mut_ptr() as *mut u8, 64);
                Hw::release();
                std::hint::black_box(c);
            }
        });
        1u64
    });
    let threads: u64 = threads.iter().sum();
    // A tdpbssd multiplies 64 of K per tile row, a tdpbf16ps 32.
    let k_per_tile = if matches!(kind, Ceiling::TdpInt8 | Ceiling::L1Int8) {
        64
    } else {
        32
    };
    let per_step = match kind {
        Ceiling::Tdp6 => 6,
        Ceiling::Tdp2 | Ceiling::L1Db | Ceiling::L1ADb | Ceiling::L2Db => 2,
        _ => 4,
    };
    Ok(threads * (rounds * span) as u64 * per_step * 16 * 16 * k_per_tile * 2)
}

/// `steps` rounds of twelve independent 512-bit f32 FMAs (zmm0–11 from zmm16, zmm17, all zero:
/// no denormals) on every pool thread at once; returns the operations done (2 per multiply-add,
/// 16 lanes, all threads). Twelve chains cover the FMA latency (4 cycles) on two ports.
pub fn simd_fma_ceiling(steps: usize) -> Result<u64> {
    if !platform::cpu_caps().avx512f {
        return Err(Error::Unsupported {
            needed: "AVX-512F",
            have: platform::cpu_caps().best_tier(),
        });
    }
    let threads: u64 = platform::pool()
        .broadcast(|_| {
            // SAFETY: AVX-512F is present (checked above); the asm touches registers only.
            unsafe { fma_rounds(steps.max(1)) };
            1u64
        })
        .iter()
        .sum();
    Ok(threads * steps.max(1) as u64 * 12 * 16 * 2)
}

/// # Safety
/// AVX-512F is present.
#[target_feature(enable = "avx512f")]
unsafe fn fma_rounds(steps: usize) {
    std::arch::asm!(
        "vpxord zmm16, zmm16, zmm16",
        "vpxord zmm17, zmm17, zmm17",
        "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1", "vpxord zmm2, zmm2, zmm2",
        "vpxord zmm3, zmm3, zmm3", "vpxord zmm4, zmm4, zmm4", "vpxord zmm5, zmm5, zmm5",
        "vpxord zmm6, zmm6, zmm6", "vpxord zmm7, zmm7, zmm7", "vpxord zmm8, zmm8, zmm8",
        "vpxord zmm9, zmm9, zmm9", "vpxord zmm10, zmm10, zmm10", "vpxord zmm11, zmm11, zmm11",
        "2:",
        "vfmadd231ps zmm0, zmm16, zmm17", "vfmadd231ps zmm1, zmm16, zmm17",
        "vfmadd231ps zmm2, zmm16, zmm17", "vfmadd231ps zmm3, zmm16, zmm17",
        "vfmadd231ps zmm4, zmm16, zmm17", "vfmadd231ps zmm5, zmm16, zmm17",
        "vfmadd231ps zmm6, zmm16, zmm17", "vfmadd231ps zmm7, zmm16, zmm17",
        "vfmadd231ps zmm8, zmm16, zmm17", "vfmadd231ps zmm9, zmm16, zmm17",
        "vfmadd231ps zmm10, zmm16, zmm17", "vfmadd231ps zmm11, zmm16, zmm17",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) steps => _,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
        out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
        out("zmm10") _, out("zmm11") _, out("zmm16") _, out("zmm17") _,
        options(nostack, nomem),
    );
}

/// Runs `rounds` rounds of `mix` on every pool thread at once (AVX-512F hosts; AMX where the
/// round issues tile products); returns the rounds each thread ran (all threads run side by
/// side, so a call's time over this is the time of one round on a core).
pub fn overlap_ceiling(mix: Overlap, rounds: usize) -> Result<u64> {
    overlap_here(mix, 0)?;
    let rounds = rounds.max(1);
    platform::pool()
        .broadcast(|_| overlap_here(mix, rounds))
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    Ok(rounds as u64)
}

/// Runs `rounds` rounds of `mix` on the calling thread only (0 checks and returns): a load for
/// one core beside other work on the others.
pub fn overlap_here(mix: Overlap, rounds: usize) -> Result<()> {
    mix.check()?;
    let caps = platform::cpu_caps();
    if (mix.products > 0 && caps.best_tier() != platform::CpuTier::Amx) || !caps.avx512f {
        return Err(Error::Unsupported {
            needed: if caps.avx512f { "AMX" } else { "AVX-512F" },
            have: caps.best_tier(),
        });
    }
    if rounds > 0 {
        // SAFETY: AVX-512F, and AMX if products are issued, are usable (checked above); nothing
        // touches memory but the tile configuration.
        unsafe { overlap_rounds(mix, rounds) }
    }
    Ok(())
}

/// # Safety
/// AVX-512F is present, and AMX is usable if `mix.products > 0`.
#[target_feature(enable = "avx512f")]
unsafe fn overlap_rounds(mix: Overlap, rounds: usize) {
    let tiles = mix.products > 0;
    if tiles {
        resident_tiles();
    }
    let (fb, mb) = (mix.fmas / 32, mix.chain / 32);
    let steps = fb.max(mix.products).max(mb);
    // 1 · 1 stays 1; products of zeros into zeros: no denormals, nothing grows.
    let mut x = 1u64;
    let z = std::arch::x86_64::_mm512_setzero_ps();
    let mut acc = [z; FMA_ACC];
    for _ in 0..rounds {
        for i in 0..steps {
            if i < fb {
                fma_block(&mut acc, z);
            }
            if i < mix.products {
                match i % 4 {
                    0 => dp::<Hw, false, 0, 4, 5>(),
                    1 => dp::<Hw, false, 1, 4, 5>(),
                    2 => dp::<Hw, false, 2, 4, 5>(),
                    _ => dp::<Hw, false, 3, 4, 5>(),
                }
            }
            if i < mb {
                x = mul_block(x);
            }
        }
    }
    std::hint::black_box((x, acc));
    if tiles {
        Hw::release();
    }
}

/// What [`wake_probe`] measured for one gap: the mean time of a burst (four `tdpbf16ps` and
/// 256 FMAs) after the core spun idle for `gap_ns`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wake {
    pub gap_ns: f64,
    pub burst_ns: f64,
}

/// Measures, on the calling thread, what a burst of tile products costs after `gap_ns` of the
/// tile unit idle (see the module header), over `rounds` rounds; the TSC is converted to ns by
/// the run's own wall clock. AMX hosts only.
pub fn wake_probe(gap_ns: u64, rounds: usize) -> Result<Wake> {
    if rounds == 0 {
        return Err(Error::Shape("wake_probe: rounds must be at least 1".into()));
    }
    let caps = platform::cpu_caps();
    if caps.best_tier() != platform::CpuTier::Amx || !caps.avx512f {
        return Err(Error::Unsupported {
            needed: "AMX",
            have: caps.best_tier(),
        });
    }
    // SAFETY: AMX and AVX-512F are usable (checked above); only the tile configuration and
    // registers are touched.
    unsafe { wake_rounds(gap_ns, rounds) }
}

/// # Safety
/// AMX and AVX-512F are usable on this thread.
#[target_feature(enable = "avx512f")]
unsafe fn wake_rounds(gap_ns: u64, rounds: usize) -> Result<Wake> {
    use std::arch::x86_64::{_mm512_setzero_ps, _mm_pause, _rdtsc};
    resident_tiles();
    let z = _mm512_setzero_ps();
    let mut acc = [z; FMA_ACC];
    let burst = |acc: &mut [std::arch::x86_64::__m512; FMA_ACC]| {
        dp::<Hw, false, 0, 4, 5>();
        dp::<Hw, false, 1, 4, 5>();
        dp::<Hw, false, 2, 4, 5>();
        dp::<Hw, false, 3, 4, 5>();
        for _ in 0..8 {
            fma_block(acc, z);
        }
    };
    // TSC ticks a ns, from this run's own clock.
    let (t0, c0) = (std::time::Instant::now(), _rdtsc());
    let spin = |ticks: u64| {
        let g0 = _rdtsc();
        while _rdtsc().wrapping_sub(g0) < ticks {
            _mm_pause();
        }
    };
    spin(2_000_000);
    let per_ns = (_rdtsc() - c0) as f64 / t0.elapsed().as_nanos().max(1) as f64;
    let gap = (gap_ns as f64 * per_ns) as u64;
    let mut total = 0u64;
    for _ in 0..rounds {
        spin(gap);
        let a = _rdtsc();
        burst(&mut acc);
        total += _rdtsc().wrapping_sub(a);
    }
    std::hint::black_box(acc);
    Hw::release();
    Ok(Wake {
        gap_ns: gap_ns as f64,
        burst_ns: total as f64 / per_ns / rounds as f64,
    })
}

/// Loads the probes' tile configuration (every tile 16 rows × 64 bytes) and zeroes tiles 0–5:
/// four accumulators and the A and B tiles their products read.
///
/// # Safety
/// AMX is usable on this thread.
unsafe fn resident_tiles() {
    let mut cfg = TileConfig::palette1();
    for t in 0..8 {
        cfg.set(t, 16, 64);
    }
    Hw::config(&cfg);
    Hw::zero::<0>();
    Hw::zero::<1>();
    Hw::zero::<2>();
    Hw::zero::<3>();
    Hw::zero::<4>();
    Hw::zero::<5>();
}

macro_rules! fma16 {
    () => {
        concat!(
            "vfmadd231ps {a0}, {z}, {z}\n",
            "vfmadd231ps {a1}, {z}, {z}\n",
            "vfmadd231ps {a2}, {z}, {z}\n",
            "vfmadd231ps {a3}, {z}, {z}\n",
            "vfmadd231ps {a4}, {z}, {z}\n",
            "vfmadd231ps {a5}, {z}, {z}\n",
            "vfmadd231ps {a6}, {z}, {z}\n",
            "vfmadd231ps {a7}, {z}, {z}\n",
            "vfmadd231ps {a8}, {z}, {z}\n",
            "vfmadd231ps {a9}, {z}, {z}\n",
            "vfmadd231ps {a10}, {z}, {z}\n",
            "vfmadd231ps {a11}, {z}, {z}\n",
            "vfmadd231ps {a12}, {z}, {z}\n",
            "vfmadd231ps {a13}, {z}, {z}\n",
            "vfmadd231ps {a14}, {z}, {z}\n",
            "vfmadd231ps {a15}, {z}, {z}\n",
        )
    };
}

/// Accumulators of [`fma_block`]: 16 chains of 4-cycle FMAs give two ports twice the
/// independent work they need, so that the loop's own integer µops do not leave a port idle
/// (with 8 chains, exactly enough, the FMA-only round ran 22 % slower than a C probe's with the
/// same 8 chains, on one core of a 2-core Xeon VM with AMX; with 16 this probe runs 6–12 %
/// slower than that C probe on every mix of FMAs and tile products, the tile-only round
/// included, at the same ratios between mixes).
const FMA_ACC: usize = 16;

/// 32 independent 512-bit FMAs, `acc[j] += z · z` twice for each of 16 accumulators that stay
/// in registers from block to block (zeroing them in each block, as the first version did, cost
/// the FMA ports about a quarter of their rate on the GPU host: zeroing a zmm register takes a
/// vector port there).
///
/// # Safety
/// AVX-512F is present.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn fma_block(acc: &mut [std::arch::x86_64::__m512; FMA_ACC], z: std::arch::x86_64::__m512) {
    std::arch::asm!(
        fma16!(), fma16!(),
        a0 = inout(zmm_reg) acc[0], a1 = inout(zmm_reg) acc[1],
        a2 = inout(zmm_reg) acc[2], a3 = inout(zmm_reg) acc[3],
        a4 = inout(zmm_reg) acc[4], a5 = inout(zmm_reg) acc[5],
        a6 = inout(zmm_reg) acc[6], a7 = inout(zmm_reg) acc[7],
        a8 = inout(zmm_reg) acc[8], a9 = inout(zmm_reg) acc[9],
        a10 = inout(zmm_reg) acc[10], a11 = inout(zmm_reg) acc[11],
        a12 = inout(zmm_reg) acc[12], a13 = inout(zmm_reg) acc[13],
        a14 = inout(zmm_reg) acc[14], a15 = inout(zmm_reg) acc[15],
        z = in(zmm_reg) z,
        options(nostack, nomem),
    );
}

macro_rules! mul8 {
    () => {
        concat!(
            "imul {x}, {x}\n",
            "imul {x}, {x}\n",
            "imul {x}, {x}\n",
            "imul {x}, {x}\n",
            "imul {x}, {x}\n",
            "imul {x}, {x}\n",
            "imul {x}, {x}\n",
            "imul {x}, {x}\n",
        )
    };
}

/// 32 dependent 64-bit multiplies of `x` by itself.
#[inline(always)]
fn mul_block(mut x: u64) -> u64 {
    // SAFETY: registers only.
    unsafe {
        std::arch::asm!(
            mul8!(), mul8!(), mul8!(), mul8!(),
            x = inout(reg) x,
            options(nostack, nomem),
        );
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_rejects_partial_blocks_and_empty_rounds() {
        for mix in [
            Overlap {
                fmas: 48,
                products: 1,
                chain: 0,
            },
            Overlap {
                fmas: 0,
                products: 0,
                chain: 40,
            },
            Overlap {
                fmas: 0,
                products: 0,
                chain: 0,
            },
        ] {
            let e = overlap_ceiling(mix, 1).unwrap_err().to_string();
            assert!(e.contains("multiples of 32"), "{mix:?}: {e}");
        }
    }

    /// The wake probe runs where AMX exists (a burst takes some time), and says what is missing
    /// where it doesn't; no rounds is an error.
    #[test]
    fn wake_probe_runs_or_names_what_is_missing() {
        assert!(wake_probe(0, 0).is_err());
        match wake_probe(5_000, 200) {
            Ok(w) => assert!(w.burst_ns > 0.0 && w.gap_ns == 5_000.0, "{w:?}"),
            Err(Error::Unsupported { needed, .. }) => {
                eprintln!("wake probe: skipped, this machine lacks {needed}");
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// The probe runs where its instructions exist, and says what is missing where they don't.
    #[test]
    fn overlap_runs_or_names_what_is_missing() {
        let caps = platform::cpu_caps();
        for mix in [
            Overlap {
                fmas: 64,
                products: 0,
                chain: 32,
            },
            Overlap {
                fmas: 64,
                products: 2,
                chain: 32,
            },
        ] {
            match overlap_ceiling(mix, 3) {
                Ok(r) => assert_eq!(r, 3),
                Err(Error::Unsupported { needed, .. }) => {
                    assert!(!caps.avx512f || (mix.products > 0 && needed == "AMX"));
                    eprintln!("overlap ceiling {mix:?}: skipped, this machine lacks {needed}");
                }
                Err(e) => panic!("{mix:?}: {e}"),
            }
        }
        assert_eq!(
            Overlap {
                fmas: 128,
                products: 4,
                chain: 32
            }
            .ideal_cycles(),
            96
        );
    }
}
