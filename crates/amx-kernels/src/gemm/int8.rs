//! int8 GEMM: `C = epilogue((s_a[m] · s_w[n]) · Σ_k qa[m][k] · qw[n][k])` with the weight
//! quantized per output channel at load ([`PackedWeightI8`]) and the activations quantized per
//! row on each call ([`quantize_row_int8`]), integer accumulation in i32, then the same fused
//! epilogues as the bf16 GEMM.
//!
//! Tiers: AMX (`tdpbssd`, needs AMX-INT8), AVX-512 VNNI (`vpdpbusd`, on the avx512 and
//! avx512bf16 tiers when the CPU has VNNI), AVX2 (`vpmaddwd` on widened quads: the avx2 tier,
//! and AVX-512 CPUs without VNNI), scalar. The quantized
//! activations live in a buffer of the calling thread, grown once and reused: rows padded with
//! zeros to whole 64-deep tiles, or for the AMX tier the tile panel's layout itself (see
//! `amx_tiles`), so that the tiles read A with no copy between quantizing and the products.

use std::cell::RefCell;

use half::bf16;
use platform::CpuTier;

use super::amx_tiles::{
    gemm_amx, panel_bytes, panel_key, panel_offset, APrep, ASource, ASrc, Knobs, Line, ROW,
};
use super::pack::BLOCK_N;
use super::pack_int8::{quantize_row_int8, PackedWeightI8, BLOCK_K_INT8};
use super::{
    avx2_int8, avx512vnni_int8, check_args, run, scalar_int8, Blocking, Epilogue, Item, OutElem,
    Partials, SharedMut,
};
use crate::tile_ops::{Hw, Tiles};
use crate::{Error, Result};

/// Quantized activations handed to a block kernel.
pub(crate) struct QuantA<'a> {
    /// `[M][kpad]` int8, zero-padded past K.
    pub q: &'a [i8],
    pub kpad: usize,
    /// `[M]` per-row scales.
    pub scales: &'a [f32],
}

/// One int8 tier's block kernel: i32 accumulators of rows `m0 .. m0 + rows` × packed blocks
/// `pb0 .. pb1` into `c` (as i32 bits, row stride `(pb1 - pb0) · 16`).
pub(crate) type BlockKernelI8 = unsafe fn(
    a: &QuantA,
    m0: usize,
    rows: usize,
    w: &PackedWeightI8,
    pb0: usize,
    pb1: usize,
    c: &mut [f32],
);

/// Which int8 kernel a tier runs (`None`: the AMX driver), or an error when this CPU cannot
/// run that tier.
fn kernel_for(tier: CpuTier) -> Result<Option<BlockKernelI8>> {
    let caps = platform::cpu_caps();
    if !tier.available() {
        return Err(Error::Unsupported {
            needed: tier.name(),
            have: caps.best_tier(),
        });
    }
    Ok(Some(match tier {
        CpuTier::Amx if caps.amx_int8_usable() => return Ok(None),
        CpuTier::Amx => {
            return Err(Error::Unsupported {
                needed: "AMX-INT8",
                have: caps.best_tier(),
            })
        }
        CpuTier::Avx512Bf16 | CpuTier::Avx512 if caps.avx512_vnni => {
            avx512vnni_int8::gemm_block_avx512vnni_int8
        }
        CpuTier::Avx512Bf16 | CpuTier::Avx512 | CpuTier::Avx2 => avx2_int8::gemm_block_avx2_int8,
        CpuTier::Scalar => scalar_int8::gemm_block_scalar_int8,
    }))
}

/// The tier [`gemm_int8`] uses: `platform::cpu_tier()`, lowered to the VNNI twin where AMX
/// lacks INT8.
fn default_tier() -> CpuTier {
    let t = platform::cpu_tier();
    if t == CpuTier::Amx && !platform::cpu_caps().amx_int8_usable() {
        CpuTier::Avx512Bf16
    } else {
        t
    }
}

/// `out[M, out_cols] = epilogue(dequant(quant(A) · quant(W)ᵀ))` on the best tier. Operands as in
/// [`gemm_bf16`](super::gemm_bf16).
pub fn gemm_int8<O: OutElem>(
    a: &[bf16],
    m: usize,
    k: usize,
    w: &PackedWeightI8,
    out: &mut [O],
    ep: Epilogue,
) -> Result<()> {
    gemm_int8_on(default_tier(), a, m, k, w, out, ep)
}

thread_local! {
    /// The calling thread's quantized activations (in 64-byte lines, so that every row of
    /// whole tiles starts on a line and the AMX tiles can read them in place) and their scales.
    static QUANT: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    static QUANT_SCALES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Its second panel of quantized activations (`TANDEM_AMX_PANELS=2`).
    static QUANT2: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    /// A pool thread's row of A, quantized before it is copied into the AMX tile panel.
    static QUANT_ROW: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// [`gemm_int8`] on an explicit tier (tests and benches).
pub fn gemm_int8_on<O: OutElem>(
    tier: CpuTier,
    a: &[bf16],
    m: usize,
    k: usize,
    w: &PackedWeightI8,
    out: &mut [O],
    ep: Epilogue,
) -> Result<()> {
    let kernel = kernel_for(tier)?;
    let shape = w.shape();
    check_args(a, m, k, &shape, out.len(), &ep)?;
    if m == 0 {
        return Ok(());
    }
    let Some(kernel) = kernel else {
        let kn = Knobs::get();
        // SAFETY: check_args passed, m > 0, AMX-INT8 is usable (kernel_for) on every thread.
        unsafe { gemm_amx_int8::<Hw, O>(tier, kn, a, m, k, w, out, &ep) };
        return Ok(());
    };
    with_quantized(a, m, k, w.kb * BLOCK_K_INT8, |qa| {
        run(
            tier,
            Blocking::SIMD,
            m,
            &shape,
            out,
            &ep,
            Partials::I32,
            |it, c| {
                // SAFETY: check_args validated A (hence qa) against the weight and M; the plan
                // keeps m0 + rows ≤ M and pb0 < pb1 ≤ nblocks; c has rows · (pb1 - pb0) · 16
                // elements; kernel_for checked the tier.
                unsafe { kernel(qa, it.m0, it.rows, w, it.pb0, it.pb1, c) }
            },
            |it, c| dequantize_block(tier, qa, w, it, c),
        )
    });
    Ok(())
}

/// Runs `f` with A quantized per row into this thread's buffer: rows of `kpad` bytes
/// (`[M][kpad]`, zero-padded past K), one job a row on the pool ([`APrep::run_all`], which
/// books the pass as `Prep`).
fn with_quantized<R>(
    a: &[bf16],
    m: usize,
    k: usize,
    kpad: usize,
    f: impl FnOnce(&QuantA) -> R,
) -> R {
    crate::scratch::with_buf(&QUANT, (m * kpad).div_ceil(ROW), |lines| {
        // SAFETY: the lines hold at least `m · kpad` bytes, any bit pattern is an i8, and the
        // borrow of `lines` outlives this view.
        let q = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut i8, m * kpad) };
        crate::scratch::with_buf(&QUANT_SCALES, m, |scales| {
            let scales = &mut scales[..m];
            let (qd, sd) = (SharedMut(q.as_mut_ptr()), SharedMut(scales.as_mut_ptr()));
            let quantize = |r: usize| {
                // SAFETY: row r's kpad bytes of `q` and its scale are written by this job alone,
                // inside the m · kpad bytes and the m scales.
                unsafe {
                    let qr = std::slice::from_raw_parts_mut(qd.get().add(r * kpad), kpad);
                    sd.get().add(r).write(quantize_row(a, k, r, qr));
                }
            };
            APrep::new(m, &quantize).run_all(false);
            f(&QuantA { q, kpad, scales })
        })
    })
}

/// Row `r` of A (`k` wide) quantized into `qr` (zero-padded past K); its scale.
fn quantize_row(a: &[bf16], k: usize, r: usize, qr: &mut [i8]) -> f32 {
    let s = quantize_row_int8(&a[r * k..(r + 1) * k], &mut qr[..k]);
    qr[k..].fill(0);
    s
}

/// Runs `f(panel, scales, prep)` with this thread's buffers for A quantized straight into the
/// AMX GEMM's A panel of `kb` K tiles a group (see `amx_tiles`) and its `[M]` row scales, and
/// the jobs that write them (one row each: quantized into a line-aligned row buffer of its
/// thread, then copied into the panel while it is in L1), already run unless the knobs put
/// them in the items ([`APrep`]); with two panels ([`Knobs::panels`]) the calls alternate
/// between two buffers. `f` reads the buffers only after the jobs have run.
fn with_quantized_panel<R>(
    a: &[bf16],
    m: usize,
    k: usize,
    kb: usize,
    kn: &Knobs,
    f: impl FnOnce(*const u8, *const f32, &APrep) -> R,
) -> R {
    let kpad = kb * BLOCK_K_INT8;
    let key = panel_key(kn, &QUANT, &QUANT2);
    crate::scratch::with_buf(key, panel_bytes(m, kb).div_ceil(ROW), |lines| {
        let dst = SharedMut(lines.as_mut_ptr() as *mut u8);
        crate::scratch::with_buf(&QUANT_SCALES, m, |scales| {
            let sdst = SharedMut(scales.as_mut_ptr());
            let quantize = |r: usize| {
                crate::scratch::with_buf(&QUANT_ROW, kb, |row| {
                    // SAFETY: the row buffer holds kb lines = kpad bytes, any bit pattern is an
                    // i8, and the borrow of `row` outlives this view.
                    let qr = unsafe {
                        std::slice::from_raw_parts_mut(row.as_mut_ptr() as *mut i8, kpad)
                    };
                    let s = quantize_row(a, k, r, qr);
                    // SAFETY: row r's scale and its tiles in the panel are written by this job
                    // alone, inside the m scales and the panel_bytes(m, kb) bytes.
                    unsafe {
                        sdst.get().add(r).write(s);
                        for (t, line) in row[..kb].iter().enumerate() {
                            (dst.get().add(panel_offset(r, t, kb)) as *mut Line).write(*line);
                        }
                    }
                })
            };
            let prep = APrep::new(m, &quantize);
            if !kn.prep_in_items {
                prep.run_all(false);
            }
            f(dst.get() as *const u8, sdst.get() as *const f32, &prep)
        })
    })
}

/// The AMX int8 GEMM on tiles `T` (`tdpbssd`), the epilogue on `ep_tier`: A quantized (into the
/// tile panel, or with `TANDEM_AMX_A=copy|direct|auto` into rows, see [`ASrc`]), the shared
/// tile kernel, then dequantized per block.
///
/// # Safety
/// The arguments passed `check_args`, `m > 0`, the tiles `T` (with AMX-INT8 for `Hw`) are
/// usable on the pool's threads and `ep_tier` is available.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_amx_int8<T: Tiles, O: OutElem>(
    ep_tier: CpuTier,
    kn: &Knobs,
    a: &[bf16],
    m: usize,
    k: usize,
    w: &PackedWeightI8,
    out: &mut [O],
    ep: &Epilogue,
) {
    let kpad = w.kb * BLOCK_K_INT8;
    let mut amx = |src: &ASource, prep: &APrep, scales: *const f32| {
        let scales = SharedMut(scales as *mut f32);
        gemm_amx::<T, O, true>(
            ep_tier,
            kn,
            src,
            &w.shape(),
            w.block_ptr(0) as *const u8,
            w.kb * 1024,
            out,
            ep,
            prep,
            |it, c| {
                // SAFETY: the item's kernel ran after A's jobs (which wrote every scale);
                // m0 + rows ≤ M scales.
                let sa = unsafe { std::slice::from_raw_parts(scales.get().add(it.m0), it.rows) };
                dequantize(ep_tier, c, it.rows, it.pb0, it.pb1, sa, &w.scales)
            },
        )
    };
    let src = |a: *const i8, packed| ASource {
        a: a as *const u8,
        lda: kpad,
        row_bytes: kpad,
        m,
        kb: w.kb,
        packed,
    };
    if kn.a_src == ASrc::Panel {
        with_quantized_panel(a, m, k, w.kb, kn, |panel, scales, prep| {
            amx(&src(panel as *const i8, true), prep, scales)
        })
    } else {
        with_quantized(a, m, k, kpad, |qa| {
            amx(
                &src(qa.q.as_ptr(), false),
                &APrep::none(),
                qa.scales.as_ptr(),
            )
        })
    }
}

/// Item `it`'s i32 accumulators in `c` to f32, with its rows' scales of `qa` and its columns'
/// of `w`.
fn dequantize_block(tier: CpuTier, qa: &QuantA, w: &PackedWeightI8, it: &Item, c: &mut [f32]) {
    let sa = &qa.scales[it.m0..it.m0 + it.rows];
    dequantize(tier, c, it.rows, it.pb0, it.pb1, sa, &w.scales);
}

platform::tier_vectorized! {
    /// i32 accumulators (stored as bits in `c`) to f32 with the row and column scales, on the
    /// widest vectors `tier` allows.
    fn dequantize(c: &mut [f32], rows: usize, pb0: usize, pb1: usize, sa: &[f32], sw: &[f32]) {
        let ldc = (pb1 - pb0) * BLOCK_N;
        let sw = &sw[pb0 * BLOCK_N..pb1 * BLOCK_N];
        for (r, row) in c.chunks_exact_mut(ldc).take(rows).enumerate() {
            for (x, &s) in row.iter_mut().zip(sw) {
                *x = x.to_bits() as i32 as f32 * (sa[r] * s);
            }
        }
    }
}
