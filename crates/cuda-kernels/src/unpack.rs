//! Unpack of the CPU's AMX-packed bf16 weights (`kernels/unpack/unpack_vnni.cu`): a layer's
//! weights travel over PCIe in the prepacked form the CPU kernels read (amx-kernels'
//! `PackedWeight`), and this turns them back into the row-major `[N, K]` that
//! [`crate::gemm`] takes.
//!
//! Packed layout (crates/amx-kernels/src/gemm/pack.rs): `tiles[nblocks][kb]`,
//! `kb = ceil(K / 32)`, each tile 512 bf16 = `[16 k-pairs][16 columns][2]`; element `(n, k)`
//! sits in tile `(n / 16, k / 32)` at row `(k % 32) / 2`, column `n % 16`, slot `k % 2`; N is
//! padded to 16 and K to 32 with zeros. A fused gate/up weight (`N = 2·inter`, gate rows
//! first) interleaves the halves' blocks: block `2j` holds gate rows `16j ..`, block `2j + 1`
//! up rows `inter + 16j ..`, so `nblocks = 2·ceil(inter / 16)`.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, PushKernelArg};
use half::bf16;

use crate::{check_len, check_min_len, grid_stride, shape_err, Gpu, Result};

/// Weight rows (output features) of one packed column block.
pub const VNNI_BLOCK_N: usize = 16;
/// K depth of one packed tile.
pub const VNNI_BLOCK_K: usize = 32;
/// bf16 elements of one packed tile (1 KiB).
pub const VNNI_TILE_ELEMS: usize = VNNI_BLOCK_N * VNNI_BLOCK_K;

/// Packed 16-row column blocks of an `[n, k]` weight.
fn vnni_blocks(n: usize, gate_up: bool) -> usize {
    if gate_up {
        2 * (n / 2).div_ceil(VNNI_BLOCK_N)
    } else {
        n.div_ceil(VNNI_BLOCK_N)
    }
}

/// bf16 elements of the packed form of an `[n, k]` weight (padding included):
/// `nblocks · ceil(k / 32) · 512`. With `gate_up`, `n` is the fused width `2·inter` and must be
/// even (the launcher rejects an odd one).
pub fn vnni_packed_len(n: usize, k: usize, gate_up: bool) -> usize {
    vnni_blocks(n, gate_up) * k.div_ceil(VNNI_BLOCK_K) * VNNI_TILE_ELEMS
}

struct Names {
    op: &'static str,
    packed: &'static str,
    out: &'static str,
}

const GPU: Names = Names {
    op: "unpack_vnni_bf16",
    packed: "unpack_vnni_bf16: packed",
    out: "unpack_vnni_bf16: out",
};
const REF: Names = Names {
    op: "unpack_vnni_bf16_ref",
    packed: "unpack_vnni_bf16_ref: packed",
    out: "unpack_vnni_bf16_ref: out",
};

/// Checks the shape and both lengths; returns the packed tile count.
fn check_unpack(
    names: &Names,
    n: usize,
    k: usize,
    gate_up: bool,
    packed: usize,
    out: usize,
) -> Result<usize> {
    if n == 0 || k == 0 {
        return Err(shape_err(format!(
            "{}: weight shape [{n}, {k}]: both dimensions must be positive",
            names.op
        )));
    }
    if gate_up && n % 2 != 0 {
        return Err(shape_err(format!(
            "{}: gate/up weight of {n} rows: N must be even (gate rows, then as many up rows)",
            names.op
        )));
    }
    let elems = n
        .checked_mul(k)
        .ok_or_else(|| shape_err(format!("{}: weight shape [{n}, {k}] overflows", names.op)))?;
    let tiles = vnni_blocks(n, gate_up) * k.div_ceil(VNNI_BLOCK_K);
    check_len(names.packed, tiles * VNNI_TILE_ELEMS, packed)?;
    check_min_len(names.out, elems, out)?;
    Ok(tiles)
}

/// Unpacks `packed` (the AMX tiles of an `[n, k]` weight, `gate_up` for a fused gate/up one,
/// exactly [`vnni_packed_len`] elements, 16-byte aligned) into the first `n·k` elements of
/// `out`, row-major `[n, k]`; the rest of `out` is left as it is. Both may be views into larger
/// buffers; any `out` offset works (an `out` that starts 16-byte aligned with `k % 8 == 0`
/// takes the fast path of 16-byte stores).
pub fn unpack_vnni_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    packed: &impl DevicePtr<bf16>,
    n: usize,
    k: usize,
    gate_up: bool,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    let tiles = check_unpack(&GPU, n, k, gate_up, packed.len(), out.len())?;
    // One thread per 4 x 4 block of 32-bit words: 16 per tile.
    let items = tiles * 16;
    if items > 1 << 31 {
        return Err(shape_err(format!(
            "unpack_vnni_bf16: [{n}, {k}] is {tiles} tiles, more than one launch takes (2^27)"
        )));
    }
    let f = gpu.function("unpack_vnni_bf16")?;
    let (pp, _gp) = packed.device_ptr(stream);
    if pp % 16 != 0 {
        return Err(shape_err(
            "unpack_vnni_bf16: packed must start 16-byte aligned (a multiple of 8 elements)",
        ));
    }
    let (po, _go) = out.device_ptr_mut(stream);
    let mode: i32 = if k % 8 == 0 && po % 16 == 0 {
        0
    } else if k % 2 == 0 && po % 4 == 0 {
        1
    } else {
        2
    };
    let (nn, kk) = (n as i64, k as i64);
    let inter = if gate_up { (n / 2) as i64 } else { 0 };
    let kbn = k.div_ceil(VNNI_BLOCK_K) as u32;
    let it = items as u32;
    let mut b = stream.launch_builder(&f);
    b.arg(&nn)
        .arg(&kk)
        .arg(&inter)
        .arg(&kbn)
        .arg(&it)
        .arg(&mode)
        .arg(&pp)
        .arg(&po);
    // SAFETY: (int64 n, int64 k, int64 inter, uint32 kb, uint32 items, int mode,
    // const uint4* packed, bf16* out); packed holds exactly tiles * 512 elements (checked) and
    // is 16-byte aligned (checked), items = tiles * 16 < 2^31 (checked); out holds n * k
    // elements (checked) and the kernel writes only elements (row, col) with row < n, col < k;
    // mode 0 only when k % 8 == 0 and out is 16-byte aligned, mode 1 only when k is even and
    // out 4-byte aligned.
    unsafe { b.launch(grid_stride(gpu, items)) }?;
    Ok(())
}

/// Reference twin of [`unpack_vnni_bf16`] on host slices, read straight off the layout.
pub fn unpack_vnni_bf16_ref(
    packed: &[bf16],
    n: usize,
    k: usize,
    gate_up: bool,
    out: &mut [bf16],
) -> Result<()> {
    check_unpack(&REF, n, k, gate_up, packed.len(), out.len())?;
    let kbn = k.div_ceil(VNNI_BLOCK_K);
    let inter = n / 2;
    for row in 0..n {
        let (nb, c) = if !gate_up {
            (row / VNNI_BLOCK_N, row % VNNI_BLOCK_N)
        } else if row < inter {
            (2 * (row / VNNI_BLOCK_N), row % VNNI_BLOCK_N)
        } else {
            let r = row - inter;
            (2 * (r / VNNI_BLOCK_N) + 1, r % VNNI_BLOCK_N)
        };
        for col in 0..k {
            let tile = nb * kbn + col / VNNI_BLOCK_K;
            let kk = col % VNNI_BLOCK_K;
            out[row * k + col] =
                packed[tile * VNNI_TILE_ELEMS + (kk / 2) * 2 * VNNI_BLOCK_N + c * 2 + kk % 2];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use amx_kernels::PackedWeight;

    /// (n, k, gate_up): odd N, K not a multiple of 32 (nor of 8, nor even), a gate/up weight
    /// whose halves are not multiples of 16, a deep K with few rows, and exact tiles.
    const SHAPES: &[(usize, usize, bool)] = &[
        (1, 1, false),
        (50, 70, false),
        (17, 33, false),
        (80, 70, true),
        (2 * 21, 95, true),
        (24, 8192, false),
        (64, 8192, true),
        (32, 64, false),
        (48, 128, true),
    ];

    /// A random `[n, k]` weight and its packed form made by the CPU crate's own packer.
    fn packed(
        rng: &mut rand::rngs::StdRng,
        n: usize,
        k: usize,
        gate_up: bool,
    ) -> (Vec<bf16>, Vec<bf16>) {
        let w = rand_bf16(rng, n * k, -1.0, 1.0);
        let p = if gate_up {
            PackedWeight::from_bf16_gate_up(&w, n, k)
        } else {
            PackedWeight::from_bf16(&w, n, k)
        }
        .unwrap();
        (w, p.packed_bf16().to_vec())
    }

    /// Unpacking is a permutation: bit-exact, and NaN poison left anywhere fails.
    fn assert_bits(what: &str, seed: u64, got: &[bf16], want: &[bf16]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths (seed {seed})");
        if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            panic!(
                "{what}: element {i}: got {} ({:#06x}), want {} ({:#06x}) (seed {seed})",
                got[i],
                got[i].to_bits(),
                want[i],
                want[i].to_bits()
            );
        }
    }

    #[test]
    fn reference_inverts_the_cpu_packer() {
        let (mut rng, seed) = rng();
        for &(n, k, gate_up) in SHAPES {
            let (w, p) = packed(&mut rng, n, k, gate_up);
            assert_eq!(
                p.len(),
                vnni_packed_len(n, k, gate_up),
                "[{n}, {k}] {gate_up}"
            );
            // A longer output: the tail stays poisoned.
            let mut out = poisoned(n * k + 5);
            unpack_vnni_bf16_ref(&p, n, k, gate_up, &mut out).unwrap();
            let what = format!("unpack_vnni_bf16_ref [{n}, {k}] gate_up {gate_up}");
            assert_bits(&what, seed, &out[..n * k], &w);
            assert!(
                out[n * k..].iter().all(|v| v.is_nan()),
                "{what}: tail written"
            );
        }
    }

    #[test]
    fn gpu_unpack_vnni_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream();
        for &(n, k, gate_up) in SHAPES {
            let (w, p) = packed(&mut rng, n, k, gate_up);
            // Both sides are views into larger buffers, as in the engine's staging buffer; the
            // output offsets take the 16-, 4- and 2-byte store paths.
            let pad = 8;
            let mut pbuf = rand_bf16(&mut rng, pad + p.len() + pad, -1.0, 1.0);
            pbuf[pad..pad + p.len()].copy_from_slice(&p);
            let dp = s.clone_htod(&pbuf).unwrap();
            for off in [0usize, 8, 2, 1] {
                let total = off + n * k + 16;
                let mut dout = s.clone_htod(&poisoned(total)).unwrap();
                unpack_vnni_bf16(
                    &gpu,
                    s,
                    &dp.slice(pad..pad + p.len()),
                    n,
                    k,
                    gate_up,
                    &mut dout.slice_mut(off..off + n * k),
                )
                .unwrap();
                let got = s.clone_dtoh(&dout).unwrap();
                let what = format!("unpack_vnni_bf16 [{n}, {k}] gate_up {gate_up} offset {off}");
                assert_bits(&what, seed, &got[off..off + n * k], &w);
                assert!(
                    got[..off]
                        .iter()
                        .chain(&got[off + n * k..])
                        .all(|v| v.is_nan()),
                    "{what}: wrote outside its view (seed {seed})"
                );
            }
            // A packed view that does not start 16-byte aligned is refused.
            let mut dout = s.alloc_zeros::<bf16>(n * k).unwrap();
            let e = unpack_vnni_bf16(&gpu, s, &dp.slice(1..1 + p.len()), n, k, gate_up, &mut dout)
                .unwrap_err()
                .to_string();
            assert!(e.contains("aligned"), "{e}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let p = vec![bf16::ZERO; vnni_packed_len(50, 70, false)];
        let mut out = vec![bf16::ZERO; 50 * 70];
        let e = |r: Result<()>| r.unwrap_err().to_string();
        let m = e(unpack_vnni_bf16_ref(&p[1..], 50, 70, false, &mut out));
        assert!(
            m.contains("packed") && m.contains(&p.len().to_string()),
            "{m}"
        );
        let m = e(unpack_vnni_bf16_ref(&p, 50, 70, false, &mut out[1..]));
        assert!(m.contains("out") && m.contains("3500"), "{m}");
        let m = e(unpack_vnni_bf16_ref(&p, 0, 70, false, &mut out));
        assert!(m.contains("positive"), "{m}");
        let m = e(unpack_vnni_bf16_ref(&p, 51, 70, true, &mut out));
        assert!(m.contains("even"), "{m}");
        // A gate/up weight's halves are padded on their own: 2·ceil(40/16) blocks, not 5.
        assert_eq!(vnni_packed_len(80, 70, true), 6 * 3 * 512);
        assert_eq!(vnni_packed_len(80, 70, false), 5 * 3 * 512);
    }
}
