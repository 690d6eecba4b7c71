//! AMX tier of the attention item kernel: `S = Q·Kᵀ` and `O += P·V` with `tdpbf16ps`, the
//! online softmax between them on AVX-512 ([`softmax_rows`](super::softmax_rows)).
//!
//! An item is up to [`Tuning::rows`] rows (query × head pairs of one kv head), gathered into a
//! contiguous bf16 block padded with zero rows to a multiple of 32, its f32 output accumulators
//! beside it in a buffer of the thread. The loop runs over key blocks of [`Tuning::keys`] keys
//! (1 to 4 packed chunks of 32, see [`packed_kv`](super::packed_kv)); inside it over the
//! item's sub-blocks of 32 rows, so that each K/V block is read from the shared cache once per
//! item and then reused from the core's own caches by every sub-block. A sub-block skips the
//! key blocks and chunks past its last visible key (causal); only blocks that straddle its
//! diagonal are masked.
//!
//! Tile allocation (palette 1, every tile 16 rows × 64 bytes), per sub-block and key block:
//!
//! ```text
//! S = Q·Kᵀ, per chunk of 32 keys, over head_dim/32 steps:
//!   tmm0..3  S rows 0-15|16-31 × keys 0-15|16-31 (f32)   tmm4/5  Q rows 0-15 / 16-31
//!   tmm6/7   Kᵀ keys 0-15 / 16-31                         → 4 tdp per 4 loads, stored to S
//! O += P·V, per pair of 16-dim columns, over the chunks:
//!   tmm0..3  O rows 0-15|16-31 × dims 0-15|16-31 (f32)   tmm4/5  P rows 0-15 / 16-31
//!   tmm6/7   V dims 0-15 / 16-31                          → O loaded and stored once per
//!                                                            2×2 block, 4 tdp per chunk
//! ```

use std::cell::RefCell;

use half::bf16;

use super::softmax_rows::{normalize_rows, rescale_rows, softmax_sub, M_INIT};
use super::{Ctx, Item, KEY_BLOCK};
use crate::tile::TileConfig;
use crate::tile_ops::Tiles;

/// Rows of a sub-block: two tiles of 16.
pub(crate) const SUB: usize = 32;
/// Largest rows per item.
pub(crate) const MAX_ROWS: usize = 512;
/// Largest keys per block.
pub(crate) const MAX_KEYS: usize = 128;

/// The kernel's blocking, chosen per call (see `tuning` in the module above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tuning {
    /// Rows per item: a multiple of [`SUB`] up to [`MAX_ROWS`].
    pub rows: usize,
    /// Keys per block: 32, 64, 96 or 128.
    pub keys: usize,
    /// Prefetch the next K/V block into L2 while the current one is used.
    pub prefetch: bool,
}

/// One cache line of scratch (keeps the tile rows aligned).
#[repr(C, align(64))]
#[derive(Clone, Copy, Default)]
struct Line([f32; 16]);

thread_local! {
    /// Q rows, O accumulators, S and P of the item being computed on this thread.
    static SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

const FULL: u8 = 16;
const ROW_BYTES: u16 = 64;

/// See [`ItemKernel`](super::ItemKernel) for the contract; `K` runs the tile instructions
/// ([`Hw`](crate::tile_ops::Hw) on AMX, [`Emu`](crate::tile_ops::Emu) in tests).
pub(crate) unsafe fn attention_item_amx_bf16<K: Tiles>(ctx: &Ctx, it: &Item, o: &mut [f32]) {
    let tu = ctx.tuning;
    let d = ctx.shape.head_dim;
    let rows = it.rows();
    debug_assert!(rows > 0 && rows <= tu.rows && tu.rows <= MAX_ROWS);
    let rp = rows.next_multiple_of(SUB);
    let nsub = rp / SUB;
    let group = ctx.shape.group();
    let packed = ctx.packed.as_ref().expect("the AMX tier packs K and V");
    let sk = it.seq * ctx.shape.num_kv_heads + it.kvh;
    let (kb_keys, nkc_max) = (tu.keys, tu.keys / KEY_BLOCK);
    let c = ctx.scale * std::f32::consts::LOG2_E;

    // Scratch, in lines: Q (rp × d bf16), O (rp × d f32), S (32 × keys f32), P (32 × keys bf16).
    let (q_lines, o_lines, s_lines) = (rp * d / 32, rp * d / 16, SUB * kb_keys / 16);
    let total = q_lines + o_lines + s_lines + SUB * kb_keys / 32;
    crate::scratch::with_buf(&SCRATCH, total, |buf| {
        let base = buf.as_mut_ptr();
        let qb = base as *mut bf16;
        let ob = base.add(q_lines) as *mut f32;
        let sb = base.add(q_lines + o_lines) as *mut f32;
        let pb = base.add(q_lines + o_lines + s_lines) as *mut bf16;

        let mut vis = [0usize; MAX_ROWS];
        let mut m = [M_INIT; MAX_ROWS];
        let mut l = [0f32; MAX_ROWS];
        for r in 0..rp {
            let dst = std::slice::from_raw_parts_mut(qb.add(r * d), d);
            if r < rows {
                let (t, h) = it.row(r, group);
                dst.copy_from_slice(ctx.q_row(it.seq, t, h));
                vis[r] = ctx.visible(it.seq, t);
            } else {
                // Padding rows: zero queries with the last row's keys (finite, never written).
                dst.fill(bf16::ZERO);
                vis[r] = vis[rows - 1];
            }
        }
        std::slice::from_raw_parts_mut(ob, rp * d).fill(0.0);
        let mut minv = [0usize; MAX_ROWS / SUB];
        let mut maxv = [0usize; MAX_ROWS / SUB];
        for s in 0..nsub {
            let v = &vis[s * SUB..(s + 1) * SUB];
            minv[s] = *v.iter().min().unwrap();
            maxv[s] = *v.iter().max().unwrap();
        }
        let nkb = maxv[..nsub].iter().max().unwrap().div_ceil(kb_keys);
        // Lines of one packed chunk of 32 keys (Kᵀ then V tiles).
        let chunk_lines = KEY_BLOCK * d * 2 * 2 / 64;
        let n32 = {
            let (_, klen, _, _) = ctx.seq(it.seq);
            klen.div_ceil(KEY_BLOCK)
        };

        let mut cfg = TileConfig::palette1();
        for t in 0..8 {
            cfg.set(t, FULL, ROW_BYTES);
        }
        K::config(&cfg);
        let mut alpha = [1f32; SUB];
        let (qs_b, os_b) = (d * 2, d * 4);
        for kb in 0..nkb {
            let (k0, c0) = (kb * kb_keys, kb * nkc_max);
            // The next block's chunks, spread over the sub-blocks' iterations.
            let next = (kb + 1 < nkb && tu.prefetch).then(|| {
                let first = c0 + nkc_max;
                let chunks = nkc_max.min(n32 - first);
                (packed.block(sk, first) as *const u8, chunks * chunk_lines)
            });
            for s in 0..nsub {
                if let Some((p0, lines)) = next {
                    let per = lines.div_ceil(nsub);
                    for i in (s * per)..((s + 1) * per).min(lines) {
                        prefetch_l2(p0.add(i * 64));
                    }
                }
                if k0 >= maxv[s] {
                    continue;
                }
                let nkc = (maxv[s] - k0).div_ceil(KEY_BLOCK).min(nkc_max);
                let nk = nkc * KEY_BLOCK;
                let full = minv[s] >= k0 + nk;
                let r0 = s * SUB;
                let qs = qb.add(r0 * d);
                let (ss_b, ps_b) = (nk * 4, nk * 2);
                for kc in 0..nkc {
                    let blk = packed.block(sk, c0 + kc);
                    K::zero::<0>();
                    K::zero::<1>();
                    K::zero::<2>();
                    K::zero::<3>();
                    for dc in 0..d / 32 {
                        K::load::<4>(qs.add(dc * 32) as *const u8, qs_b);
                        K::load::<5>(qs.add(16 * d + dc * 32) as *const u8, qs_b);
                        K::load::<6>(packed.kt_tile(blk, dc, 0) as *const u8, 64);
                        K::load::<7>(packed.kt_tile(blk, dc, 1) as *const u8, 64);
                        K::dp_bf16::<0, 4, 6>();
                        K::dp_bf16::<1, 4, 7>();
                        K::dp_bf16::<2, 5, 6>();
                        K::dp_bf16::<3, 5, 7>();
                    }
                    let st = sb.add(kc * KEY_BLOCK);
                    K::store::<0>(st as *mut u8, ss_b);
                    K::store::<1>(st.add(16) as *mut u8, ss_b);
                    K::store::<2>(st.add(16 * nk) as *mut u8, ss_b);
                    K::store::<3>(st.add(16 * nk + 16) as *mut u8, ss_b);
                }
                let (vs, ms, ls) = (
                    &vis[r0..r0 + SUB],
                    &mut m[r0..r0 + SUB],
                    &mut l[r0..r0 + SUB],
                );
                let rescaled = if full {
                    softmax_sub::<true>(sb, nk, vs, k0, c, ms, ls, &mut alpha, pb)
                } else {
                    softmax_sub::<false>(sb, nk, vs, k0, c, ms, ls, &mut alpha, pb)
                };
                let os = ob.add(r0 * d);
                if rescaled && kb > 0 {
                    rescale_rows(os, d, &alpha);
                }
                if nkc == 1 {
                    K::load::<4>(pb as *const u8, ps_b);
                    K::load::<5>(pb.add(16 * nk) as *const u8, ps_b);
                }
                for dp in 0..d / 32 {
                    let o0 = os.add(dp * 32);
                    let o1 = os.add(16 * d + dp * 32);
                    K::load::<0>(o0 as *const u8, os_b);
                    K::load::<1>(o0.add(16) as *const u8, os_b);
                    K::load::<2>(o1 as *const u8, os_b);
                    K::load::<3>(o1.add(16) as *const u8, os_b);
                    for kc in 0..nkc {
                        if nkc > 1 {
                            K::load::<4>(pb.add(kc * KEY_BLOCK) as *const u8, ps_b);
                            K::load::<5>(pb.add(16 * nk + kc * KEY_BLOCK) as *const u8, ps_b);
                        }
                        let blk = packed.block(sk, c0 + kc);
                        K::load::<6>(packed.v_tile(blk, 2 * dp) as *const u8, 64);
                        K::load::<7>(packed.v_tile(blk, 2 * dp + 1) as *const u8, 64);
                        K::dp_bf16::<0, 4, 6>();
                        K::dp_bf16::<1, 4, 7>();
                        K::dp_bf16::<2, 5, 6>();
                        K::dp_bf16::<3, 5, 7>();
                    }
                    K::store::<0>(o0 as *mut u8, os_b);
                    K::store::<1>(o0.add(16) as *mut u8, os_b);
                    K::store::<2>(o1 as *mut u8, os_b);
                    K::store::<3>(o1.add(16) as *mut u8, os_b);
                }
            }
        }
        K::release();
        normalize_rows(ob, o, rows, d, &l);
    })
}

#[inline(always)]
unsafe fn prefetch_l2(p: *const u8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
}
