//! Greedy sampling (`kernels/sampling/argmax.cu`): the index of the largest logit of each row.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use crate::launch::Launch;
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

/// Block size of `argmax_bf16` (its `argmax::THREADS`: the kernel's stride between a thread's
/// chunks is a compile-time constant).
const ARGMAX_THREADS: u32 = 1024;

/// The kernel: four 16-byte loads in flight per thread (`argmax_bf16`), or two
/// (`argmax_bf16_u2`, with `TANDEM_ARGMAX_UNROLL=2`, read once; for side-by-side timings).
fn argmax_kernel() -> &'static str {
    static K: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        platform::env::choice(
            "TANDEM_ARGMAX_UNROLL",
            &[("4", "argmax_bf16"), ("2", "argmax_bf16_u2")],
            "argmax_bf16",
        )
    })
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
    let f = gpu.function(argmax_kernel())?;
    let (pl, _gl) = logits.device_ptr(stream);
    let (po, _go) = out.device_ptr_mut(stream);
    let (r, v) = (rows as i64, vocab as i64);
    let cfg = LaunchConfig {
        grid_dim: (rows.min(1 << 30) as u32, 1, 1),
        block_dim: (ARGMAX_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = Launch::new(gpu, stream, &f);
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
        for (rows, vocab) in [(1usize, 1usize), (3, 1000), (17, 32000), (4, 128256)] {
            // bf16 logits in a narrow range repeat values, so ties are common and the
            // lowest-index rule is exercised.
            let mut logits = rand_bf16(&mut rng, rows * vocab, -8.0, 8.0);
            if vocab > 10 {
                logits[vocab - 1] = bf16::from_f32(9.0); // the last column wins row 0
            }
            check(&gpu, &logits, vocab, &format!("random, seed {seed}"));
        }
    }

    fn check(gpu: &Gpu, logits: &[bf16], vocab: usize, what: &str) {
        let s = gpu.stream();
        let rows = logits.len() / vocab;
        let dl = s.clone_htod(logits).unwrap();
        let mut dout = s.clone_htod(&vec![-1i32; rows]).unwrap();
        argmax_bf16(gpu, s, &dl, vocab, &mut dout).unwrap();
        let mut want = vec![0i32; rows];
        argmax_bf16_ref(logits, vocab, &mut want).unwrap();
        assert_eq!(
            s.clone_dtoh(&dout).unwrap(),
            want,
            "rows {rows} vocab {vocab}: {what}"
        );
    }

    /// The vectorized path's edges: vocabularies that end inside a round of a thread's four
    /// chunks (1024 threads x 8 logits apart), exactly on one, and unaligned rows (vocab not a
    /// multiple of 8: the scalar path); maxima tied inside one chunk and across chunks of one
    /// thread and of different threads; NaN and -inf.
    #[test]
    fn gpu_argmax_edges() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let round = 4 * 8192;
        for vocab in [
            8usize,
            8192,
            round,
            round + 8,
            round + 3 * 8192 + 16,
            2 * round - 8,
            1001,
        ] {
            let rows = 9;
            let mut l = rand_bf16(&mut rng, rows * vocab, -4.0, 4.0);
            let at = |r: usize, c: usize| r * vocab + c % vocab;
            let big = bf16::from_f32(7.5);
            // Row 0: tie inside one chunk (columns 3 and 5).
            l[at(0, 3)] = big;
            l[at(0, 5)] = big;
            // Row 1: tie across one thread's chunks (8192 apart) and another thread's.
            l[at(1, 8192 + 2)] = big;
            l[at(1, 2)] = big;
            l[at(1, 9)] = big;
            // Row 2: NaNs around the maximum, and in the first and last columns.
            l[at(2, 0)] = bf16::NAN;
            l[at(2, vocab - 1)] = bf16::NAN;
            l[at(2, vocab / 2)] = big;
            l[at(2, vocab / 2 + 1)] = bf16::NAN;
            // Row 3: all NaN but one -inf: index 0 (nothing is larger than -inf).
            for c in 0..vocab {
                l[at(3, c)] = bf16::NAN;
            }
            l[at(3, vocab - 1)] = bf16::NEG_INFINITY;
            // Row 4: all -inf: index 0.
            for c in 0..vocab {
                l[at(4, c)] = bf16::NEG_INFINITY;
            }
            // Row 5: the maximum in the last column (the tail round); row 6: +inf twice.
            l[at(5, vocab - 1)] = big;
            l[at(6, vocab - 1)] = bf16::INFINITY;
            l[at(6, vocab / 3)] = bf16::INFINITY;
            // Row 7: all equal: index 0. Row 8: -0 then +0 as the maximum over negatives.
            for c in 0..vocab {
                l[at(7, c)] = bf16::from_f32(-1.25);
                l[at(8, c)] = bf16::from_f32(-2.0);
            }
            l[at(8, vocab / 2)] = bf16::NEG_ZERO;
            l[at(8, vocab - 1)] = bf16::ZERO;
            check(&gpu, &l, vocab, &format!("edges, seed {seed}"));
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
