//! Elementwise kernels (`kernels/elementwise/*.cu`).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

use crate::{check_len, Gpu, Result};

const BLOCK: u32 = 256;

fn grid_for(n: usize, gpu: &Gpu) -> Result<u32> {
    let sms = gpu.ctx().attribute(
        cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
    )?;
    // Enough blocks to fill every SM several times over; the grid-stride loop covers the rest.
    Ok((n.div_ceil(BLOCK as usize) as u32).clamp(1, sms as u32 * 16))
}

/// `y = a·x + y` on bf16 vectors, on the GPU's default stream.
pub fn axpy_bf16(gpu: &Gpu, a: f32, x: &CudaSlice<bf16>, y: &mut CudaSlice<bf16>) -> Result<()> {
    check_len("axpy_bf16: y", x.len(), y.len())?;
    let n = x.len() as i64;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function("axpy_bf16")?;
    let cfg = LaunchConfig {
        grid_dim: (grid_for(x.len(), gpu)?, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn gpu_axpy_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let mut rng = rand::rngs::StdRng::from_entropy();
        for n in [1usize, 255, 256, 1 << 20, (1 << 20) + 3] {
            let a: f32 = rng.gen_range(-2.0..2.0);
            let x: Vec<bf16> = (0..n)
                .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
                .collect();
            let y0: Vec<bf16> = (0..n)
                .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
                .collect();
            let s = gpu.stream();
            let dx = s.clone_htod(&x).unwrap();
            let mut dy = s.clone_htod(&y0).unwrap();
            axpy_bf16(&gpu, a, &dx, &mut dy).unwrap();
            let got = s.clone_dtoh(&dy).unwrap();
            let mut want = y0.clone();
            axpy_bf16_ref(a, &x, &mut want).unwrap();
            // Same f32 expression on both sides (fma contraction may differ by one rounding
            // before the bf16 cast), so results agree to one bf16 ulp.
            for i in 0..n {
                let (g, w) = (got[i].to_f32(), want[i].to_f32());
                assert!(
                    (g - w).abs() <= w.abs() * 2f32.powi(-7) + 1e-6,
                    "n={n} i={i}: gpu {g} vs ref {w}"
                );
            }
        }
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let x = vec![bf16::ONE; 3];
        let mut y = vec![bf16::ONE; 4];
        assert!(axpy_bf16_ref(1.0, &x, &mut y).is_err());
    }
}
