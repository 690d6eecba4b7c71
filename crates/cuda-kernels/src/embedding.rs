//! Embedding gather (`kernels/embedding/gather.cu`): `out[t, :] = table[ids[t], :]`.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, PushKernelArg};
use half::bf16;

use crate::{check_len, grid_stride, shape_err, DeviceIds, Gpu, Result};

fn check(
    what: &'static str,
    hidden: usize,
    table: usize,
    tokens: usize,
    out: usize,
) -> Result<usize> {
    if hidden == 0 || table % hidden != 0 {
        return Err(shape_err(format!(
            "{what}: table of {table} elements is not rows of hidden {hidden}"
        )));
    }
    check_len(what, tokens * hidden, out)?;
    Ok(table / hidden)
}

/// Gathers the rows of `table` (`[vocab, hidden]`) named by `ids` into `out` (`[ids, hidden]`).
pub fn embedding_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    table: &impl DevicePtr<bf16>,
    hidden: usize,
    ids: &DeviceIds,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    let vocab = check("embedding_bf16", hidden, table.len(), ids.len(), out.len())?;
    ids.check_range("embedding_bf16: token ids", 0, vocab as i64)?;
    if ids.is_empty() {
        return Ok(());
    }
    let f = gpu.function("embedding_bf16")?;
    let (pt, _gt) = table.device_ptr(stream);
    let (pi, _gi) = ids.dev().device_ptr(stream);
    let (po, _go) = out.device_ptr_mut(stream);
    let (t, h) = (ids.len() as i64, hidden as i64);
    let mut b = stream.launch_builder(&f);
    b.arg(&t).arg(&h).arg(&pt).arg(&pi).arg(&po);
    // SAFETY: (tokens, H, const bf16* table, const int* ids, bf16* out); every id is a row of
    // the table (checked above), out holds tokens*H.
    unsafe { b.launch(grid_stride(gpu, ids.len() * hidden / 8 + 1)) }?;
    Ok(())
}

pub fn embedding_bf16_ref(
    table: &[bf16],
    hidden: usize,
    ids: &[i32],
    out: &mut [bf16],
) -> Result<()> {
    let vocab = check(
        "embedding_bf16_ref",
        hidden,
        table.len(),
        ids.len(),
        out.len(),
    )?;
    for (t, &id) in ids.iter().enumerate() {
        if id < 0 || id as usize >= vocab {
            return Err(crate::Error::IdRange {
                what: "embedding_bf16_ref: token ids",
                id: id as i64,
                bound: vocab as i64,
            });
        }
        out[t * hidden..][..hidden].copy_from_slice(&table[id as usize * hidden..][..hidden]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn gpu_embedding_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream();
        for (vocab, h, tokens) in [(10usize, 8usize, 1usize), (1000, 100, 13), (50272, 768, 64)] {
            let table = rand_bf16(&mut rng, vocab * h, -1.0, 1.0);
            let ids: Vec<i32> = (0..tokens)
                .map(|_| rand::Rng::gen_range(&mut rng, 0..vocab as i32))
                .collect();
            let dt = s.clone_htod(&table).unwrap();
            let di = DeviceIds::upload(s, &ids).unwrap();
            let mut dout = s.clone_htod(&poisoned(tokens * h)).unwrap();
            embedding_bf16(&gpu, s, &dt, h, &di, &mut dout).unwrap();
            let mut want = vec![bf16::ZERO; tokens * h];
            embedding_bf16_ref(&table, h, &ids, &mut want).unwrap();
            // A copy: exact.
            assert_close(
                "embedding",
                seed,
                &s.clone_dtoh(&dout).unwrap(),
                &want,
                0.0,
                0.0,
            );
            let bad = DeviceIds::upload(s, &[vocab as i32]).unwrap();
            let e = embedding_bf16(&gpu, s, &dt, h, &bad, &mut dout.slice_mut(..h))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("token ids") && e.contains(&vocab.to_string()),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_ids_are_errors() {
        let table = vec![bf16::ONE; 16];
        let mut out = vec![bf16::ZERO; 8];
        assert!(embedding_bf16_ref(&table, 8, &[-1], &mut out).is_err());
        assert!(embedding_bf16_ref(&table, 8, &[2], &mut out).is_err());
        assert!(embedding_bf16_ref(&table, 5, &[0], &mut out).is_err());
    }
}
