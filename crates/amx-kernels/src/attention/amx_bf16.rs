//! AMX tier of the attention item kernel: `S = Q·Kᵀ` and `O += P·V` with `tdpbf16ps`, the
//! online softmax between them on AVX-512 ([`softmax_avx512`](super::softmax_avx512)).
//!
//! One item is up to 16 rows (query × head pairs, gathered into a contiguous bf16 block) over
//! key blocks of 32. Tile allocation (palette 1, 64-byte rows; `r` = the item's rows):
//!
//! ```text
//! tmm0  S keys  0..16   r × 16 f32        tmm3  Kᵀ keys  0..16, dims 32·dc.. (16 pairs × 16 keys)
//! tmm1  S keys 16..32   r × 16 f32        tmm4  Kᵀ keys 16..32, dims 32·dc..
//! tmm2  Q dims 32·dc..  r × 32 bf16       tmm5  P             r × 32 bf16 (keys of the block)
//! tmm7  O dims 16·dj..  r × 16 f32        tmm6  V dims 16·dj.. (16 key pairs × 16 dims)
//! ```
//!
//! Per key block: S over `D/32` steps (Q reloaded from L1), S stored to a 32-wide f32 block,
//! softmax → P (bf16) and α; O (f32, in the caller's row buffer) rescaled by α, then for each of
//! the `D/16` dim chunks: load O, `O += P·V`, store O.

use std::arch::asm;

use half::bf16;

use super::softmax_avx512::{normalize_rows, online_block, rescale_rows, RowState};
use super::{Ctx, Item, KEY_BLOCK, ROW_BLOCK};
use crate::tile::TileConfig;

#[repr(C, align(64))]
struct Aligned<T>(T);

/// See [`ItemKernel`](super::ItemKernel) for the contract.
pub(crate) unsafe fn attention_item_amx_bf16(ctx: &Ctx, it: &Item, o: &mut [f32]) {
    let d = ctx.shape.head_dim;
    let rows = it.rows();
    let group = ctx.shape.group();
    let packed = ctx.packed.as_ref().expect("the AMX tier packs K and V");
    let sk = it.seq * ctx.shape.num_kv_heads + it.kvh;

    let mut qbuf = Aligned([bf16::ZERO; ROW_BLOCK * super::MAX_HEAD_DIM]);
    let mut vis = [0usize; 16];
    for r in 0..rows {
        let (t, h) = it.row(r, group);
        qbuf.0[r * d..(r + 1) * d].copy_from_slice(ctx.q_row(it.seq, t, h));
        vis[r] = ctx.visible(it.seq, t);
    }
    let max_vis = vis[..rows].iter().copied().max().unwrap_or(0);
    o.fill(0.0);

    let mut cfg = TileConfig::palette1();
    for t in [0, 1, 2, 5, 7] {
        cfg.set(t, rows as u8, 64);
    }
    for t in [3, 4, 6] {
        cfg.set(t, 16, 64);
    }
    // SAFETY: AMX is available (caller's contract); a valid palette-1 configuration.
    asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));

    let mut sbuf = Aligned([0f32; ROW_BLOCK * KEY_BLOCK]);
    let mut pbuf = Aligned([bf16::ZERO; ROW_BLOCK * KEY_BLOCK]);
    let mut st = RowState::new();
    let (q_stride, o_stride) = (d * 2, d * 4);
    for kb in 0..max_vis.div_ceil(KEY_BLOCK) {
        let blk = packed.block(sk, kb);
        let mut valid = [0usize; 16];
        for r in 0..rows {
            valid[r] = vis[r].saturating_sub(kb * KEY_BLOCK).min(KEY_BLOCK);
        }
        // SAFETY (tile blocks below): Q rows lie in qbuf (rows × D bf16), the Kᵀ and V tiles in
        // the packed block (D/8 tiles of 1 KiB), S in sbuf (rows × 32 f32), P in pbuf, O in
        // `o` (rows × D f32, the caller's contract).
        asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
        for dc in 0..d / 32 {
            asm!(
                "tileloadd tmm2, [{q} + {qs}*1]",
                "tileloadd tmm3, [{k0} + {ts}*1]",
                "tileloadd tmm4, [{k1} + {ts}*1]",
                "tdpbf16ps tmm0, tmm2, tmm3",
                "tdpbf16ps tmm1, tmm2, tmm4",
                q = in(reg) qbuf.0.as_ptr().add(dc * 32),
                qs = in(reg) q_stride,
                k0 = in(reg) packed.kt_tile(blk, dc, 0),
                k1 = in(reg) packed.kt_tile(blk, dc, 1),
                ts = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{s} + {ss}*1], tmm0",
            "tilestored [{s1} + {ss}*1], tmm1",
            s = in(reg) sbuf.0.as_mut_ptr(),
            s1 = in(reg) sbuf.0.as_mut_ptr().add(16),
            ss = in(reg) KEY_BLOCK * 4,
            options(nostack),
        );
        online_block(&sbuf.0, rows, &valid, ctx.scale, &mut st, &mut pbuf.0);
        if kb > 0 {
            rescale_rows(o, rows, d, &st.alpha);
        }
        asm!("tileloadd tmm5, [{p} + {ps}*1]", p = in(reg) pbuf.0.as_ptr(), ps = in(reg) KEY_BLOCK * 2, options(nostack, readonly));
        for dj in 0..d / 16 {
            asm!(
                "tileloadd tmm7, [{o} + {os}*1]",
                "tileloadd tmm6, [{v} + {ts}*1]",
                "tdpbf16ps tmm7, tmm5, tmm6",
                "tilestored [{o} + {os}*1], tmm7",
                o = in(reg) o.as_mut_ptr().add(dj * 16),
                os = in(reg) o_stride,
                v = in(reg) packed.v_tile(blk, dj),
                ts = in(reg) 64usize,
                options(nostack),
            );
        }
    }
    // SAFETY: releases this thread's tile state.
    asm!("tilerelease", options(nostack, nomem));
    normalize_rows(o, rows, d, &st);
}
