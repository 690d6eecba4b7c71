//! Scalar tier of the attention item kernel (also what the AVX2 tier runs): plain f32 online
//! softmax, one key at a time, straight on the bf16 layout.

use super::{Ctx, Item};

/// See [`ItemKernel`](super::ItemKernel) for the contract.
pub(crate) unsafe fn attention_item_scalar_bf16(ctx: &Ctx, it: &Item, o: &mut [f32]) {
    let (d, group) = (ctx.shape.head_dim, ctx.shape.group());
    for (r, orow) in o.chunks_exact_mut(d).enumerate() {
        let (t, h) = it.row(r, group);
        let q = ctx.q_row(it.seq, t, h);
        let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
        orow.fill(0.0);
        for j in 0..ctx.visible(it.seq, t) {
            let kr = ctx.kv_row(ctx.k, it.seq, j, it.kvh);
            let s = q
                .iter()
                .zip(kr)
                .map(|(a, b)| a.to_f32() * b.to_f32())
                .sum::<f32>()
                * ctx.scale;
            let m_new = m.max(s);
            let (alpha, p) = ((m - m_new).exp(), (s - m_new).exp());
            l = l * alpha + p;
            m = m_new;
            let vr = ctx.kv_row(ctx.v, it.seq, j, it.kvh);
            for (x, v) in orow.iter_mut().zip(vr) {
                *x = *x * alpha + p * v.to_f32();
            }
        }
        orow.iter_mut().for_each(|x| *x /= l);
    }
}
