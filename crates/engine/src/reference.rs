//! The plain reference forward: f32 arithmetic over the bf16 weights, whole prompts at once,
//! no KV cache, no placement. It is the twin every fast path of the engine is tested against,
//! and is itself tested against HF transformers' logits (tests/fixtures).

use rayon::prelude::*;

use crate::config::{Family, ModelConfig, OPT_POSITION_OFFSET};
use crate::weights::{LayerWeights, Tensor, Weights};

fn f32s(t: &Tensor) -> Vec<f32> {
    t.data.iter().map(|x| x.to_f32()).collect()
}

/// `y[t][o] = Σ_i x[t][i] · W[o][i] (+ b[o])` for `W` of shape `[out, in]`.
pub fn linear(x: &[f32], tokens: usize, w: &Tensor, b: Option<&Tensor>) -> Vec<f32> {
    let (out, inp) = (w.rows(), w.cols());
    assert_eq!(x.len(), tokens * inp);
    let wf = f32s(w);
    let bf = b.map(f32s);
    let mut y = vec![0f32; tokens * out];
    y.par_chunks_mut(out).enumerate().for_each(|(t, yr)| {
        let xr = &x[t * inp..(t + 1) * inp];
        for (o, yo) in yr.iter_mut().enumerate() {
            let wr = &wf[o * inp..(o + 1) * inp];
            let mut s = 0f64;
            for i in 0..inp {
                s += xr[i] as f64 * wr[i] as f64;
            }
            *yo = s as f32 + bf.as_ref().map_or(0.0, |b| b[o]);
        }
    });
    y
}

/// LayerNorm (with bias) or RMSNorm (without), per token row.
pub fn norm(cfg: &ModelConfig, x: &[f32], w: &Tensor, b: Option<&Tensor>) -> Vec<f32> {
    let h = cfg.hidden;
    let wf = f32s(w);
    let bf = b.map(f32s);
    let mut y = vec![0f32; x.len()];
    for (xr, yr) in x.chunks(h).zip(y.chunks_mut(h)) {
        match cfg.family {
            Family::Opt => {
                let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
                let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
                let inv = 1.0 / (var + cfg.norm_eps).sqrt();
                for i in 0..h {
                    yr[i] = ((xr[i] as f64 - mean) * inv) as f32 * wf[i]
                        + bf.as_ref().map_or(0.0, |b| b[i]);
                }
            }
            Family::Llama => {
                let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / h as f64;
                let inv = 1.0 / (ms + cfg.norm_eps).sqrt();
                for i in 0..h {
                    yr[i] = (xr[i] as f64 * inv) as f32 * wf[i];
                }
            }
        }
    }
    y
}

/// RoPE (HF's rotate-half convention) on `heads` heads of each token row, in place.
pub fn rope(cfg: &ModelConfig, x: &mut [f32], heads: usize, positions: &[usize]) {
    let d = cfg.head_dim;
    let inv = cfg.rope_inv_freq();
    for (t, &pos) in positions.iter().enumerate() {
        for hh in 0..heads {
            let base = (t * heads + hh) * d;
            for i in 0..d / 2 {
                let ang = pos as f64 * inv[i];
                let (s, c) = ang.sin_cos();
                let (a, b) = (x[base + i] as f64, x[base + i + d / 2] as f64);
                x[base + i] = (a * c - b * s) as f32;
                x[base + i + d / 2] = (b * c + a * s) as f32;
            }
        }
    }
}

/// Causal attention of one sequence over its own `tokens` positions, GQA.
/// `q: [tokens, heads, d]`, `k, v: [tokens, kv_heads, d]` → `[tokens, heads, d]`.
pub fn causal_attention(
    cfg: &ModelConfig,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tokens: usize,
) -> Vec<f32> {
    let (hq, hk, d) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
    let group = hq / hk;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0f32; tokens * hq * d];
    out.par_chunks_mut(hq * d)
        .enumerate()
        .for_each(|(t, orow)| {
            for h in 0..hq {
                let kh = h / group;
                let qv = &q[(t * hq + h) * d..][..d];
                let scores: Vec<f64> = (0..=t)
                    .map(|j| {
                        let kv = &k[(j * hk + kh) * d..][..d];
                        qv.iter()
                            .zip(kv)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    let mut acc = 0f64;
                    for (j, ej) in e.iter().enumerate() {
                        acc += ej * v[(j * hk + kh) * d + i] as f64;
                    }
                    orow[h * d + i] = (acc / z) as f32;
                }
            }
        });
    out
}

fn layer(cfg: &ModelConfig, lw: &LayerWeights, x: &mut [f32], tokens: usize) {
    let (h, qd, kd) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim());
    let a = norm(cfg, x, &lw.attn_norm_w, lw.attn_norm_b.as_ref());
    let qkv = linear(&a, tokens, &lw.qkv_w, lw.qkv_b.as_ref());
    let w = cfg.qkv_dim();
    let mut q: Vec<f32> = (0..tokens)
        .flat_map(|t| qkv[t * w..t * w + qd].to_vec())
        .collect();
    let mut k: Vec<f32> = (0..tokens)
        .flat_map(|t| qkv[t * w + qd..t * w + qd + kd].to_vec())
        .collect();
    let v: Vec<f32> = (0..tokens)
        .flat_map(|t| qkv[t * w + qd + kd..(t + 1) * w].to_vec())
        .collect();
    if cfg.family == Family::Llama {
        let pos: Vec<usize> = (0..tokens).collect();
        rope(cfg, &mut q, cfg.heads, &pos);
        rope(cfg, &mut k, cfg.kv_heads, &pos);
    }
    let att = causal_attention(cfg, &q, &k, &v, tokens);
    let o = linear(&att, tokens, &lw.o_w, lw.o_b.as_ref());
    x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
    let m = norm(cfg, x, &lw.mlp_norm_w, lw.mlp_norm_b.as_ref());
    let up = linear(&m, tokens, &lw.up_w, lw.up_b.as_ref());
    let act: Vec<f32> = match cfg.family {
        Family::Opt => up.iter().map(|&u| u.max(0.0)).collect(),
        Family::Llama => {
            let f = cfg.ffn;
            (0..tokens)
                .flat_map(|t| {
                    let r = &up[t * 2 * f..(t + 1) * 2 * f];
                    (0..f).map(move |i| {
                        let g = r[i] as f64;
                        (g / (1.0 + (-g).exp()) * r[f + i] as f64) as f32
                    })
                })
                .collect()
        }
    };
    let down = linear(&act, tokens, &lw.down_w, lw.down_b.as_ref());
    x.iter_mut().zip(&down).for_each(|(x, d)| *x += d);
    debug_assert_eq!(x.len(), tokens * h);
}

/// Logits `[tokens, vocab]` for every position of one prompt.
pub fn forward(w: &Weights, tokens: &[u32]) -> Vec<f32> {
    let cfg = &w.config;
    let h = cfg.hidden;
    let n = tokens.len();
    let mut x = vec![0f32; n * h];
    for (t, &tok) in tokens.iter().enumerate() {
        let row = &w.embed.data[tok as usize * h..][..h];
        for i in 0..h {
            x[t * h + i] = row[i].to_f32();
        }
        if let Some(p) = &w.positions {
            let prow = &p.data[(t + OPT_POSITION_OFFSET) * h..][..h];
            for i in 0..h {
                x[t * h + i] += prow[i].to_f32();
            }
        }
    }
    for lw in &w.layers {
        layer(cfg, lw, &mut x, n);
    }
    let xf = norm(cfg, &x, &w.final_norm_w, w.final_norm_b.as_ref());
    linear(&xf, n, w.lm_head(), None)
}
