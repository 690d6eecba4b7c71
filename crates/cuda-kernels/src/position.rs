//! Position encodings (`kernels/position/*.cu`): rotary embeddings (LLaMA) applied in place to
//! Q and K before the KV append, and learned absolute positions (OPT) added to the embeddings.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, PushKernelArg};
use half::bf16;

use crate::launch::Launch;
use crate::{
    check_len, check_min_len, grid_stride, shape_err, strided_need, DeviceIds, Gpu, Result,
};

/// HF's `inv_freq` for plain RoPE: `rope_theta^(-2i/head_dim)` for `i < head_dim/2`, in f32 as
/// HF computes it. Scaled variants (llama3's `rope_scaling`) change this table only.
pub fn rope_inv_freq(rope_theta: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / rope_theta.powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Where the heads to rotate sit: `tokens` rows, row t at `t * token_stride`, each holding
/// `heads` heads of `head_dim` contiguous elements.
#[derive(Clone, Copy, Debug)]
pub struct HeadRows {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub token_stride: usize,
}

impl HeadRows {
    /// Packed rows: `token_stride = heads * head_dim`.
    pub fn packed(tokens: usize, heads: usize, head_dim: usize) -> Self {
        HeadRows {
            tokens,
            heads,
            head_dim,
            token_stride: heads * head_dim,
        }
    }

    pub(crate) fn check(&self, what: &'static str, len: usize) -> Result<()> {
        if self.token_stride < self.heads * self.head_dim {
            return Err(shape_err(format!(
                "{what}: token stride {} is less than heads {} x head_dim {}",
                self.token_stride, self.heads, self.head_dim
            )));
        }
        check_min_len(
            what,
            strided_need(self.tokens, self.heads * self.head_dim, self.token_stride),
            len,
        )
    }
}

fn check_rope(
    what: &'static str,
    x: HeadRows,
    len: usize,
    positions: usize,
    inv_freq: usize,
) -> Result<()> {
    if x.head_dim == 0 || x.head_dim % 2 != 0 {
        return Err(shape_err(format!(
            "{what}: head_dim {} must be even",
            x.head_dim
        )));
    }
    x.check(what, len)?;
    check_len(what, x.tokens, positions)?;
    check_len(what, x.head_dim / 2, inv_freq)
}

/// Rotates each head of `x` (laid out as `rows` says) by its token's position, in place.
pub fn rope_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    x: &mut impl DevicePtrMut<bf16>,
    rows: HeadRows,
    positions: &DeviceIds,
    inv_freq: &impl DevicePtr<f32>,
) -> Result<()> {
    check_rope("rope_bf16", rows, x.len(), positions.len(), inv_freq.len())?;
    positions.check_range("rope_bf16: positions", 0, i32::MAX as i64)?;
    let n = rows.tokens * rows.heads * rows.head_dim / 2;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function("rope_bf16")?;
    let (px, _gx) = x.device_ptr_mut(stream);
    let (pp, _gp) = positions.dev().device_ptr(stream);
    let (pf, _gf) = inv_freq.device_ptr(stream);
    let (t, h, d, ts) = (
        rows.tokens as i64,
        rows.heads as i32,
        rows.head_dim as i32,
        rows.token_stride as i64,
    );
    let mut b = Launch::new(gpu, stream, &f);
    b.arg(&t)
        .arg(&h)
        .arg(&d)
        .arg(&ts)
        .arg(&px)
        .arg(&pp)
        .arg(&pf);
    // SAFETY: (tokens, heads, D, token_stride, bf16* x, const int* positions, const float*
    // inv_freq); x covers every row (checked), positions has `tokens` ids, inv_freq D/2.
    unsafe { b.launch(grid_stride(gpu, n)) }?;
    Ok(())
}

/// Reference twin of [`rope_bf16`] (angles in f32 as HF computes them, rotation in f64).
pub fn rope_bf16_ref(
    x: &mut [bf16],
    rows: HeadRows,
    positions: &[i32],
    inv_freq: &[f32],
) -> Result<()> {
    check_rope(
        "rope_bf16_ref",
        rows,
        x.len(),
        positions.len(),
        inv_freq.len(),
    )?;
    let half = rows.head_dim / 2;
    for t in 0..rows.tokens {
        for h in 0..rows.heads {
            let base = t * rows.token_stride + h * rows.head_dim;
            for i in 0..half {
                let angle = (positions[t] as f32 * inv_freq[i]) as f64;
                let (s, c) = angle.sin_cos();
                let (a, b) = (
                    x[base + i].to_f32() as f64,
                    x[base + i + half].to_f32() as f64,
                );
                x[base + i] = bf16::from_f64(a * c - b * s);
                x[base + i + half] = bf16::from_f64(b * c + a * s);
            }
        }
    }
    Ok(())
}

fn check_positions(
    what: &'static str,
    tokens: usize,
    hidden: usize,
    hidden_len: usize,
    table_len: usize,
) -> Result<()> {
    check_len(what, tokens * hidden, hidden_len)?;
    if hidden == 0 || table_len % hidden != 0 {
        return Err(shape_err(format!(
            "{what}: table of {table_len} elements is not rows of hidden {hidden}"
        )));
    }
    Ok(())
}

/// OPT's learned positions: `hidden[t, :] += table[positions[t] + offset, :]`, with `table`
/// `[num_positions, hidden]` (OPT's offset is 2).
pub fn add_positions_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    hidden: &mut impl DevicePtrMut<bf16>,
    hidden_size: usize,
    table: &impl DevicePtr<bf16>,
    positions: &DeviceIds,
    offset: i32,
) -> Result<()> {
    let tokens = positions.len();
    check_positions(
        "add_positions_bf16",
        tokens,
        hidden_size,
        hidden.len(),
        table.len(),
    )?;
    let rows = (table.len() / hidden_size) as i64;
    positions.check_range(
        "add_positions_bf16: position + offset",
        -(offset as i64),
        rows - offset as i64,
    )?;
    if tokens == 0 {
        return Ok(());
    }
    let f = gpu.function("add_positions_bf16")?;
    let (ph, _gh) = hidden.device_ptr_mut(stream);
    let (pt, _gt) = table.device_ptr(stream);
    let (pp, _gp) = positions.dev().device_ptr(stream);
    let (t, h) = (tokens as i64, hidden_size as i64);
    let mut b = stream.launch_builder(&f);
    b.arg(&t).arg(&h).arg(&ph).arg(&pt).arg(&pp).arg(&offset);
    // SAFETY: (tokens, H, bf16* hidden, const bf16* table, const int* positions, offset); every
    // position + offset is a row of the table (checked above), hidden holds tokens*H.
    unsafe { b.launch(grid_stride(gpu, tokens * hidden_size / 8 + 1)) }?;
    Ok(())
}

pub fn add_positions_bf16_ref(
    hidden: &mut [bf16],
    hidden_size: usize,
    table: &[bf16],
    positions: &[i32],
    offset: i32,
) -> Result<()> {
    check_positions(
        "add_positions_bf16_ref",
        positions.len(),
        hidden_size,
        hidden.len(),
        table.len(),
    )?;
    let rows = table.len() / hidden_size;
    for (t, &p) in positions.iter().enumerate() {
        let r = p as i64 + offset as i64;
        if r < 0 || r >= rows as i64 {
            return Err(crate::Error::IdRange {
                what: "add_positions_bf16_ref: position + offset",
                id: r,
                bound: rows as i64,
            });
        }
        let src = &table[r as usize * hidden_size..][..hidden_size];
        for (x, y) in hidden[t * hidden_size..][..hidden_size].iter_mut().zip(src) {
            *x = bf16::from_f32(x.to_f32() + y.to_f32());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    /// GPU sincosf vs f64 sin_cos on the same f32 angle (~1 f32 ulp), f32 vs f64 rotation,
    /// then one bf16 rounding each: one bf16 step of the larger input at most, hence an
    /// absolute bound relative to the input range (|x| < 2) rather than the output.
    const ROPE_ATOL: f32 = 2.0 * BF16_ULP + 1e-5;

    #[test]
    fn gpu_rope_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream();
        for (tokens, hq, hkv, d) in [
            (1usize, 1usize, 1usize, 64usize),
            (7, 4, 2, 64),
            (33, 32, 8, 128),
        ] {
            // A packed QKV row: rotate q and k in place, v untouched.
            let stride = (hq + 2 * hkv) * d;
            let x0 = rand_bf16(&mut rng, tokens * stride, -2.0, 2.0);
            let pos: Vec<i32> = (0..tokens)
                .map(|_| rand::Rng::gen_range(&mut rng, 0..100_000))
                .collect();
            let inv = rope_inv_freq(500_000.0, d);
            let dpos = DeviceIds::upload(s, &pos).unwrap();
            let dinv = s.clone_htod(&inv).unwrap();
            let mut dx = s.clone_htod(&x0).unwrap();
            let q = HeadRows {
                tokens,
                heads: hq,
                head_dim: d,
                token_stride: stride,
            };
            let k = HeadRows { heads: hkv, ..q };
            rope_bf16(&gpu, s, &mut dx.slice_mut(..), q, &dpos, &dinv).unwrap();
            rope_bf16(&gpu, s, &mut dx.slice_mut(hq * d..), k, &dpos, &dinv).unwrap();
            let mut want = x0.clone();
            rope_bf16_ref(&mut want, q, &pos, &inv).unwrap();
            rope_bf16_ref(&mut want[hq * d..], k, &pos, &inv).unwrap();
            assert_close(
                "rope",
                seed,
                &s.clone_dtoh(&dx).unwrap(),
                &want,
                ROPE_ATOL,
                0.0,
            );
        }
    }

    #[test]
    fn gpu_learned_positions_match_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream();
        for (tokens, h) in [(1usize, 8usize), (5, 100), (40, 768)] {
            let table = rand_bf16(&mut rng, 130 * h, -1.0, 1.0);
            let x0 = rand_bf16(&mut rng, tokens * h, -1.0, 1.0);
            let pos: Vec<i32> = (0..tokens)
                .map(|_| rand::Rng::gen_range(&mut rng, 0..128))
                .collect();
            let dpos = DeviceIds::upload(s, &pos).unwrap();
            let dt = s.clone_htod(&table).unwrap();
            let mut dx = s.clone_htod(&x0).unwrap();
            add_positions_bf16(&gpu, s, &mut dx, h, &dt, &dpos, 2).unwrap();
            let mut want = x0.clone();
            add_positions_bf16_ref(&mut want, h, &table, &pos, 2).unwrap();
            // One f32 add, one rounding on both sides.
            assert_close(
                "positions",
                seed,
                &s.clone_dtoh(&dx).unwrap(),
                &want,
                0.0,
                0.0,
            );
            // Position 128 + 2 is past the table's 130 rows.
            let bad = DeviceIds::upload(s, &[128]).unwrap();
            let e =
                add_positions_bf16(&gpu, s, &mut dx.slice_mut(..h), h, &dt, &bad, 2).unwrap_err();
            assert!(e.to_string().contains("128"), "{e}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut x = vec![bf16::ONE; 64];
        let q = HeadRows::packed(1, 1, 64);
        assert!(rope_bf16_ref(&mut x, q, &[0, 1], &rope_inv_freq(1e4, 64)).is_err());
        assert!(rope_bf16_ref(
            &mut x,
            HeadRows::packed(2, 1, 64),
            &[0, 1],
            &rope_inv_freq(1e4, 64)
        )
        .is_err());
        let e = add_positions_bf16_ref(&mut x, 8, &[bf16::ONE; 16], &[0; 8], 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range"), "{e}");
    }
}
