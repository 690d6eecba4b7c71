//! Normalizations fused with the residual add (`kernels/norm/*.cu`): RMSNorm (LLaMA) and
//! LayerNorm (OPT) over row-major `[rows, hidden]` bf16 matrices.
//!
//! `add_*` first adds the sublayer output `delta` into `residual` (in place, rounded to bf16
//! as HF does), then normalizes the new residual into `out`; the plain forms normalize
//! `residual` as it is (the first layer's input).

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use crate::launch::Launch;
use crate::{check_len, Gpu, Result};

/// One block per row; each thread keeps `vpt` 16-byte chunks of the row in registers (1, 2
/// or 4: rows up to 32768 columns; the kernels `*_v1`, `*_v2`, `*_v4`). Wider rows fall back
/// to the kernel that rereads from L2 (vpt = 0, 8 chunks per thread), as do rows the kernels
/// cannot take 16 bytes at a time (they check). 64..=1024 threads.
///
/// `want` is how many chunks a thread should rather hold: 1 spreads the row over as many
/// threads as it has chunks (RMSNorm); 4 (LayerNorm, whose kernels keep the row as bf16 and
/// issue all its loads at once) gives a row a quarter of the threads, so that an SM, limited
/// to 2048 threads, holds four times as many rows and so more bytes in flight.
fn row_config(rows: usize, hidden: usize, want: usize) -> (LaunchConfig, usize) {
    let chunks = hidden.div_ceil(8);
    let threads_for =
        |per_thread: usize| (chunks.div_ceil(per_thread).div_ceil(32) * 32).clamp(64, 1024);
    let vpt = match chunks.div_ceil(threads_for(want)) {
        1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 0,
    };
    let threads = threads_for(if vpt == 0 { 8 } else { vpt }) as u32;
    let cfg = LaunchConfig {
        grid_dim: (rows.min(1 << 30) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    (cfg, vpt)
}

/// Chunks per thread that each norm's launch aims for (see [`row_config`]).
const RMS_WANT: usize = 1;
const LN_WANT: usize = 4;

fn check(
    what: &'static str,
    rows: usize,
    hidden: usize,
    residual: usize,
    delta: Option<usize>,
    params: &[usize],
    out: usize,
) -> Result<()> {
    check_len(what, rows * hidden, residual)?;
    if let Some(d) = delta {
        check_len(what, rows * hidden, d)?;
    }
    for &p in params {
        check_len(what, hidden, p)?;
    }
    check_len(what, rows * hidden, out)
}

#[allow(clippy::too_many_arguments)]
fn launch_rms(
    gpu: &Gpu,
    stream: &CudaStream,
    rows: usize,
    hidden: usize,
    residual: &mut impl DevicePtrMut<bf16>,
    delta: u64,
    weight: &impl DevicePtr<bf16>,
    eps: f32,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let (cfg, vpt) = row_config(rows, hidden, RMS_WANT);
    let name = [
        "rms_norm_bf16",
        "rms_norm_bf16_v1",
        "rms_norm_bf16_v2",
        "",
        "rms_norm_bf16_v4",
    ][vpt];
    let f = gpu.function(name)?;
    let (pr, _gr) = residual.device_ptr_mut(stream);
    let (pw, _gw) = weight.device_ptr(stream);
    let (po, _go) = out.device_ptr_mut(stream);
    let (r, h) = (rows as i64, hidden as i64);
    let mut b = Launch::new(gpu, stream, &f);
    b.arg(&r)
        .arg(&h)
        .arg(&pr)
        .arg(&delta)
        .arg(&pw)
        .arg(&eps)
        .arg(&po);
    // SAFETY: (rows, H, bf16* residual, const bf16* delta or null, const bf16* w, eps, bf16* out);
    // residual, delta and out hold rows*H elements, w holds H (checked by the callers);
    // blockDim * vpt * 8 >= H for the kernel of vpt chunks (row_config).
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// `out = rms_norm(residual) · weight`.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    rows: usize,
    hidden: usize,
    residual: &mut impl DevicePtrMut<bf16>,
    weight: &impl DevicePtr<bf16>,
    eps: f32,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    check(
        "rms_norm_bf16",
        rows,
        hidden,
        residual.len(),
        None,
        &[weight.len()],
        out.len(),
    )?;
    launch_rms(gpu, stream, rows, hidden, residual, 0, weight, eps, out)
}

/// `residual += delta; out = rms_norm(residual) · weight`.
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    rows: usize,
    hidden: usize,
    residual: &mut impl DevicePtrMut<bf16>,
    delta: &impl DevicePtr<bf16>,
    weight: &impl DevicePtr<bf16>,
    eps: f32,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    check(
        "add_rms_norm_bf16",
        rows,
        hidden,
        residual.len(),
        Some(delta.len()),
        &[weight.len()],
        out.len(),
    )?;
    let (pd, _gd) = delta.device_ptr(stream);
    launch_rms(gpu, stream, rows, hidden, residual, pd, weight, eps, out)
}

/// Reference twin of [`rms_norm_bf16`] / [`add_rms_norm_bf16`] (`delta: None` / `Some`), f64.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_bf16_ref(
    rows: usize,
    hidden: usize,
    residual: &mut [bf16],
    delta: Option<&[bf16]>,
    weight: &[bf16],
    eps: f32,
    out: &mut [bf16],
) -> Result<()> {
    check(
        "rms_norm_bf16_ref",
        rows,
        hidden,
        residual.len(),
        delta.map(|d| d.len()),
        &[weight.len()],
        out.len(),
    )?;
    for r in 0..rows {
        let row = &mut residual[r * hidden..(r + 1) * hidden];
        if let Some(d) = delta {
            for (x, y) in row.iter_mut().zip(&d[r * hidden..]) {
                *x = bf16::from_f32(x.to_f32() + y.to_f32());
            }
        }
        let ss: f64 = row.iter().map(|x| (x.to_f32() as f64).powi(2)).sum();
        let inv = 1.0 / (ss / hidden as f64 + eps as f64).sqrt();
        for c in 0..hidden {
            out[r * hidden + c] =
                bf16::from_f64(row[c].to_f32() as f64 * inv * weight[c].to_f32() as f64);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn launch_ln(
    gpu: &Gpu,
    stream: &CudaStream,
    rows: usize,
    hidden: usize,
    residual: &mut impl DevicePtrMut<bf16>,
    delta: u64,
    weight: &impl DevicePtr<bf16>,
    bias: &impl DevicePtr<bf16>,
    eps: f32,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let (cfg, vpt) = row_config(rows, hidden, LN_WANT);
    let name = [
        "layer_norm_bf16",
        "layer_norm_bf16_v1",
        "layer_norm_bf16_v2",
        "",
        "layer_norm_bf16_v4",
    ][vpt];
    let f = gpu.function(name)?;
    let (pr, _gr) = residual.device_ptr_mut(stream);
    let (pw, _gw) = weight.device_ptr(stream);
    let (pb, _gb) = bias.device_ptr(stream);
    let (po, _go) = out.device_ptr_mut(stream);
    let (r, h) = (rows as i64, hidden as i64);
    let mut b = stream.launch_builder(&f);
    b.arg(&r).arg(&h).arg(&pr).arg(&delta).arg(&pw).arg(&pb);
    b.arg(&eps).arg(&po);
    // SAFETY: (rows, H, residual, delta or null, w, b, eps, out); residual, delta and out hold
    // rows*H elements, w and b hold H (checked by the callers); blockDim * vpt * 8 >= H for
    // the kernel of vpt chunks (row_config).
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// `out = layer_norm(residual) · weight + bias`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    rows: usize,
    hidden: usize,
    residual: &mut impl DevicePtrMut<bf16>,
    weight: &impl DevicePtr<bf16>,
    bias: &impl DevicePtr<bf16>,
    eps: f32,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    check(
        "layer_norm_bf16",
        rows,
        hidden,
        residual.len(),
        None,
        &[weight.len(), bias.len()],
        out.len(),
    )?;
    launch_ln(
        gpu, stream, rows, hidden, residual, 0, weight, bias, eps, out,
    )
}

/// `residual += delta; out = layer_norm(residual) · weight + bias`.
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    rows: usize,
    hidden: usize,
    residual: &mut impl DevicePtrMut<bf16>,
    delta: &impl DevicePtr<bf16>,
    weight: &impl DevicePtr<bf16>,
    bias: &impl DevicePtr<bf16>,
    eps: f32,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    check(
        "add_layer_norm_bf16",
        rows,
        hidden,
        residual.len(),
        Some(delta.len()),
        &[weight.len(), bias.len()],
        out.len(),
    )?;
    let (pd, _gd) = delta.device_ptr(stream);
    launch_ln(
        gpu, stream, rows, hidden, residual, pd, weight, bias, eps, out,
    )
}

/// Reference twin of [`layer_norm_bf16`] / [`add_layer_norm_bf16`], f64 statistics.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_bf16_ref(
    rows: usize,
    hidden: usize,
    residual: &mut [bf16],
    delta: Option<&[bf16]>,
    weight: &[bf16],
    bias: &[bf16],
    eps: f32,
    out: &mut [bf16],
) -> Result<()> {
    check(
        "layer_norm_bf16_ref",
        rows,
        hidden,
        residual.len(),
        delta.map(|d| d.len()),
        &[weight.len(), bias.len()],
        out.len(),
    )?;
    for r in 0..rows {
        let row = &mut residual[r * hidden..(r + 1) * hidden];
        if let Some(d) = delta {
            for (x, y) in row.iter_mut().zip(&d[r * hidden..]) {
                *x = bf16::from_f32(x.to_f32() + y.to_f32());
            }
        }
        let mean: f64 = row.iter().map(|x| x.to_f32() as f64).sum::<f64>() / hidden as f64;
        let var: f64 = row
            .iter()
            .map(|x| (x.to_f32() as f64 - mean).powi(2))
            .sum::<f64>()
            / hidden as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for c in 0..hidden {
            let y = (row[c].to_f32() as f64 - mean) * inv * weight[c].to_f32() as f64
                + bias[c].to_f32() as f64;
            out[r * hidden + c] = bf16::from_f64(y);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    /// f32 sums of up to 12k squares against f64 (relative error ~1e-6), then one bf16
    /// rounding on each side: one bf16 step apart at most.
    const NORM_RTOL: f32 = BF16_ULP;
    /// Outputs near zero (LayerNorm's bias can cancel the normalized value) get an absolute
    /// floor of the f32 error of the pre-rounding value, ~1e-5 for O(1) terms, plus a step.
    const NORM_ATOL: f32 = 1e-3;

    #[test]
    fn gpu_norms_match_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream();
        for (rows, hidden) in [
            (1usize, 8usize),
            (3, 100),
            (5, 768),
            (33, 4096),
            (2, 12288),
            (1, 20000),
            (1, 40000),
        ] {
            let res0 = rand_bf16(&mut rng, rows * hidden, -4.0, 4.0);
            let delta = rand_bf16(&mut rng, rows * hidden, -4.0, 4.0);
            let w = rand_bf16(&mut rng, hidden, 0.5, 1.5);
            let bias = rand_bf16(&mut rng, hidden, -1.0, 1.0);
            let dd = s.clone_htod(&delta).unwrap();
            let dw = s.clone_htod(&w).unwrap();
            let db = s.clone_htod(&bias).unwrap();
            for fused in [false, true] {
                // RMSNorm
                let mut dres = s.clone_htod(&res0).unwrap();
                let mut dout = s.clone_htod(&poisoned(rows * hidden)).unwrap();
                if fused {
                    add_rms_norm_bf16(&gpu, s, rows, hidden, &mut dres, &dd, &dw, 1e-5, &mut dout)
                        .unwrap();
                } else {
                    rms_norm_bf16(&gpu, s, rows, hidden, &mut dres, &dw, 1e-5, &mut dout).unwrap();
                }
                let (mut res, mut want) = (res0.clone(), vec![bf16::ZERO; rows * hidden]);
                rms_norm_bf16_ref(
                    rows,
                    hidden,
                    &mut res,
                    fused.then_some(&delta[..]),
                    &w,
                    1e-5,
                    &mut want,
                )
                .unwrap();
                assert_close(
                    "rms residual",
                    seed,
                    &s.clone_dtoh(&dres).unwrap(),
                    &res,
                    0.0,
                    0.0,
                );
                assert_close(
                    "rms out",
                    seed,
                    &s.clone_dtoh(&dout).unwrap(),
                    &want,
                    NORM_ATOL,
                    NORM_RTOL,
                );
                // LayerNorm
                let mut dres = s.clone_htod(&res0).unwrap();
                let mut dout = s.clone_htod(&poisoned(rows * hidden)).unwrap();
                if fused {
                    add_layer_norm_bf16(
                        &gpu, s, rows, hidden, &mut dres, &dd, &dw, &db, 1e-5, &mut dout,
                    )
                    .unwrap();
                } else {
                    layer_norm_bf16(&gpu, s, rows, hidden, &mut dres, &dw, &db, 1e-5, &mut dout)
                        .unwrap();
                }
                let (mut res, mut want) = (res0.clone(), vec![bf16::ZERO; rows * hidden]);
                layer_norm_bf16_ref(
                    rows,
                    hidden,
                    &mut res,
                    fused.then_some(&delta[..]),
                    &w,
                    &bias,
                    1e-5,
                    &mut want,
                )
                .unwrap();
                assert_close(
                    "ln residual",
                    seed,
                    &s.clone_dtoh(&dres).unwrap(),
                    &res,
                    0.0,
                    0.0,
                );
                assert_close(
                    "ln out",
                    seed,
                    &s.clone_dtoh(&dout).unwrap(),
                    &want,
                    NORM_ATOL,
                    NORM_RTOL,
                );
            }
        }
    }

    #[test]
    fn row_configs_cover_the_row() {
        for hidden in (8usize..=40000).step_by(8).chain([1, 7, 100, 4097]) {
            let chunks = hidden.div_ceil(8);
            for want in [RMS_WANT, LN_WANT] {
                let (cfg, vpt) = row_config(3, hidden, want);
                let t = cfg.block_dim.0 as usize;
                assert!(
                    t % 32 == 0 && (64..=1024).contains(&t),
                    "{hidden}: {t} threads"
                );
                assert!([0, 1, 2, 4].contains(&vpt), "{hidden}: vpt {vpt}");
                // The register kernels' contract; the fallback loops over the row.
                assert!(vpt == 0 || t * vpt >= chunks, "{hidden}: {t} x {vpt}");
                assert_eq!(vpt == 0, chunks > 4096, "{hidden}");
            }
            // RMSNorm keeps the configuration it was tuned with: the fewest chunks per thread.
            let old_vpt = [1, 1, 2, 4, 4]
                .get(chunks.div_ceil(1024))
                .copied()
                .unwrap_or(0);
            let per = if old_vpt == 0 { 8 } else { old_vpt };
            let old_t = (chunks.div_ceil(per).div_ceil(32) * 32).clamp(64, 1024) as u32;
            let (cfg, vpt) = row_config(3, hidden, RMS_WANT);
            assert_eq!((cfg.block_dim.0, vpt), (old_t, old_vpt), "{hidden}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut res = vec![bf16::ONE; 8];
        let mut out = vec![bf16::ZERO; 8];
        let w = vec![bf16::ONE; 3];
        let e = rms_norm_bf16_ref(2, 4, &mut res, None, &w, 1e-5, &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 4") && e.contains("got 3"), "{e}");
        assert!(layer_norm_bf16_ref(2, 4, &mut res, None, &w, &w, 1e-5, &mut out).is_err());
    }
}
