//! Times one batched causal prefill attention call (many sequences of one length), the shape
//! a batch of prompts gives: `cargo run --release -p amx-kernels --example prefill_batch --
//! SEQS LEN HEADS KV_HEADS HEAD_DIM` (default: OPT-30B's 64 × 256, 56 heads of 128).
use amx_kernels::attention::{attention_prefill_bf16, AttnShape};
use half::bf16;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|x| {
            x.parse()
                .expect("numbers: SEQS LEN HEADS KV_HEADS HEAD_DIM")
        })
        .collect();
    let get = |i: usize, d: usize| a.get(i).copied().unwrap_or(d);
    let (seqs, len, h, hk, d) = (get(0, 64), get(1, 256), get(2, 56), get(3, 56), get(4, 128));
    let t = seqs * len;
    let fill = |n: usize, s: usize| -> Vec<bf16> {
        (0..n)
            .map(|i| bf16::from_f32((((i * 7 + s) % 97) as f32 - 48.0) / 100.0))
            .collect()
    };
    let (q, k, v) = (fill(t * h * d, 1), fill(t * hk * d, 2), fill(t * hk * d, 3));
    let cu: Vec<usize> = (0..=seqs).map(|s| s * len).collect();
    let shape = AttnShape {
        num_heads: h,
        num_kv_heads: hk,
        head_dim: d,
    };
    let mut out = vec![bf16::ZERO; t * h * d];
    let scale = 1.0 / (d as f32).sqrt();
    for rep in 0..3 {
        let t0 = std::time::Instant::now();
        attention_prefill_bf16(&q, &k, &v, &cu, &cu, shape, scale, &mut out).unwrap();
        let s = t0.elapsed().as_secs_f64();
        let flop = 4.0 * (seqs * h * d) as f64 * (len * (len + 1) / 2) as f64;
        println!(
            "rep {rep}: {seqs} x {len} tokens, {h}/{hk} heads x {d}: {:.1} ms, {:.2} TFLOP/s ({})",
            s * 1e3,
            flop / s / 1e12,
            platform::cpu_tier()
        );
    }
}
