//! The AMX tier of the paged decode segment: QKᵀ and PV of each block on the tile unit, the
//! online softmax on AVX-512, for one segment of one sequence over `nh` consecutive KV heads (the
//! same work, arguments and outputs as the ISPC segment function; see kernels/paged_decode.ispc
//! for the layouts). Written against [`Tiles`], so the same code runs on the hardware ([`Hw`])
//! and, in tests, on the tile emulator ([`Emu`]) of machines without AMX.
//!
//! Per block of 16 tokens and KV head (`g` query heads, head_dim `d`):
//!
//! - `Sᵀ[16 tokens × g] = K · Qᵀ`: K's rows as the cache stores them are the A tiles (16 tokens ×
//!   32 dims each), and Q, packed once per segment into VNNI pairs (`[16 dim pairs][g][2]` per 32
//!   dims), the B tiles: `d / 32` `tdpbf16ps` into one accumulator.
//! - The online softmax of every head over the 16 scores (AVX-512: one gather per head, max, exp,
//!   sum); the weights rounded to bf16 into two A tiles per block, `P_even` (`[p, 0]` pairs) and
//!   `P_odd` (`[0, p]`).
//! - `O += P · V` with V's rows, as stored, the B tiles: `tdpbf16ps` sums the two members of
//!   each pair, so `P_even · V` adds `Σ_t p_t · V[t][2n]` to column `n` (the even dims of the
//!   32-dim chunk) and `P_odd · V` the odd dims. O (f32, `[nh·g][d]`, each 32-dim chunk stored as
//!   `[16 even][16 odd]`, the order the ISPC avx512 build's partial results use) stays in an
//!   L1-resident buffer; a head's row is rescaled there when its running max moves.
//!
//! Tiles (palette 1; `v` = valid tokens of the block, 16 but in a sequence's last block):
//!
//! ```text
//! tmm0  Sᵀ         v rows × g·4 B (f32)     tmm4  P_odd       g rows × v·4 B (bf16 pairs)
//! tmm1  K chunk    v rows × 64 B (32 dims)  tmm5  V chunk     v rows × 64 B (32 dims)
//! tmm2  Qᵀ chunk   16 rows × g·4 B (pairs)  tmm6  O even      g rows × 64 B (16 f32)
//! tmm3  P_even     g rows × v·4 B           tmm7  O odd       g rows × 64 B
//! ```
//!
//! Tokens past the sequence's end in its last block are never loaded: the tiles that hold them
//! are configured with `v` rows for that block (their bytes may be anything, NaN included).

use std::arch::x86_64::*;

use amx_kernels::simd::{exp512, lanes};
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
    /// `Sᵀ` of one block and KV head, `[16][g]`.
    s: [f32; BLOCK_SIZE * 16],
    /// `P_even`, `P_odd`: `[g][16]` bf16 pairs as u32.
    pe: [u32; 16 * BLOCK_SIZE],
    po: [u32; 16 * BLOCK_SIZE],
    m: [f32; MAX_CALL_HEADS],
    l: [f32; MAX_CALL_HEADS],
}

fn config(valid: usize, g: usize) -> TileConfig {
    let mut c = TileConfig::palette1();
    let (v, g) = (valid as u8, g as u8);
    c.set(0, v, 4 * g as u16);
    c.set(1, v, 64);
    c.set(2, 16, 4 * g as u16);
    c.set(3, g, 4 * v as u16);
    c.set(4, g, 4 * v as u16);
    c.set(5, v, 64);
    c.set(6, g, 64);
    c.set(7, g, 64);
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
            std::ptr::copy_nonoverlapping(a.new_k.add(hh * d), a.k_cache.add(off + hh * head_step), d);
            std::ptr::copy_nonoverlapping(a.new_v.add(hh * d), a.v_cache.add(off + hh * head_step), d);
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
    let mut configured = 0;
    let (k_row, o_row) = (2 * d, 4 * d); // bytes between rows
    for b in 0..nblocks {
        let valid = (a.ntok - b * BLOCK_SIZE).min(BLOCK_SIZE);
        if valid != configured {
            T::config(&config(valid, g));
            configured = valid;
        }
        let ahead = (a.pf_ahead > 0 && b + a.pf_ahead < nblocks).then(|| block(b + a.pf_ahead));
        for hh in 0..nh {
            let base = block(b) + hh * head_step;
            let kp = a.k_cache.add(base) as *const u8;
            let vp = a.v_cache.add(base) as *const u8;
            if let Some(n) = ahead {
                for line in 0..a.pf_lines.min(head_step * 2 / 64) {
                    let o = n + hh * head_step + line * 32;
                    _mm_prefetch::<_MM_HINT_T1>(a.k_cache.add(o) as *const i8);
                    _mm_prefetch::<_MM_HINT_T1>(a.v_cache.add(o) as *const i8);
                }
            }

            // Sᵀ = K · Qᵀ.
            T::zero::<0>();
            for c in 0..chunks {
                T::load::<1>(kp.add(64 * c), k_row);
                T::load::<2>(sc.qpack.as_ptr().add((hh * chunks + c) * 16 * g * 2) as *const u8, 4 * g);
                T::dp_bf16::<0, 1, 2>();
            }
            T::store::<0>(sc.s.as_mut_ptr() as *mut u8, 4 * g);

            // Online softmax of each head over the block's scores.
            let live = lanes(valid);
            let idx = _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(g as i32),
            );
            for h in 0..g {
                let r = hh * g + h;
                let s = _mm512_mask_i32gather_ps::<4>(
                    _mm512_set1_ps(f32::NEG_INFINITY),
                    live,
                    idx,
                    sc.s.as_ptr().add(h),
                );
                let s = _mm512_mul_ps(s, _mm512_set1_ps(a.scale));
                let m_old = sc.m[r];
                let m_new = m_old.max(_mm512_mask_reduce_max_ps(live, s));
                let p = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(s, _mm512_set1_ps(m_new))));
                let alpha = if m_old == f32::NEG_INFINITY { 0.0 } else { (m_old - m_new).exp() };
                sc.l[r] = sc.l[r] * alpha + _mm512_reduce_add_ps(p);
                sc.m[r] = m_new;
                if alpha != 1.0 {
                    let row = sc.o.as_mut_ptr().add(r * d);
                    let al = _mm512_set1_ps(alpha);
                    for j in (0..d).step_by(16) {
                        _mm512_store_ps(row.add(j), _mm512_mul_ps(al, _mm512_load_ps(row.add(j))));
                    }
                }
                // p ≥ 0 and finite: round to bf16 (nearest even) in the low half of each lane.
                let bits = _mm512_castps_si512(p);
                let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
                let pb = _mm512_srli_epi32::<16>(_mm512_add_epi32(
                    bits,
                    _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)),
                ));
                _mm512_store_si512(sc.pe.as_mut_ptr().add(16 * h) as *mut _, pb);
                _mm512_store_si512(sc.po.as_mut_ptr().add(16 * h) as *mut _, _mm512_slli_epi32::<16>(pb));
            }

            // O += P · V, even and odd dims of each 32-dim chunk.
            T::load::<3>(sc.pe.as_ptr() as *const u8, 64);
            T::load::<4>(sc.po.as_ptr() as *const u8, 64);
            for c in 0..chunks {
                let oe = sc.o.as_mut_ptr().add(hh * g * d + 32 * c) as *mut u8;
                let oo = oe.add(64);
                T::load::<5>(vp.add(64 * c), k_row);
                T::load::<6>(oe, o_row);
                T::load::<7>(oo, o_row);
                T::dp_bf16::<6, 3, 5>();
                T::dp_bf16::<7, 4, 5>();
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
                    for (i, x) in [row[32 * c + n], row[32 * c + 16 + n]].into_iter().enumerate() {
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
