//! The AMX tier of the paged decode segment: QKᵀ and PV of each block on the tile unit, the
//! online softmax on AVX-512, for one segment of one sequence over `nh` consecutive KV heads (the
//! same work, arguments and outputs as the ISPC segment function; see kernels/paged_decode.ispc
//! for the layouts). Written against [`Tiles`], so the same code runs on the hardware ([`Hw`])
//! and, in tests, on the tile emulator ([`Emu`]) of machines without AMX.
//!
//! Per run of up to [`RUN`] blocks of 16 tokens and KV head (`g` query heads, head_dim `d`):
//!
//! - `Sᵀ[16 tokens × g] = K · Qᵀ` for each block: K's rows as the cache stores them are the A
//!   tiles (16 tokens × 32 dims each), and Q, packed once per segment into VNNI pairs
//!   (`[16 dim pairs][g][2]` per 32 dims), the B tiles: `d / 32` `tdpbf16ps` into one
//!   accumulator, stored into the run's score buffer.
//! - The online softmax of every head over the run's scores (AVX-512: a gather per head and
//!   block, max, exp, sum); the weights rounded to bf16 into two A tiles per block, `P_even`
//!   (`[p, 0]` pairs) and `P_odd` (`[0, p]`).
//! - `O += P · V` with V's rows, as stored, the B tiles: `tdpbf16ps` sums the two members of
//!   each pair, so `P_even · V` adds `Σ_t p_t · V[t][2n]` to column `n` (the even dims of the
//!   32-dim chunk) and `P_odd · V` the odd dims. Each O chunk stays in tmm6/7 across the run's
//!   blocks. O (f32, `[nh·g][d]`, each 32-dim chunk stored as `[16 even][16 odd]`, the order the
//!   ISPC avx512 build's partial results use) lives in an L1-resident buffer between runs; a
//!   head's row is rescaled there when its running max moves.
//!
//! Every value written to memory by a tile store is read back once per run, not per block: the
//! first version went through memory between every step of every block and ran 2.4× slower than
//! the ISPC build per core (tile stores do not forward to later loads).
//!
//! Tiles (palette 1, one configuration for the segment):
//!
//! ```text
//! tmm0  Sᵀ         16 rows × g·4 B (f32)    tmm4  P_odd       g rows × 64 B (bf16 pairs)
//! tmm1  K chunk    16 rows × 64 B (32 dims) tmm5  V chunk     16 rows × 64 B (32 dims)
//! tmm2  Qᵀ chunk   16 rows × g·4 B (pairs)  tmm6  O even      g rows × 64 B (16 f32)
//! tmm3  P_even     g rows × 64 B            tmm7  O odd       g rows × 64 B
//! ```
//!
//! Tokens past the sequence's end in its last block are never loaded: that block's K and V rows
//! are copied into zero-padded buffers first (the cache's bytes there may be anything, NaN
//! included, and a NaN times a zero weight would poison O).

use std::arch::x86_64::*;

use amx_kernels::simd::{bf16_bits, exp512, lanes};
use amx_kernels::tile::TileConfig;
use amx_kernels::tile_ops::Tiles;

use super::{BLOCK_SIZE, MAX_CALL_ELEMS, MAX_CALL_HEADS};

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

#[repr(C, align(64))]
struct Scratch {
    /// Q in VNNI pairs: `[nh][d / 32][16][g][2]`.
    qpack: [u16; MAX_CALL_ELEMS],
    /// O, `[nh·g][d]` with each 32-dim chunk as `[16 even][16 odd]`.
    o: [f32; MAX_CALL_ELEMS],
    /// `Sᵀ` of one run of blocks and KV head, `[RUN · 16][g]`.
    s: [f32; RUN * BLOCK_SIZE * 16],
    /// `P_even`, `P_odd` of each block of the run: `[RUN][16 (g used)][16]` bf16 pairs as u32.
    pe: [u32; RUN * 16 * BLOCK_SIZE],
    po: [u32; RUN * 16 * BLOCK_SIZE],
    /// A sequence's partial last block, K and V rows zero-padded to 16.
    kpad: [u16; BLOCK_SIZE * super::MAX_HEAD_DIM],
    vpad: [u16; BLOCK_SIZE * super::MAX_HEAD_DIM],
    m: [f32; MAX_CALL_HEADS],
    l: [f32; MAX_CALL_HEADS],
}

/// Blocks per run: the scores of a run are stored and read back once, and each O chunk stays in
/// its tiles across the run's PV products (one O load and store per run, not per block).
const RUN: usize = 8;

/// Scores of one head for one block's 16 tokens out of `s` (`[tokens][g]`, from element `at`,
/// rows `g` apart), lanes of `live` only (-inf elsewhere).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn gather_scores(s: &[f32], at: usize, idx: __m512i, live: __mmask16) -> __m512 {
    _mm512_mask_i32gather_ps::<4>(
        _mm512_set1_ps(f32::NEG_INFINITY),
        live,
        idx,
        s.as_ptr().add(at),
    )
}

/// The segment's tiles (see the header): 16-row K, V and Sᵀ tiles, `g`-row P and O tiles.
fn config(g: usize) -> TileConfig {
    let mut c = TileConfig::palette1();
    let gb = 4 * g as u16;
    let g = g as u8;
    for (t, rows, colsb) in [
        (0, 16, gb),
        (1, 16, 64),
        (2, 16, gb),
        (3, g, 64),
        (4, g, 64),
        (5, 16, 64),
        (6, g, 64),
        (7, g, 64),
    ] {
        c.set(t, rows, colsb);
    }
    c
}

/// Runs one segment (see the module header).
///
/// # Safety
/// AVX-512 (F, BW, VL) is present; for [`amx_kernels::tile_ops::Hw`], AMX-BF16 is usable on
/// this thread. `a` describes memory as `run_checked` validates it: `g ≤ 16`, `nh·g ≤ 32`,
/// `nh·g·d ≤ 4096`, `d` a multiple of 32, every block id in range.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn segment<T: Tiles>(a: &SegArgs) {
    let (d, g, nh) = (a.d, a.g, a.nh);
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

    let mut sc: Scratch = std::mem::zeroed();
    let chunks = d / 32;
    for hh in 0..nh {
        for c in 0..chunks {
            for kp in 0..16 {
                for h in 0..g {
                    let src = a.q.add((hh * g + h) * d + 32 * c + 2 * kp);
                    let dst = (((hh * chunks + c) * 16 + kp) * g + h) * 2;
                    sc.qpack[dst] = *src;
                    sc.qpack[dst + 1] = *src.add(1);
                }
            }
        }
    }
    sc.m[..nh * g].fill(f32::NEG_INFINITY);

    let nblocks = a.ntok.div_ceil(BLOCK_SIZE);
    T::config(&config(g));
    let (k_row, o_row) = (2 * d, 4 * d); // bytes between rows
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(g as i32),
    );
    for b0 in (0..nblocks).step_by(RUN) {
        let b1 = (b0 + RUN).min(nblocks);
        for hh in 0..nh {
            // The run's K and V rows of this head: in place, or (a sequence's last block, when
            // it is partial) copied with zeroed rows past the end, so that no tile reads bytes
            // past the sequence (they may be anything, NaN included).
            let rows = |r: usize| -> (*const u8, *const u8) {
                let base = block(r) + hh * head_step;
                (
                    a.k_cache.add(base) as *const u8,
                    a.v_cache.add(base) as *const u8,
                )
            };
            let valid = |r: usize| (a.ntok - r * BLOCK_SIZE).min(BLOCK_SIZE);
            if valid(b1 - 1) < BLOCK_SIZE {
                let (kp, vp) = rows(b1 - 1);
                let n = valid(b1 - 1) * d;
                sc.kpad[n..16 * d].fill(0);
                sc.vpad[n..16 * d].fill(0);
                std::ptr::copy_nonoverlapping(kp as *const u16, sc.kpad.as_mut_ptr(), n);
                std::ptr::copy_nonoverlapping(vp as *const u16, sc.vpad.as_mut_ptr(), n);
            }
            let operands = |r: usize| -> (*const u8, *const u8) {
                if valid(r) < BLOCK_SIZE {
                    (sc.kpad.as_ptr() as *const u8, sc.vpad.as_ptr() as *const u8)
                } else {
                    rows(r)
                }
            };

            // Sᵀ = K · Qᵀ for every block of the run, into rows 16·(r - b0) of `s`.
            for r in b0..b1 {
                let (kp, _) = operands(r);
                if a.pf_ahead > 0 && r + RUN < nblocks {
                    let n = block(r + RUN) + hh * head_step;
                    for line in 0..a.pf_lines.min(head_step * 2 / 64) {
                        _mm_prefetch::<_MM_HINT_T1>(a.k_cache.add(n + line * 32) as *const i8);
                        _mm_prefetch::<_MM_HINT_T1>(a.v_cache.add(n + line * 32) as *const i8);
                    }
                }
                T::zero::<0>();
                for c in 0..chunks {
                    T::load::<1>(kp.add(64 * c), k_row);
                    T::load::<2>(
                        sc.qpack.as_ptr().add((hh * chunks + c) * 16 * g * 2) as *const u8,
                        4 * g,
                    );
                    T::dp_bf16::<0, 1, 2>();
                }
                T::store::<0>(
                    sc.s.as_mut_ptr().add((r - b0) * BLOCK_SIZE * g) as *mut u8,
                    4 * g,
                );
            }

            // Online softmax of each head over the run's scores; P as bf16 pairs per block.
            for h in 0..g {
                let row = hh * g + h;
                let m_old = sc.m[row];
                // The run's raw scores of this head, gathered once for both passes.
                let mut raw = [_mm512_setzero_ps(); RUN];
                let mut mx = f32::NEG_INFINITY;
                for r in b0..b1 {
                    let live = lanes(valid(r));
                    raw[r - b0] = gather_scores(&sc.s, (r - b0) * BLOCK_SIZE * g + h, idx, live);
                    let s = _mm512_mul_ps(raw[r - b0], _mm512_set1_ps(a.scale));
                    mx = mx.max(_mm512_mask_reduce_max_ps(live, s));
                }
                let m_new = m_old.max(mx);
                let mut sum = _mm512_setzero_ps();
                for r in b0..b1 {
                    let live = lanes(valid(r));
                    let x = _mm512_fmsub_ps(
                        raw[r - b0],
                        _mm512_set1_ps(a.scale),
                        _mm512_set1_ps(m_new),
                    );
                    let p = _mm512_maskz_mov_ps(live, exp512(x));
                    sum = _mm512_add_ps(sum, p);
                    // bf16 (nearest even) in the low half of each lane.
                    let pb = bf16_bits(p);
                    let at = ((r - b0) * 16 + h) * 16;
                    _mm512_store_si512(sc.pe.as_mut_ptr().add(at) as *mut _, pb);
                    _mm512_store_si512(
                        sc.po.as_mut_ptr().add(at) as *mut _,
                        _mm512_slli_epi32::<16>(pb),
                    );
                }
                let alpha = if m_old == f32::NEG_INFINITY {
                    0.0
                } else {
                    (m_old - m_new).exp()
                };
                sc.l[row] = sc.l[row] * alpha + _mm512_reduce_add_ps(sum);
                sc.m[row] = m_new;
                if alpha != 1.0 {
                    let o = sc.o.as_mut_ptr().add(row * d);
                    let al = _mm512_set1_ps(alpha);
                    for j in (0..d).step_by(16) {
                        _mm512_store_ps(o.add(j), _mm512_mul_ps(al, _mm512_load_ps(o.add(j))));
                    }
                }
            }

            // O += P · V over the run, each O chunk held in tmm6/7 across the run's blocks.
            for c in 0..chunks {
                let oe = sc.o.as_mut_ptr().add(hh * g * d + 32 * c) as *mut u8;
                let oo = oe.add(64);
                T::load::<6>(oe, o_row);
                T::load::<7>(oo, o_row);
                for r in b0..b1 {
                    let (_, vp) = operands(r);
                    let at = (r - b0) * 16 * 16;
                    T::load::<3>(sc.pe.as_ptr().add(at) as *const u8, 64);
                    T::load::<4>(sc.po.as_ptr().add(at) as *const u8, 64);
                    T::load::<5>(vp.add(64 * c), k_row);
                    T::dp_bf16::<6, 3, 5>();
                    T::dp_bf16::<7, 4, 5>();
                }
                T::store::<6>(oe, o_row);
                T::store::<7>(oo, o_row);
            }
        }
    }
    T::release();

    if !a.out.is_null() {
        for r in 0..nh * g {
            let inv = 1.0 / sc.l[r];
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
    } else {
        for hh in 0..nh {
            std::ptr::copy_nonoverlapping(
                sc.o.as_ptr().add(hh * g * d),
                a.part_o.add(hh * a.part_stride * d),
                g * d,
            );
            for h in 0..g {
                let ml = a.part_ml.add(hh * a.part_stride * 2 + 2 * h);
                *ml = sc.m[hh * g + h];
                *ml.add(1) = sc.l[hh * g + h];
            }
        }
    }
}
