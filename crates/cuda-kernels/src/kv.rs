//! The paged KV cache's shape and the append of new tokens' K/V into it
//! (`kernels/kv/append.cu`).
//!
//! Layout (DESIGN.md), per layer, K and V alike: `[num_blocks][kv_heads][BLOCK_TOKENS][head_dim]`
//! bf16, identical on GPU and CPU, so moving a sequence between tiers copies whole blocks. A
//! token's slot is `block * BLOCK_TOKENS + offset`.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::launch::Launch;
use crate::position::HeadRows;
use crate::{check_len, grid_stride, shape_err, DeviceIds, Gpu, Result};

/// Tokens per KV block.
pub const BLOCK_TOKENS: usize = 16;

/// One layer's K (or V) cache: `[num_blocks][kv_heads][BLOCK_TOKENS][head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub num_blocks: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Elements of one block (all kv heads).
    pub fn block_elems(&self) -> usize {
        self.kv_heads * BLOCK_TOKENS * self.head_dim
    }

    /// Elements of the whole cache.
    pub fn elems(&self) -> usize {
        self.num_blocks * self.block_elems()
    }

    /// Index of element `d` of kv head `h` of slot `slot`.
    pub fn index(&self, slot: usize, h: usize, d: usize) -> usize {
        ((slot / BLOCK_TOKENS * self.kv_heads + h) * BLOCK_TOKENS + slot % BLOCK_TOKENS)
            * self.head_dim
            + d
    }

    pub(crate) fn check(&self, what: &'static str, k_cache: usize, v_cache: usize) -> Result<()> {
        if self.head_dim != 64 && self.head_dim != 128 {
            return Err(shape_err(format!(
                "{what}: head_dim {} is not 64 or 128",
                self.head_dim
            )));
        }
        check_len(what, self.elems(), k_cache)?;
        check_len(what, self.elems(), v_cache)
    }
}

fn check_append(
    what: &'static str,
    k: HeadRows,
    v: HeadRows,
    k_len: usize,
    v_len: usize,
    slots: usize,
    cache: KvShape,
) -> Result<()> {
    for (name, r, len) in [("k", k, k_len), ("v", v, v_len)] {
        if r.heads != cache.kv_heads || r.head_dim != cache.head_dim || r.tokens != k.tokens {
            return Err(shape_err(format!(
                "{what}: {name} rows are {} tokens x {} heads x {}, the cache holds {} heads x {}",
                r.tokens, r.heads, r.head_dim, cache.kv_heads, cache.head_dim
            )));
        }
        if r.token_stride % 8 != 0 {
            return Err(shape_err(format!(
                "{what}: {name} token stride {} is not a multiple of 8",
                r.token_stride
            )));
        }
        r.check(what, len)?;
    }
    if k.tokens * k.heads >= 1 << 32 {
        return Err(shape_err(format!(
            "{what}: {} tokens x {} heads exceed one launch",
            k.tokens, k.heads
        )));
    }
    check_len(what, k.tokens, slots)
}

/// Writes the new tokens' K and V (rows as `k` and `v` say) into the cache at `slots`
/// (`-1` skips a token: padding).
#[allow(clippy::too_many_arguments)]
pub fn kv_append_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    k: &impl DevicePtr<bf16>,
    k_rows: HeadRows,
    v: &impl DevicePtr<bf16>,
    v_rows: HeadRows,
    slots: &DeviceIds,
    cache: KvShape,
    k_cache: &mut impl DevicePtrMut<bf16>,
    v_cache: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    cache.check("kv_append_bf16", k_cache.len(), v_cache.len())?;
    check_append(
        "kv_append_bf16",
        k_rows,
        v_rows,
        k.len(),
        v.len(),
        slots.len(),
        cache,
    )?;
    slots.check_range(
        "kv_append_bf16: slots",
        -1,
        (cache.num_blocks * BLOCK_TOKENS) as i64,
    )?;
    if slots.is_empty() {
        return Ok(());
    }
    let f = gpu.function("kv_append_bf16")?;
    let (pk, _gk) = k.device_ptr(stream);
    let (pv, _gv) = v.device_ptr(stream);
    if pk % 16 != 0 || pv % 16 != 0 {
        return Err(shape_err(
            "kv_append_bf16: k and v must start 16-byte aligned (a multiple of 8 elements)",
        ));
    }
    let (ps, _gs) = slots.dev().device_ptr(stream);
    let (pkc, _gkc) = k_cache.device_ptr_mut(stream);
    let (pvc, _gvc) = v_cache.device_ptr_mut(stream);
    let (t, h, d) = (
        k_rows.tokens as i64,
        cache.kv_heads as i32,
        cache.head_dim as i32,
    );
    let (ks, vs) = (k_rows.token_stride as i64, v_rows.token_stride as i64);
    let mut b = Launch::new(gpu, stream, &f);
    b.arg(&t)
        .arg(&h)
        .arg(&d)
        .arg(&pk)
        .arg(&ks)
        .arg(&pv)
        .arg(&vs)
        .arg(&ps)
        .arg(&pkc)
        .arg(&pvc);
    // SAFETY: (tokens, heads, D, k, k_stride, v, v_stride, slots, k_cache, v_cache); k and v
    // cover every row, 16-byte aligned with strides of 8 elements (checked); every slot is -1
    // or inside the cache (checked).
    unsafe {
        b.launch(grid_stride(
            gpu,
            slots.len() * cache.kv_heads * cache.head_dim / 8,
        ))
    }?;
    Ok(())
}

/// Reference twin of [`kv_append_bf16`].
#[allow(clippy::too_many_arguments)]
pub fn kv_append_bf16_ref(
    k: &[bf16],
    k_rows: HeadRows,
    v: &[bf16],
    v_rows: HeadRows,
    slots: &[i32],
    cache: KvShape,
    k_cache: &mut [bf16],
    v_cache: &mut [bf16],
) -> Result<()> {
    cache.check("kv_append_bf16_ref", k_cache.len(), v_cache.len())?;
    check_append(
        "kv_append_bf16_ref",
        k_rows,
        v_rows,
        k.len(),
        v.len(),
        slots.len(),
        cache,
    )?;
    for (t, &s) in slots.iter().enumerate() {
        if s < 0 {
            continue;
        }
        if s as usize >= cache.num_blocks * BLOCK_TOKENS {
            return Err(crate::Error::IdRange {
                what: "kv_append_bf16_ref: slots",
                id: s as i64,
                bound: (cache.num_blocks * BLOCK_TOKENS) as i64,
            });
        }
        for h in 0..cache.kv_heads {
            for d in 0..cache.head_dim {
                let i = cache.index(s as usize, h, d);
                k_cache[i] = k[t * k_rows.token_stride + h * cache.head_dim + d];
                v_cache[i] = v[t * v_rows.token_stride + h * cache.head_dim + d];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use rand::seq::SliceRandom;

    #[test]
    fn gpu_kv_append_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream();
        for (tokens, hq, hkv, d, blocks) in [
            (1usize, 1usize, 1usize, 64usize, 1usize),
            (37, 32, 8, 128, 9),
            (50, 12, 12, 64, 40),
        ] {
            let cache = KvShape {
                num_blocks: blocks,
                kv_heads: hkv,
                head_dim: d,
            };
            let stride = (hq + 2 * hkv) * d;
            let qkv = rand_bf16(&mut rng, tokens * stride, -1.0, 1.0);
            let mut all: Vec<i32> = (0..(blocks * BLOCK_TOKENS) as i32).collect();
            all.shuffle(&mut rng);
            let mut slots: Vec<i32> = all[..tokens].to_vec();
            if tokens > 2 {
                slots[1] = -1; // padding
            }
            let kc0 = rand_bf16(&mut rng, cache.elems(), -1.0, 1.0);
            let vc0 = rand_bf16(&mut rng, cache.elems(), -1.0, 1.0);
            let dq = s.clone_htod(&qkv).unwrap();
            let ds = DeviceIds::upload(s, &slots).unwrap();
            let (mut dk, mut dv) = (s.clone_htod(&kc0).unwrap(), s.clone_htod(&vc0).unwrap());
            let rows = HeadRows {
                tokens,
                heads: hkv,
                head_dim: d,
                token_stride: stride,
            };
            let kv = dq.slice(hq * d..);
            let vv = dq.slice((hq + hkv) * d..);
            kv_append_bf16(&gpu, s, &kv, rows, &vv, rows, &ds, cache, &mut dk, &mut dv).unwrap();
            let (mut kc, mut vc) = (kc0.clone(), vc0.clone());
            kv_append_bf16_ref(
                &qkv[hq * d..],
                rows,
                &qkv[(hq + hkv) * d..],
                rows,
                &slots,
                cache,
                &mut kc,
                &mut vc,
            )
            .unwrap();
            // A copy: exact, and untouched slots keep their old values.
            assert_close("k cache", seed, &s.clone_dtoh(&dk).unwrap(), &kc, 0.0, 0.0);
            assert_close("v cache", seed, &s.clone_dtoh(&dv).unwrap(), &vc, 0.0, 0.0);
            let bad = DeviceIds::upload(s, &vec![(blocks * BLOCK_TOKENS) as i32; tokens]).unwrap();
            let e = kv_append_bf16(&gpu, s, &kv, rows, &vv, rows, &bad, cache, &mut dk, &mut dv)
                .unwrap_err();
            assert!(e.to_string().contains("slots"), "{e}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let cache = KvShape {
            num_blocks: 2,
            kv_heads: 1,
            head_dim: 64,
        };
        let (mut kc, mut vc) = (
            vec![bf16::ZERO; cache.elems()],
            vec![bf16::ZERO; cache.elems()],
        );
        let k = vec![bf16::ONE; 64];
        let rows = HeadRows::packed(1, 1, 64);
        assert!(kv_append_bf16_ref(&k, rows, &k, rows, &[32], cache, &mut kc, &mut vc).is_err());
        assert!(kv_append_bf16_ref(
            &k,
            HeadRows::packed(1, 2, 64),
            &k,
            rows,
            &[0],
            cache,
            &mut kc,
            &mut vc
        )
        .is_err());
        let odd = KvShape {
            head_dim: 96,
            ..cache
        };
        assert!(kv_append_bf16_ref(&k, rows, &k, rows, &[0], odd, &mut kc, &mut vc).is_err());
    }
}
