//! Causal prefill attention over a packed variable-length batch, two kernels with one
//! contract: `kernels/attention/prefill.cu` (FlashAttention-2 on `mma.sync` tensor cores, any
//! GPU from sm_80) and `kernels/attention/prefill_wgmma.cu` (Hopper's warpgroup `wgmma` fed by
//! TMA loads, from the sm_90a image, compute capability 9.0 only). Each file's header gives its
//! tiling and register layout.

use cudarc::driver::{
    sys, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use half::bf16;

use super::{gqa_group, LOG2E};
use crate::kv::{kv_append_bf16, KvShape};
use crate::position::HeadRows;
use crate::{shape_err, DeviceIds, Gpu, Result};

/// Query rows per block (both kernels' BR).
const BR: usize = 128;
/// Key rows per tile of the mma.sync kernel and its row padding (elements).
const BC: usize = 64;
const PAD: usize = 8;
/// Key rows per tile of the wgmma kernel and the depth of its K/V ring (`BC` and `STAGES` of
/// prefill_wgmma.cu); its shared memory is one Q tile, `WG_STAGES` K and V tiles, the ring's
/// barriers, and 1 KiB to align the tiles for the 128-byte swizzle.
const WG_BC: usize = 128;
const WG_STAGES: usize = 2;

fn wgmma_smem(d: usize) -> u32 {
    ((BR + 2 * WG_STAGES * WG_BC) * d * 2 + 8 * (2 + 4 * WG_STAGES) + 1024) as u32
}

/// A TMA descriptor (`TmaDesc` of tma.cuh), passed to the kernel by value.
#[repr(transparent)]
struct TensorMap(sys::CUtensorMap);

// SAFETY: a plain 128-byte, 64-byte-aligned C struct the kernel takes as a __grid_constant__
// parameter of the same size.
unsafe impl DeviceRepr for TensorMap {}

/// The wgmma kernel's view of q, k or v at `ptr`: a 2-D tensor of `heads · head_dim` bf16 by
/// `tokens` rows `token_stride` apart, read in 64 x 128 boxes with the 128-byte swizzle.
fn tensor_map(what: &str, ptr: u64, rows: HeadRows) -> Result<TensorMap> {
    let dims = [(rows.heads * rows.head_dim) as u64, rows.tokens as u64];
    let strides = [(rows.token_stride * 2) as u64];
    let boxes = [64u32, WG_BC as u32];
    let elem_strides = [1u32, 1];
    let mut m = sys::CUtensorMap { opaque: [0; 16] };
    // SAFETY: the arrays hold rank (2) entries, rank - 1 for the strides; the driver only
    // writes `m`. ptr is 16-byte aligned and the stride a multiple of 16 bytes (checked by the
    // caller).
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut m,
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(|e| shape_err(format!("{what}: TMA descriptor: {e}")))?;
    Ok(TensorMap(m))
}

/// Which prefill kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefillKernel {
    /// wgmma on compute capability 9.0 (2.0-2.3x the mma.sync kernel on an H100), mma.sync
    /// elsewhere; `TANDEM_PREFILL_KERNEL=mma` (or `wgmma`) forces one.
    Auto,
    /// `prefill.cu`, mma.sync.m16n8k16 (sm_80 and later).
    Mma,
    /// `prefill_wgmma.cu`, wgmma (compute capability 9.0).
    Wgmma,
}

impl PrefillKernel {
    /// `TANDEM_PREFILL_KERNEL`, read once: `Some(kernel)` when it names one, `None` when unset
    /// or empty, and the value itself when it names none.
    fn forced() -> std::result::Result<Option<PrefillKernel>, &'static str> {
        static F: std::sync::OnceLock<std::result::Result<Option<PrefillKernel>, String>> =
            std::sync::OnceLock::new();
        F.get_or_init(|| match std::env::var("TANDEM_PREFILL_KERNEL").as_deref() {
            Ok("mma") => Ok(Some(PrefillKernel::Mma)),
            Ok("wgmma") => Ok(Some(PrefillKernel::Wgmma)),
            Ok(other) if !other.is_empty() => Err(other.to_string()),
            _ => Ok(None),
        })
        .as_ref()
        .map(|k| *k)
        .map_err(|v| v.as_str())
    }

    /// The kernel that runs on `gpu`; asking for wgmma off Hopper is an error.
    pub fn pick(self, gpu: &Gpu) -> Result<PrefillKernel> {
        let hopper = gpu.compute_capability() == (9, 0);
        let k = match self {
            PrefillKernel::Auto => match Self::forced() {
                Ok(Some(k)) => k,
                Ok(None) if hopper => PrefillKernel::Wgmma,
                Ok(None) => PrefillKernel::Mma,
                Err(other) => {
                    return Err(shape_err(format!(
                        "TANDEM_PREFILL_KERNEL={other}: expected mma or wgmma"
                    )))
                }
            },
            k => k,
        };
        if k == PrefillKernel::Wgmma && !hopper {
            let (ma, mi) = gpu.compute_capability();
            return Err(shape_err(format!(
                "the wgmma prefill kernel needs compute capability 9.0 (this GPU is {ma}.{mi})"
            )));
        }
        Ok(k)
    }
}

/// Checks the packed batch: `cu_seqlens` starts at 0, never decreases and ends at the token
/// count; returns the longest sequence.
fn check(
    what: &'static str,
    q: HeadRows,
    k: HeadRows,
    v: HeadRows,
    lens: (usize, usize, usize, usize),
    cu: &[i32],
) -> Result<(usize, usize)> {
    let g = gqa_group(what, q, k.heads, k.head_dim)?;
    if v.heads != k.heads
        || v.head_dim != k.head_dim
        || k.tokens != q.tokens
        || v.tokens != q.tokens
    {
        return Err(shape_err(format!(
            "{what}: q, k and v disagree on tokens or kv heads"
        )));
    }
    q.check(what, lens.0)?;
    k.check(what, lens.1)?;
    v.check(what, lens.2)?;
    crate::check_len(what, q.tokens * q.heads * q.head_dim, lens.3)?;
    if cu.len() < 2
        || cu[0] != 0
        || *cu.last().unwrap() as usize != q.tokens
        || cu.windows(2).any(|w| w[1] < w[0])
    {
        return Err(shape_err(format!(
            "{what}: cu_seqlens must start at 0, never decrease and end at the {} tokens (got {} entries from {:?} to {:?})",
            q.tokens,
            cu.len(),
            cu.first(),
            cu.last()
        )));
    }
    let max_len = cu
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .max()
        .unwrap_or(0);
    Ok((g, max_len))
}

/// `out[t, h] = softmax(scale · q[t, h] · K_sᵀ + causal mask) · V_s` over the tokens of t's
/// sequence s (from `cu_seqlens`); q, k and v rows as their `HeadRows` say (strides of 8
/// elements, 16-byte aligned starts: a packed QKV row works), `out` packed `[tokens, q_heads,
/// head_dim]`. Runs [`PrefillKernel::Auto`].
#[allow(clippy::too_many_arguments)]
pub fn prefill_attention_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    q: &impl DevicePtr<bf16>,
    q_rows: HeadRows,
    k: &impl DevicePtr<bf16>,
    k_rows: HeadRows,
    v: &impl DevicePtr<bf16>,
    v_rows: HeadRows,
    cu_seqlens: &DeviceIds,
    scale: f32,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    prefill_attention_bf16_with(
        gpu,
        stream,
        q,
        q_rows,
        k,
        k_rows,
        v,
        v_rows,
        cu_seqlens,
        scale,
        out,
        PrefillKernel::Auto,
    )
}

/// [`prefill_attention_bf16`] with the kernel chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn prefill_attention_bf16_with(
    gpu: &Gpu,
    stream: &CudaStream,
    q: &impl DevicePtr<bf16>,
    q_rows: HeadRows,
    k: &impl DevicePtr<bf16>,
    k_rows: HeadRows,
    v: &impl DevicePtr<bf16>,
    v_rows: HeadRows,
    cu_seqlens: &DeviceIds,
    scale: f32,
    out: &mut impl DevicePtrMut<bf16>,
    kernel: PrefillKernel,
) -> Result<()> {
    let what = "prefill_attention_bf16";
    let (_, max_len) = check(
        what,
        q_rows,
        k_rows,
        v_rows,
        (q.len(), k.len(), v.len(), out.len()),
        cu_seqlens.host(),
    )?;
    let seqs = cu_seqlens.len() - 1;
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(shape_err(format!(
            "{what}: softmax scale {scale} must be positive and finite"
        )));
    }
    if q_rows.tokens == 0 {
        return Ok(());
    }
    if seqs > 65535 || q_rows.heads > 65535 {
        return Err(shape_err(format!(
            "{what}: {seqs} sequences x {} heads exceed one launch's grid",
            q_rows.heads
        )));
    }
    let d = q_rows.head_dim;
    let (pq, _gq) = q.device_ptr(stream);
    let (pk, _gk) = k.device_ptr(stream);
    let (pv, _gv) = v.device_ptr(stream);
    let (po, _go) = out.device_ptr_mut(stream);
    let aligned = [pq, pk, pv, po].iter().all(|p| p % 16 == 0)
        && [q_rows, k_rows, v_rows]
            .iter()
            .all(|r| r.token_stride % 8 == 0);
    if !aligned {
        return Err(shape_err(format!(
            "{what}: q, k, v and out must start 16-byte aligned with token strides of 8 elements"
        )));
    }
    let (pc, _gc) = cu_seqlens.dev().device_ptr(stream);
    let os = (q_rows.heads * d) as i64;
    let (hq, hkv, scale_log2) = (q_rows.heads as i32, k_rows.heads as i32, scale * LOG2E);
    let q_tiles = max_len.div_ceil(BR).max(1);
    if kernel.pick(gpu)? == PrefillKernel::Wgmma {
        // Work items (head, sequence, query tile), walked longest first by one persistent
        // block per multiprocessor (fewer when there are fewer items).
        let items = q_rows.heads * seqs * q_tiles;
        if items > i32::MAX as usize {
            return Err(shape_err(format!(
                "{what}: {items} query tiles exceed the kernel's 32-bit work index"
            )));
        }
        let (n_seqs, max_qt) = (seqs as i32, q_tiles as i32);
        let name = if d == 64 {
            "prefill_attention_wgmma_bf16_d64"
        } else {
            "prefill_attention_wgmma_bf16_d128"
        };
        let smem = wgmma_smem(d);
        let f = gpu.function_with_smem(name, smem)?;
        let (tq, tk, tv) = (
            tensor_map(what, pq, q_rows)?,
            tensor_map(what, pk, k_rows)?,
            tensor_map(what, pv, v_rows)?,
        );
        let cfg = LaunchConfig {
            grid_dim: ((items as u32).min(gpu.sms()).max(1), 1, 1),
            block_dim: (384, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut b = stream.launch_builder(&f);
        b.arg(&tq).arg(&tk).arg(&tv).arg(&pc).arg(&hq).arg(&hkv);
        b.arg(&n_seqs)
            .arg(&max_qt)
            .arg(&scale_log2)
            .arg(&po)
            .arg(&os);
        // SAFETY: arguments in the kernel's order and types; the descriptors cover exactly the
        // token rows of q, k and v (their lengths checked), out holds tokens*Hq*D (checked);
        // cu_seqlens is monotonic from 0 to tokens (checked on the host copy), so every row a
        // block stores is inside the batch; alignment checked above.
        unsafe { b.launch(cfg) }?;
        return Ok(());
    }
    let smem = (2 * 2 * BC * (d + PAD) * 2) as u32;
    let name = if d == 64 {
        "prefill_attention_bf16_d64"
    } else {
        "prefill_attention_bf16_d128"
    };
    let f = gpu.function_with_smem(name, smem)?;
    let (qs, ks, vs) = (
        q_rows.token_stride as i64,
        k_rows.token_stride as i64,
        v_rows.token_stride as i64,
    );
    let cfg = LaunchConfig {
        grid_dim: (q_tiles as u32, q_rows.heads as u32, seqs as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: smem,
    };
    let mut b = stream.launch_builder(&f);
    b.arg(&pq)
        .arg(&qs)
        .arg(&pk)
        .arg(&ks)
        .arg(&pv)
        .arg(&vs)
        .arg(&pc)
        .arg(&hq)
        .arg(&hkv)
        .arg(&scale_log2);
    b.arg(&po).arg(&os);
    // SAFETY: arguments in the kernel's order and types; q, k, v cover every token row and out
    // holds tokens*Hq*D (checked); cu_seqlens is monotonic from 0 to tokens (checked on the
    // host copy), so every row a block touches is inside the batch; alignment checked above.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// [`prefill_attention_bf16`] preceded by [`kv_append_bf16`] of the new tokens' K and V into
/// the paged cache at `slots`, on the same stream.
#[allow(clippy::too_many_arguments)]
pub fn prefill_attention_append_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    q: &impl DevicePtr<bf16>,
    q_rows: HeadRows,
    k: &impl DevicePtr<bf16>,
    k_rows: HeadRows,
    v: &impl DevicePtr<bf16>,
    v_rows: HeadRows,
    cu_seqlens: &DeviceIds,
    scale: f32,
    out: &mut impl DevicePtrMut<bf16>,
    slots: &DeviceIds,
    cache: KvShape,
    k_cache: &mut impl DevicePtrMut<bf16>,
    v_cache: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    check(
        "prefill_attention_append_bf16",
        q_rows,
        k_rows,
        v_rows,
        (q.len(), k.len(), v.len(), out.len()),
        cu_seqlens.host(),
    )?;
    kv_append_bf16(
        gpu, stream, k, k_rows, v, v_rows, slots, cache, k_cache, v_cache,
    )?;
    prefill_attention_bf16(
        gpu, stream, q, q_rows, k, k_rows, v, v_rows, cu_seqlens, scale, out,
    )
}

/// Reference twin of [`prefill_attention_bf16`], f64 softmax and sums.
#[allow(clippy::too_many_arguments)]
pub fn prefill_attention_bf16_ref(
    q: &[bf16],
    q_rows: HeadRows,
    k: &[bf16],
    k_rows: HeadRows,
    v: &[bf16],
    v_rows: HeadRows,
    cu_seqlens: &[i32],
    scale: f32,
    out: &mut [bf16],
) -> Result<()> {
    let (g, _) = check(
        "prefill_attention_bf16_ref",
        q_rows,
        k_rows,
        v_rows,
        (q.len(), k.len(), v.len(), out.len()),
        cu_seqlens,
    )?;
    let d = q_rows.head_dim;
    let row = |x: &'_ [bf16], r: HeadRows, t: usize, h: usize| -> Vec<f64> {
        x[t * r.token_stride + h * d..][..d]
            .iter()
            .map(|v| v.to_f32() as f64)
            .collect()
    };
    for w in cu_seqlens.windows(2) {
        let (start, end) = (w[0] as usize, w[1] as usize);
        for h in 0..q_rows.heads {
            let keys: Vec<Vec<f64>> = (start..end).map(|t| row(k, k_rows, t, h / g)).collect();
            let vals: Vec<Vec<f64>> = (start..end).map(|t| row(v, v_rows, t, h / g)).collect();
            for t in start..end {
                let qv = row(q, q_rows, t, h);
                let n = t - start + 1;
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        qv.iter().zip(&keys[j]).map(|(a, b)| a * b).sum::<f64>() * scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let l: f64 = p.iter().sum();
                for i in 0..d {
                    let acc: f64 = (0..n).map(|j| p[j] * vals[j][i]).sum();
                    out[(t * q_rows.heads + h) * d + i] = bf16::from_f64(acc / l);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{kv_append_bf16_ref, BLOCK_TOKENS};
    use crate::testutil::*;

    /// The kernel rounds the softmax weights P to bf16 before the P·V tensor-core product
    /// (relative error 2^-9 per weight, as FlashAttention does) and the output once more; with
    /// V in [-1, 1] the two together stay under 2^-7.
    const PREFILL_ATOL: f32 = 1.0 / 128.0;

    #[allow(clippy::too_many_arguments)]
    fn case(
        gpu: &Gpu,
        kernel: PrefillKernel,
        rng: &mut rand::rngs::StdRng,
        seed: u64,
        lens: &[usize],
        hq: usize,
        hkv: usize,
        d: usize,
    ) {
        let s = gpu.stream();
        let tokens: usize = lens.iter().sum();
        let mut cu = vec![0i32];
        for &l in lens {
            cu.push(cu.last().unwrap() + l as i32);
        }
        // A packed QKV buffer, as one fused projection writes it.
        let stride = (hq + 2 * hkv) * d;
        let qkv = rand_bf16(rng, tokens * stride, -1.0, 1.0);
        let q_rows = HeadRows {
            tokens,
            heads: hq,
            head_dim: d,
            token_stride: stride,
        };
        let kv_rows = HeadRows {
            heads: hkv,
            ..q_rows
        };
        let dqkv = s.clone_htod(&qkv).unwrap();
        let dcu = DeviceIds::upload(s, &cu).unwrap();
        let mut dout = s.clone_htod(&poisoned(tokens * hq * d)).unwrap();
        let scale = 1.0 / (d as f32).sqrt();
        let cache = KvShape {
            num_blocks: tokens.div_ceil(BLOCK_TOKENS) + 1,
            kv_heads: hkv,
            head_dim: d,
        };
        let slots: Vec<i32> = (0..tokens as i32).map(|t| t + 3).collect();
        let dslots = DeviceIds::upload(s, &slots).unwrap();
        let kc0 = rand_bf16(rng, cache.elems(), -1.0, 1.0);
        let (mut dkc, mut dvc) = (s.clone_htod(&kc0).unwrap(), s.clone_htod(&kc0).unwrap());
        let (qv, kv, vv) = (
            dqkv.slice(..),
            dqkv.slice(hq * d..),
            dqkv.slice((hq + hkv) * d..),
        );
        if kernel == PrefillKernel::Auto {
            prefill_attention_append_bf16(
                gpu, s, &qv, q_rows, &kv, kv_rows, &vv, kv_rows, &dcu, scale, &mut dout, &dslots,
                cache, &mut dkc, &mut dvc,
            )
            .unwrap();
        } else {
            kv_append_bf16(
                gpu, s, &kv, kv_rows, &vv, kv_rows, &dslots, cache, &mut dkc, &mut dvc,
            )
            .unwrap();
            prefill_attention_bf16_with(
                gpu, s, &qv, q_rows, &kv, kv_rows, &vv, kv_rows, &dcu, scale, &mut dout, kernel,
            )
            .unwrap();
        }
        let mut want = vec![bf16::ZERO; tokens * hq * d];
        let (qh, kh, vh) = (&qkv[..], &qkv[hq * d..], &qkv[(hq + hkv) * d..]);
        prefill_attention_bf16_ref(qh, q_rows, kh, kv_rows, vh, kv_rows, &cu, scale, &mut want)
            .unwrap();
        let what = format!("prefill {kernel:?} lens {lens:?} hq {hq} hkv {hkv} d {d}");
        assert_close(
            &what,
            seed,
            &s.clone_dtoh(&dout).unwrap(),
            &want,
            PREFILL_ATOL,
            0.0,
        );
        let (mut kc, mut vc) = (kc0.clone(), kc0.clone());
        kv_append_bf16_ref(kh, kv_rows, vh, kv_rows, &slots, cache, &mut kc, &mut vc).unwrap();
        assert_close(
            "prefill k cache",
            seed,
            &s.clone_dtoh(&dkc).unwrap(),
            &kc,
            0.0,
            0.0,
        );
        assert_close(
            "prefill v cache",
            seed,
            &s.clone_dtoh(&dvc).unwrap(),
            &vc,
            0.0,
            0.0,
        );
    }

    #[test]
    fn gpu_prefill_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let mut kernels = vec![PrefillKernel::Auto, PrefillKernel::Mma];
        if gpu.compute_capability() == (9, 0) {
            kernels.push(PrefillKernel::Wgmma);
        } else {
            println!(
                "SKIP wgmma prefill cases: compute capability {:?} is not 9.0",
                gpu.compute_capability()
            );
        }
        for kernel in kernels {
            case(&gpu, kernel, &mut rng, seed, &[1], 1, 1, 64);
            case(&gpu, kernel, &mut rng, seed, &[64], 2, 1, 128);
            case(&gpu, kernel, &mut rng, seed, &[5, 70, 129, 1], 12, 4, 64);
            case(&gpu, kernel, &mut rng, seed, &[200, 63, 65], 8, 2, 128);
            case(&gpu, kernel, &mut rng, seed, &[777], 4, 4, 128);
            case(&gpu, kernel, &mut rng, seed, &[0, 300, 0], 6, 3, 64);
            // Several key tiles past the diagonal for both warpgroups' rows, GQA 8.
            case(&gpu, kernel, &mut rng, seed, &[1100, 257], 8, 1, 128);
            // More query tiles than multiprocessors: the wgmma kernel's blocks take several
            // work items each, empty ones (past a short sequence's tiles) skipped.
            case(
                &gpu,
                kernel,
                &mut rng,
                seed,
                &[300, 1, 530, 129, 64],
                16,
                4,
                64,
            );
            case(&gpu, kernel, &mut rng, seed, &[700, 5, 1300], 12, 3, 128);
        }
    }

    #[test]
    fn gpu_prefill_wgmma_off_hopper_is_an_error() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let picked = PrefillKernel::Wgmma.pick(&gpu);
        if gpu.compute_capability() == (9, 0) {
            assert_eq!(picked.unwrap(), PrefillKernel::Wgmma);
        } else {
            assert!(picked.unwrap_err().to_string().contains("9.0"));
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let rows = HeadRows::packed(4, 2, 64);
        let x = vec![bf16::ZERO; 4 * 2 * 64];
        let mut out = vec![bf16::ZERO; 4 * 2 * 64];
        let run = |cu: &[i32], out: &mut [bf16]| {
            prefill_attention_bf16_ref(&x, rows, &x, rows, &x, rows, cu, 1.0, out)
        };
        assert!(run(&[0, 4], &mut out).is_ok());
        assert!(run(&[0, 3], &mut out).is_err());
        assert!(run(&[1, 4], &mut out).is_err());
        assert!(run(&[0, 3, 2, 4], &mut out).is_err());
        assert!(run(&[0, 4], &mut out[..5]).is_err());
        let three = HeadRows::packed(4, 3, 64);
        let e = prefill_attention_bf16_ref(&x, three, &x, rows, &x, rows, &[0, 4], 1.0, &mut out)
            .unwrap_err();
        assert!(
            e.to_string().contains("multiple") || e.to_string().contains("elements"),
            "{e}"
        );
    }
}
