//! Measured ceilings of the AMX GEMM's micro-kernel, for the benches: the same instruction
//! stream as [`amx_tiles::micro`](super::amx_tiles) on every pool thread at once, with the
//! operands where the GEMM might find them.
//!
//! - [`Ceiling::Tdp`] / [`Ceiling::TdpInt8`]: four `tdpbf16ps` (`tdpbssd`) per step on
//!   registers only, no loads: the dot-product throughput.
//! - [`Ceiling::Tdp6`]: six independent accumulators on one A and one B tile, no loads: if it
//!   beats [`Ceiling::Tdp`], four chains in flight do not cover the instruction's latency.
//! - [`Ceiling::L1`]: the 2 × 2 micro-kernel, A and B cycling through 16 KiB each (L1).
//! - [`Ceiling::L2`]: the same over 512 KiB each (L2, past L1), no prefetch;
//!   [`Ceiling::L2Prefetch`]: with B and A prefetched two steps ahead.

use std::cell::RefCell;

use super::amx_tiles::{dp, micro, Line, Prefetch, A_STEP, TILE_BYTES};
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

/// K steps whose operands one ceiling cycles through.
fn span(kind: Ceiling) -> usize {
    match kind {
        Ceiling::Tdp | Ceiling::TdpInt8 | Ceiling::Tdp6 => 1,
        Ceiling::L1 => 8,
        Ceiling::L2 | Ceiling::L2Prefetch => 256,
    }
}

/// Runs `steps` K steps (rounded up to the ceiling's span) of the micro-kernel on every pool
/// thread at once; returns the operations done (2 per multiply-add, all threads).
pub fn amx_ceiling(kind: Ceiling, steps: usize) -> Result<u64> {
    if platform::cpu_caps().best_tier() != platform::CpuTier::Amx
        || (kind == Ceiling::TdpInt8 && !platform::cpu_caps().amx_int8_usable())
    {
        return Err(Error::Unsupported {
            needed: "AMX",
            have: platform::cpu_caps().best_tier(),
        });
    }
    let span = span(kind);
    let rounds = steps.div_ceil(span);
    let threads = platform::pool().broadcast(|_| {
        // A: span × 2 KiB, then B: two blocks of span × 1 KiB; values 1.0 (bf16) throughout.
        let lines = span * (A_STEP + 2 * TILE_BYTES) / 64;
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
            let b0 = a.wrapping_add(span * A_STEP);
            let b1 = b0.wrapping_add(span * TILE_BYTES);
            let mut cfg = TileConfig::palette1();
            for t in 0..8 {
                cfg.set(t, 16, 64);
            }
            // SAFETY: AMX is usable (checked above); every load stays inside buf (span steps).
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
                        Ceiling::L1 | Ceiling::L2 => {
                            micro::<Hw, false, true>(a, b0, b1, span, Prefetch::default())
                        }
                        Ceiling::L2Prefetch => micro::<Hw, false, true>(
                            a,
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
    let k_per_tile = if kind == Ceiling::TdpInt8 { 64 } else { 32 };
    let per_step = if kind == Ceiling::Tdp6 { 6 } else { 4 };
    Ok(threads * (rounds * span) as u64 * per_step * 16 * 16 * k_per_tile * 2)
}
