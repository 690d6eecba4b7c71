//! Elementwise kernels (`kernels/elementwise/*.cu`): axpy, bf16↔f32 casts, SiLU·mul, ReLU,
//! bias add. Layouts are written at the top of each `.cu`.

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, PushKernelArg};
use half::bf16;

use crate::{
    check_len, check_min_len, grid_stride, grid_stride_sms, shape_err, strided_need, Gpu, Result,
};

/// `y = a·x + y` on bf16 vectors, on the GPU's default stream.
pub fn axpy_bf16(gpu: &Gpu, a: f32, x: &CudaSlice<bf16>, y: &mut CudaSlice<bf16>) -> Result<()> {
    check_len("axpy_bf16: y", x.len(), y.len())?;
    let n = x.len() as i64;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function("axpy_bf16")?;
    let cfg = grid_stride(gpu, x.len());
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(&n).arg(&a).arg(x).arg(y);
    // SAFETY: the kernel's signature is (int64 n, float a, const bf16* x, bf16* y); both
    // buffers hold n elements (checked above) and the kernel touches indices < n only.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Reference twin of [`axpy_bf16`] on host slices (f32 arithmetic, one rounding to bf16).
pub fn axpy_bf16_ref(a: f32, x: &[bf16], y: &mut [bf16]) -> Result<()> {
    check_len("axpy_bf16_ref: y", x.len(), y.len())?;
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = bf16::from_f32(a * xi.to_f32() + yi.to_f32());
    }
    Ok(())
}

fn cast<A, B>(
    gpu: &Gpu,
    stream: &CudaStream,
    name: &'static str,
    x: &impl DevicePtr<A>,
    y: &mut impl DevicePtrMut<B>,
) -> Result<()> {
    check_len(name, x.len(), y.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let n = x.len() as i64;
    let f = gpu.function(name)?;
    let (px, _gx) = x.device_ptr(stream);
    let (py, _gy) = y.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&n).arg(&px).arg(&py);
    // SAFETY: both cast kernels are (int64 n, const A* x, B* y), A and B the element types of
    // x and y; both hold n elements (checked above).
    unsafe { b.launch(grid_stride(gpu, x.len() / 8 + 1)) }?;
    Ok(())
}

/// `y[i] = x[i]` widened to f32, for `i < x.len()`.
pub fn cast_bf16_f32(
    gpu: &Gpu,
    stream: &CudaStream,
    x: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    cast(gpu, stream, "cast_bf16_f32", x, y)
}

pub fn cast_bf16_f32_ref(x: &[bf16], y: &mut [f32]) -> Result<()> {
    check_len("cast_bf16_f32_ref: y", x.len(), y.len())?;
    y.iter_mut().zip(x).for_each(|(y, x)| *y = x.to_f32());
    Ok(())
}

/// `y[i] = x[i]` rounded to bf16 (round to nearest even).
pub fn cast_f32_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    x: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    cast(gpu, stream, "cast_f32_bf16", x, y)
}

pub fn cast_f32_bf16_ref(x: &[f32], y: &mut [bf16]) -> Result<()> {
    check_len("cast_f32_bf16_ref: y", x.len(), y.len())?;
    y.iter_mut()
        .zip(x)
        .for_each(|(y, x)| *y = bf16::from_f32(*x));
    Ok(())
}

/// Where the gate and up halves of a SwiGLU input sit: row r of gate starts at
/// `gate_offset + r * stride` of the input buffer, row r of up at `up_offset + r * stride`.
/// [`GateUp::fused`] is the output of one `[2·cols, hidden]` projection (gate rows first).
#[derive(Clone, Copy, Debug)]
pub struct GateUp {
    pub gate_offset: usize,
    pub up_offset: usize,
    pub stride: usize,
}

impl GateUp {
    /// `[rows, 2·cols]`: gate in columns `0..cols`, up in `cols..2·cols`.
    pub fn fused(cols: usize) -> Self {
        GateUp {
            gate_offset: 0,
            up_offset: cols,
            stride: 2 * cols,
        }
    }
}

fn check_gate_up(
    what: &'static str,
    rows: usize,
    cols: usize,
    l: GateUp,
    input_len: usize,
    out_len: usize,
) -> Result<()> {
    if l.stride < cols {
        return Err(shape_err(format!(
            "{what}: row stride {} is less than cols {cols}",
            l.stride
        )));
    }
    check_min_len(
        what,
        l.gate_offset.max(l.up_offset) + strided_need(rows, cols, l.stride),
        input_len,
    )?;
    check_len(what, rows * cols, out_len)
}

/// `out[r, c] = silu(gate[r, c]) · up[r, c]` (LLaMA's MLP activation), f32 inside, one
/// rounding; `out` is `[rows, cols]`, the input laid out as `layout` says.
pub fn silu_mul_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    rows: usize,
    cols: usize,
    input: &impl DevicePtr<bf16>,
    layout: GateUp,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    let f = gpu.function("silu_mul_bf16")?;
    silu_mul_launch(&f, gpu.sms(), stream, rows, cols, input, layout, out)
}

/// [`silu_mul_bf16`] with the kernel already looked up (`f` is `silu_mul_bf16` of the module,
/// `sms` the device's multiprocessors): for callers that keep the function, like `Blas`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn silu_mul_launch(
    f: &CudaFunction,
    sms: u32,
    stream: &CudaStream,
    rows: usize,
    cols: usize,
    input: &impl DevicePtr<bf16>,
    layout: GateUp,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    check_gate_up("silu_mul_bf16", rows, cols, layout, input.len(), out.len())?;
    if rows * cols == 0 {
        return Ok(());
    }
    let (pi, _gi) = input.device_ptr(stream);
    let (po, _go) = out.device_ptr_mut(stream);
    let (pg, pu) = (
        pi + 2 * layout.gate_offset as u64,
        pi + 2 * layout.up_offset as u64,
    );
    let (r, c, s) = (rows as i64, cols as i64, layout.stride as i64);
    let mut b = stream.launch_builder(f);
    b.arg(&r).arg(&c).arg(&pg).arg(&s).arg(&pu).arg(&s).arg(&po);
    // SAFETY: (rows, cols, gate, gate_stride, up, up_stride, out); the input holds every row of
    // both halves and out rows*cols elements (checked above).
    unsafe { b.launch(grid_stride_sms(sms, rows * cols / 8 + 1)) }?;
    Ok(())
}

pub fn silu_mul_bf16_ref(
    rows: usize,
    cols: usize,
    input: &[bf16],
    layout: GateUp,
    out: &mut [bf16],
) -> Result<()> {
    check_gate_up(
        "silu_mul_bf16_ref",
        rows,
        cols,
        layout,
        input.len(),
        out.len(),
    )?;
    for r in 0..rows {
        for c in 0..cols {
            let g = input[layout.gate_offset + r * layout.stride + c].to_f32() as f64;
            let u = input[layout.up_offset + r * layout.stride + c].to_f32() as f64;
            out[r * cols + c] = bf16::from_f64(g / (1.0 + (-g).exp()) * u);
        }
    }
    Ok(())
}

/// `x = max(x, 0)` in place (OPT's MLP activation).
pub fn relu_bf16(gpu: &Gpu, stream: &CudaStream, x: &mut impl DevicePtrMut<bf16>) -> Result<()> {
    if x.is_empty() {
        return Ok(());
    }
    let n = x.len() as i64;
    let cfg = grid_stride(gpu, x.len() / 8 + 1);
    let f = gpu.function("relu_bf16")?;
    let (px, _gx) = x.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&n).arg(&px);
    // SAFETY: (int64 n, bf16* x); x holds n elements.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

pub fn relu_bf16_ref(x: &mut [bf16]) -> Result<()> {
    x.iter_mut()
        .for_each(|v| *v = bf16::from_f32(v.to_f32().max(0.0)));
    Ok(())
}

/// `x[r, c] += bias[c]` in place over a row-major `[rows, cols]` matrix (`cols = bias.len()`).
pub fn bias_add_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    x: &mut impl DevicePtrMut<bf16>,
    bias: &impl DevicePtr<bf16>,
) -> Result<()> {
    let cols = bias.len();
    if cols == 0 || x.len() % cols != 0 {
        return Err(shape_err(format!(
            "bias_add_bf16: x has {} elements, not rows of bias's {cols}",
            x.len()
        )));
    }
    let (r, c) = ((x.len() / cols) as i64, cols as i64);
    let cfg = grid_stride(gpu, x.len() / 8 + 1);
    let f = gpu.function("bias_add_bf16")?;
    let (px, _gx) = x.device_ptr_mut(stream);
    let (pb, _gb) = bias.device_ptr(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&r).arg(&c).arg(&px).arg(&pb);
    // SAFETY: (rows, cols, bf16* x, const bf16* bias); x holds rows*cols, bias cols elements.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

pub fn bias_add_bf16_ref(x: &mut [bf16], bias: &[bf16]) -> Result<()> {
    let cols = bias.len();
    if cols == 0 || x.len() % cols != 0 {
        return Err(shape_err(format!(
            "bias_add_bf16_ref: x has {} elements, not rows of bias's {cols}",
            x.len()
        )));
    }
    for row in x.chunks_mut(cols) {
        row.iter_mut()
            .zip(bias)
            .for_each(|(v, b)| *v = bf16::from_f32(v.to_f32() + b.to_f32()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    /// SiLU on the GPU uses the fast exponential (`__expf`, ~2 ulp f32) and the reference f64:
    /// both round once to bf16, so they differ by at most one bf16 step.
    const SILU_RTOL: f32 = BF16_ULP;
    const SILU_ATOL: f32 = 1e-6;

    #[test]
    fn gpu_axpy_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        for n in [1usize, 255, 256, 1 << 20, (1 << 20) + 3] {
            let a: f32 = rand::Rng::gen_range(&mut rng, -2.0..2.0);
            let x = rand_bf16(&mut rng, n, -1.0, 1.0);
            let y0 = rand_bf16(&mut rng, n, -1.0, 1.0);
            let s = gpu.stream();
            let dx = s.clone_htod(&x).unwrap();
            let mut dy = s.clone_htod(&y0).unwrap();
            axpy_bf16(&gpu, a, &dx, &mut dy).unwrap();
            let got = s.clone_dtoh(&dy).unwrap();
            let mut want = y0.clone();
            axpy_bf16_ref(a, &x, &mut want).unwrap();
            // Same f32 expression on both sides (fma contraction may differ by one rounding
            // before the bf16 cast), so results agree to one bf16 ulp.
            assert_close("axpy", seed, &got, &want, 1e-6, BF16_ULP);
        }
    }

    #[test]
    fn gpu_casts_match_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream();
        for n in [1usize, 7, 8, 1000, (1 << 16) + 5] {
            let x = rand_bf16(&mut rng, n, -100.0, 100.0);
            let dx = s.clone_htod(&x).unwrap();
            let mut dy = s.clone_htod(&vec![f32::NAN; n]).unwrap();
            cast_bf16_f32(&gpu, s, &dx, &mut dy).unwrap();
            let mut want = vec![0f32; n];
            cast_bf16_f32_ref(&x, &mut want).unwrap();
            // Widening is exact.
            assert_close_f32(
                "cast_bf16_f32",
                seed,
                &s.clone_dtoh(&dy).unwrap(),
                &want,
                0.0,
                0.0,
            );

            let xf = rand_f32(&mut rng, n, -100.0, 100.0);
            let dxf = s.clone_htod(&xf).unwrap();
            let mut dyb = s.clone_htod(&poisoned(n)).unwrap();
            cast_f32_bf16(&gpu, s, &dxf, &mut dyb).unwrap();
            let mut wantb = vec![bf16::ZERO; n];
            cast_f32_bf16_ref(&xf, &mut wantb).unwrap();
            // Both round to nearest even: identical.
            assert_close(
                "cast_f32_bf16",
                seed,
                &s.clone_dtoh(&dyb).unwrap(),
                &wantb,
                0.0,
                0.0,
            );
            // An unaligned view takes the scalar path.
            if n > 1 {
                let mut dyb = s.clone_htod(&poisoned(n)).unwrap();
                cast_f32_bf16(&gpu, s, &dxf.slice(1..), &mut dyb.slice_mut(1..)).unwrap();
                let got = s.clone_dtoh(&dyb).unwrap();
                assert_close(
                    "cast_f32_bf16 offset",
                    seed,
                    &got[1..],
                    &wantb[1..],
                    0.0,
                    0.0,
                );
            }
        }
    }

    #[test]
    fn gpu_silu_mul_relu_bias_match_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream();
        for (rows, cols) in [(1usize, 8usize), (3, 13), (17, 1376), (64, 4096)] {
            let input = rand_bf16(&mut rng, rows * 2 * cols, -6.0, 6.0);
            let di = s.clone_htod(&input).unwrap();
            let mut dout = s.clone_htod(&poisoned(rows * cols)).unwrap();
            silu_mul_bf16(&gpu, s, rows, cols, &di, GateUp::fused(cols), &mut dout).unwrap();
            let mut want = vec![bf16::ZERO; rows * cols];
            silu_mul_bf16_ref(rows, cols, &input, GateUp::fused(cols), &mut want).unwrap();
            assert_close(
                "silu_mul",
                seed,
                &s.clone_dtoh(&dout).unwrap(),
                &want,
                SILU_ATOL,
                SILU_RTOL,
            );

            let x = rand_bf16(&mut rng, rows * cols, -2.0, 2.0);
            let bias = rand_bf16(&mut rng, cols, -2.0, 2.0);
            let mut dx = s.clone_htod(&x).unwrap();
            let db = s.clone_htod(&bias).unwrap();
            bias_add_bf16(&gpu, s, &mut dx, &db).unwrap();
            relu_bf16(&gpu, s, &mut dx).unwrap();
            let mut want = x.clone();
            bias_add_bf16_ref(&mut want, &bias).unwrap();
            relu_bf16_ref(&mut want).unwrap();
            // Same f32 sum, same rounding; relu is exact.
            assert_close(
                "bias_add+relu",
                seed,
                &s.clone_dtoh(&dx).unwrap(),
                &want,
                0.0,
                0.0,
            );
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = vec![bf16::ONE; 3];
        let mut y = vec![bf16::ONE; 4];
        assert!(axpy_bf16_ref(1.0, &x, &mut y).is_err());
        let mut out = vec![bf16::ZERO; 4];
        let e = silu_mul_bf16_ref(2, 2, &x, GateUp::fused(2), &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("silu_mul_bf16_ref"), "{e}");
        assert!(bias_add_bf16_ref(&mut y, &x).is_err());
    }
}
