//! AVX512-BF16 tier of the attention item kernel: the AMX kernel's algorithm with `vdpbf16ps`
//! on the same packed K and V (see [`packed_kv`](super::packed_kv)): a Kᵀ tile row is, for 16
//! keys, one pair of dims, so `vdpbf16ps(bcast(Q pair), row)` adds 16 scores; a V tile row is,
//! for 16 dims, one pair of keys, so `vdpbf16ps(bcast(P pair), row)` adds to 16 outputs.
//!
//! Registers: per row, 2 zmm of scores (32 keys) while S is formed, then `D/16` zmm of output
//! while P·V is added (up to 8).

use std::arch::x86_64::*;

use half::bf16;

use super::softmax_avx512::{normalize_rows, online_block, rescale_rows, RowState};
use super::{Ctx, Item, KEY_BLOCK, ROW_BLOCK};

/// See [`ItemKernel`](super::ItemKernel) for the contract.
pub(crate) unsafe fn attention_item_avx512bf16_bf16(ctx: &Ctx, it: &Item, o: &mut [f32]) {
    let packed = ctx
        .packed
        .as_ref()
        .expect("the AVX512-BF16 tier packs K and V");
    let (d, rows, group) = (ctx.shape.head_dim, it.rows(), ctx.shape.group());
    let sk = it.seq * ctx.shape.num_kv_heads + it.kvh;
    let mut vis = [0usize; 16];
    for (r, v) in vis.iter_mut().enumerate().take(rows) {
        let (t, _) = it.row(r, group);
        *v = ctx.visible(it.seq, t);
    }
    let max_vis = vis[..rows].iter().copied().max().unwrap_or(0);
    o.fill(0.0);
    let mut sbuf = [0f32; ROW_BLOCK * KEY_BLOCK];
    let mut pbuf = [bf16::ZERO; ROW_BLOCK * KEY_BLOCK];
    let mut st = RowState::new();
    for kb in 0..max_vis.div_ceil(KEY_BLOCK) {
        let blk = packed.block(sk, kb);
        let mut valid = [0usize; 16];
        for r in 0..rows {
            valid[r] = vis[r].saturating_sub(kb * KEY_BLOCK).min(KEY_BLOCK);
            let (t, h) = it.row(r, group);
            scores(
                ctx.q_row(it.seq, t, h),
                packed,
                blk,
                d,
                &mut sbuf[r * KEY_BLOCK..],
            );
        }
        online_block(&sbuf, rows, &valid, ctx.scale, &mut st, &mut pbuf);
        if kb > 0 {
            rescale_rows(o, rows, d, &st.alpha);
        }
        for r in 0..rows {
            add_pv(
                &pbuf[r * KEY_BLOCK..],
                packed,
                blk,
                d,
                &mut o[r * d..(r + 1) * d],
            );
        }
    }
    normalize_rows(o, rows, d, &st);
}

/// 32 raw scores of one query row against a key block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn scores(
    q: &[bf16],
    packed: &super::packed_kv::PackedKv,
    blk: *const bf16,
    d: usize,
    s: &mut [f32],
) {
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for dc in 0..d / 32 {
        let (t0, t1) = (packed.kt_tile(blk, dc, 0), packed.kt_tile(blk, dc, 1));
        for p in 0..16 {
            let qp: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                (q.as_ptr().add(dc * 32 + 2 * p) as *const i32).read_unaligned(),
            ));
            s0 = _mm512_dpbf16_ps(
                s0,
                qp,
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    t0.add(p * 32) as *const _
                )),
            );
            s1 = _mm512_dpbf16_ps(
                s1,
                qp,
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    t1.add(p * 32) as *const _
                )),
            );
        }
    }
    _mm512_storeu_ps(s.as_mut_ptr(), s0);
    _mm512_storeu_ps(s.as_mut_ptr().add(16), s1);
}

/// `o += P·V` for one row: 32 bf16 probabilities against a key block's V tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn add_pv(
    p: &[bf16],
    packed: &super::packed_kv::PackedKv,
    blk: *const bf16,
    d: usize,
    o: &mut [f32],
) {
    for dj in 0..d / 16 {
        let vt = packed.v_tile(blk, dj);
        let mut acc = _mm512_loadu_ps(o.as_ptr().add(dj * 16));
        for i in 0..16 {
            let pp: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                (p.as_ptr().add(2 * i) as *const i32).read_unaligned(),
            ));
            acc = _mm512_dpbf16_ps(
                acc,
                pp,
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    vt.add(i * 32) as *const _
                )),
            );
        }
        _mm512_storeu_ps(o.as_mut_ptr().add(dj * 16), acc);
    }
}
