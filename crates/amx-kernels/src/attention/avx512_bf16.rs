//! AVX-512F tier of the attention item kernel: f32 arithmetic straight on the bf16 layout (no
//! repacking), one row at a time, key blocks of 16 (one zmm of scores) with the online
//! softmax; bf16 widened to f32 by a 16-bit shift.
//!
//! Registers: the query row (`D/16` zmm, f32), one zmm of scores, the output row (`D/16` zmm).

use std::arch::x86_64::*;

use half::bf16;

use super::softmax_avx512::exp512;
use super::{Ctx, Item, MAX_HEAD_DIM};

/// 16 bf16 at `p` widened to f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load16(p: *const bf16) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
        _mm256_loadu_si256(p as *const __m256i),
    )))
}

/// See [`ItemKernel`](super::ItemKernel) for the contract.
pub(crate) unsafe fn attention_item_avx512_bf16(ctx: &Ctx, it: &Item, o: &mut [f32]) {
    let (d, group) = (ctx.shape.head_dim, ctx.shape.group());
    for (r, orow) in o.chunks_exact_mut(d).enumerate() {
        let (t, h) = it.row(r, group);
        row(
            ctx,
            it,
            ctx.q_row(it.seq, t, h),
            ctx.visible(it.seq, t),
            orow,
        );
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row(ctx: &Ctx, it: &Item, q: &[bf16], vis: usize, o: &mut [f32]) {
    let d = ctx.shape.head_dim;
    let nd = d / 16;
    let mut qf = [_mm512_setzero_ps(); MAX_HEAD_DIM / 16];
    let mut acc = [_mm512_setzero_ps(); MAX_HEAD_DIM / 16];
    for c in 0..nd {
        qf[c] = load16(q.as_ptr().add(c * 16));
    }
    let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
    for j0 in (0..vis).step_by(16) {
        let n = (vis - j0).min(16);
        let mut s = [f32::NEG_INFINITY; 16];
        for (j, sj) in s.iter_mut().enumerate().take(n) {
            let kr = ctx.kv_row(ctx.k, it.seq, j0 + j, it.kvh);
            let mut dot = _mm512_setzero_ps();
            for c in 0..nd {
                dot = _mm512_fmadd_ps(qf[c], load16(kr.as_ptr().add(c * 16)), dot);
            }
            *sj = _mm512_reduce_add_ps(dot) * ctx.scale;
        }
        let sv = _mm512_loadu_ps(s.as_ptr());
        let m_new = m.max(_mm512_reduce_max_ps(sv));
        let alpha = (m - m_new).exp();
        let mask = ((1u32 << n) - 1) as __mmask16;
        let p = _mm512_maskz_mov_ps(mask, exp512(_mm512_sub_ps(sv, _mm512_set1_ps(m_new))));
        l = l * alpha + _mm512_reduce_add_ps(p);
        m = m_new;
        let mut pj = [0f32; 16];
        _mm512_storeu_ps(pj.as_mut_ptr(), p);
        let av = _mm512_set1_ps(alpha);
        for a in acc.iter_mut().take(nd) {
            *a = _mm512_mul_ps(*a, av);
        }
        for (j, &pv) in pj.iter().enumerate().take(n) {
            let vr = ctx.kv_row(ctx.v, it.seq, j0 + j, it.kvh);
            let pb = _mm512_set1_ps(pv);
            for c in 0..nd {
                acc[c] = _mm512_fmadd_ps(pb, load16(vr.as_ptr().add(c * 16)), acc[c]);
            }
        }
    }
    let inv = _mm512_set1_ps(1.0 / l);
    for c in 0..nd {
        _mm512_storeu_ps(o.as_mut_ptr().add(c * 16), _mm512_mul_ps(acc[c], inv));
    }
}
