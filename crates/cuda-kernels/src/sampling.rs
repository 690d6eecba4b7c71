//! Greedy sampling (`kernels/sampling/argmax.cu`): the index of the largest logit of each row.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use crate::{check_len, shape_err, Gpu, Result};

fn rows_of(what: &'static str, vocab: usize, logits: usize, out: usize) -> Result<usize> {
    if vocab == 0 || logits % vocab != 0 {
        return Err(shape_err(format!(
            "{what}: {logits} logits are not rows of vocab {vocab}"
        )));
    }
    check_len(what, logits / vocab, out)?;
    Ok(logits / vocab)
}

/// `out[r] = argmax_c logits[r, c]` over `[rows, vocab]` logits (lowest index among ties, as
/// torch.argmax; NaN never wins).
pub fn argmax_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    logits: &impl DevicePtr<bf16>,
    vocab: usize,
    out: &mut impl DevicePtrMut<i32>,
) -> Result<()> {
    let rows = rows_of("argmax_bf16", vocab, logits.len(), out.len())?;
    if vocab > i32::MAX as usize {
        return Err(shape_err(format!(
            "argmax_bf16: vocab {vocab} does not fit i32 ids"
        )));
    }
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function("argmax_bf16")?;
    let (pl, _gl) = logits.device_ptr(stream);
    let (po, _go) = out.device_ptr_mut(stream);
    let (r, v) = (rows as i64, vocab as i64);
    let cfg = LaunchConfig {
        grid_dim: (rows.min(1 << 30) as u32, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(&f);
    b.arg(&r).arg(&v).arg(&pl).arg(&po);
    // SAFETY: (rows, vocab, const bf16* logits, int* out); logits hold rows*vocab, out rows.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

pub fn argmax_bf16_ref(logits: &[bf16], vocab: usize, out: &mut [i32]) -> Result<()> {
    rows_of("argmax_bf16_ref", vocab, logits.len(), out.len())?;
    for (row, o) in logits.chunks(vocab).zip(out.iter_mut()) {
        let mut best = (f32::NEG_INFINITY, 0usize);
        for (i, x) in row.iter().enumerate() {
            if x.to_f32() > best.0 {
                best = (x.to_f32(), i);
            }
        }
        *o = best.1 as i32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn gpu_argmax_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream();
        for (rows, vocab) in [(1usize, 1usize), (3, 1000), (17, 32000), (4, 128256)] {
            // bf16 logits in a narrow range repeat values, so ties are common and the
            // lowest-index rule is exercised.
            let mut logits = rand_bf16(&mut rng, rows * vocab, -8.0, 8.0);
            if vocab > 10 {
                logits[vocab - 1] = bf16::from_f32(9.0); // the last column wins row 0
            }
            let dl = s.clone_htod(&logits).unwrap();
            let mut dout = s.clone_htod(&vec![-1i32; rows]).unwrap();
            argmax_bf16(&gpu, s, &dl, vocab, &mut dout).unwrap();
            let mut want = vec![0i32; rows];
            argmax_bf16_ref(&logits, vocab, &mut want).unwrap();
            assert_eq!(
                s.clone_dtoh(&dout).unwrap(),
                want,
                "rows {rows} vocab {vocab} (seed {seed})"
            );
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let logits = vec![bf16::ONE; 10];
        let mut out = vec![0i32; 2];
        assert!(argmax_bf16_ref(&logits, 3, &mut out).is_err());
        assert!(argmax_bf16_ref(&logits, 5, &mut out[..1]).is_err());
    }
}
