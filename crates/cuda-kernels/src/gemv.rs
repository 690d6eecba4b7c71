//! Skinny bf16 GEMM for decode (`kernels/gemm/gemv.cu`): `y[m, n] = x[m, k] · wᵀ` for
//! m = 1..=[`GEMV_MAX_M`] rows of x, `w` the row-major `[n, k]` weight (HF layout), f32
//! accumulation, bf16 output, with the epilogues of [`Blas::linear_bf16`](crate::gemm::Blas)
//! (bias, bias + ReLU, accumulate) and a fused gate/up + SiLU·mul for LLaMA's MLP.
//!
//! At decode every linear streams its whole weight for a handful of rows, so the kernel is
//! built to keep HBM busy: 16-byte loads of W that bypass L1, 8 to 32 of them in flight per
//! thread, one warp (or 2 or 4 splitting k) per group of 4 weight rows, x re-read through L1.
//! The layout of the work is described at the top of the `.cu`.
//!
//! Requirements: `k % 8 == 0` and `x`, `w` 16-byte aligned ([`Gemv::qualifies`]); a call that
//! does not meet them is an error here, and `Blas` sends it to cuBLASLt instead.

use cudarc::driver::{CudaFunction, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::gemm::Epilogue;
use crate::{check_len, shape_err, Gpu, Result};

/// Most rows of x the kernel takes (one entry point per m: `gemv_bf16_m{m}`).
pub const GEMV_MAX_M: usize = 8;
/// Weight rows per warp group (`gemv::ROWS` in the `.cu`).
const GEMV_ROWS: usize = 4;
/// Warps per block (`gemv::WARPS` in the `.cu`).
const GEMV_WARPS: usize = 4;

pub(crate) const FLAG_BIAS: i32 = 1;
pub(crate) const FLAG_RELU: i32 = 2;
pub(crate) const FLAG_ACC: i32 = 4;
pub(crate) const FLAG_SILU: i32 = 8;

const NAMES: [&str; GEMV_MAX_M] = [
    "gemv_bf16_m1",
    "gemv_bf16_m2",
    "gemv_bf16_m3",
    "gemv_bf16_m4",
    "gemv_bf16_m5",
    "gemv_bf16_m6",
    "gemv_bf16_m7",
    "gemv_bf16_m8",
];

/// Warps the launcher aims for per SM before it splits k among more warps: about two waves of
/// the 2-3 blocks of 4 warps that fit an SM at the kernel's 130-180 registers.
const TARGET_WARPS_PER_SM: usize = 24;

/// `TANDEM_GEMV_KSPLIT=1|2|4` forces the number of warps per row group (a tuning knob for the
/// GPU host; read once); unset or `auto`: the heuristic of [`Gemv::ksplit`].
fn ksplit_override() -> Option<usize> {
    static V: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        platform::env::choice(
            "TANDEM_GEMV_KSPLIT",
            &[
                ("auto", None),
                ("1", Some(1)),
                ("2", Some(2)),
                ("4", Some(4)),
            ],
            None,
        )
    })
}

/// The GEMV kernels of one device, looked up once (a `Blas` keeps one).
#[derive(Clone)]
pub struct Gemv {
    fns: Vec<CudaFunction>,
    sms: u32,
    /// Launch with PDL ([`crate::launch::pdl_enabled`]).
    pdl: bool,
}

impl Gemv {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Gemv {
            fns: NAMES
                .iter()
                .map(|n| gpu.function(n))
                .collect::<Result<_>>()?,
            sms: gpu.sms(),
            pdl: crate::launch::pdl_enabled(gpu),
        })
    }

    /// Whether the kernel takes a call of `m` rows, inner size `k`, with x and w at these device
    /// addresses: 1 <= m <= 8, k a nonzero multiple of 8, both pointers 16-byte aligned (then so
    /// is every row).
    pub fn qualifies(m: usize, k: usize, x_ptr: u64, w_ptr: u64) -> bool {
        (1..=GEMV_MAX_M).contains(&m)
            && k > 0
            && k.is_multiple_of(8)
            && x_ptr.is_multiple_of(16)
            && w_ptr.is_multiple_of(16)
    }

    /// Warps per row group: 1, or 2 or 4 when the groups alone give fewer than
    /// TARGET_WARPS_PER_SM warps per SM and each warp keeps at least 2 steps of 256 elements.
    fn ksplit(&self, groups: usize, chunks: usize) -> usize {
        if let Some(k) = ksplit_override() {
            return k;
        }
        let target = self.sms as usize * TARGET_WARPS_PER_SM;
        let mut ks = 1;
        while ks < GEMV_WARPS && groups * ks < target && chunks >= 128 * ks {
            ks *= 2;
        }
        ks
    }

    /// Checked launch on raw device addresses. `n_out` is the number of output columns (n, or f
    /// with FLAG_SILU, where w has 2f rows); the caller has checked every length.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch(
        &self,
        stream: &CudaStream,
        m: usize,
        n_out: usize,
        k: usize,
        px: u64,
        pw: u64,
        pbias: u64,
        py: u64,
        flags: i32,
    ) -> Result<()> {
        if !Self::qualifies(m, k, px, pw) {
            return Err(shape_err(format!(
                "gemv_bf16: needs 1 <= m <= {GEMV_MAX_M} (m {m}), k a nonzero multiple of 8 \
                 (k {k}), x and w 16-byte aligned (x at {px:#x}, w at {pw:#x})"
            )));
        }
        let rows_per_group = if flags & FLAG_SILU != 0 {
            GEMV_ROWS / 2
        } else {
            GEMV_ROWS
        };
        let groups = n_out.div_ceil(rows_per_group);
        let ks = self.ksplit(groups, k / 8);
        let blocks = groups.div_ceil(GEMV_WARPS / ks);
        if blocks > i32::MAX as usize || n_out > i64::MAX as usize / 2 {
            return Err(shape_err(format!(
                "gemv_bf16: n {n_out} needs {blocks} blocks, more than a grid holds"
            )));
        }
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (32 * GEMV_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n, k, ks) = (n_out as i64, k as i64, ks as i32);
        let f = &self.fns[m - 1];
        let mut b = crate::launch::Launch::with_pdl(stream, f, self.pdl);
        b.arg(&n)
            .arg(&k)
            .arg(&px)
            .arg(&pw)
            .arg(&pbias)
            .arg(&py)
            .arg(&flags)
            .arg(&ks);
        // SAFETY: gemv_bf16_m{m} is (int64 n, int64 k, const bf16* x, const bf16* w, const
        // bf16* bias, bf16* y, int flags, int ksplit). The callers checked that x holds m*k
        // elements, w n*k (2n*k with FLAG_SILU), y m*n, bias n when FLAG_BIAS is set (it is
        // not read otherwise); x and w are 16-byte aligned and k % 8 == 0 (checked above), as
        // the 16-byte loads need; ksplit is 1, 2 or 4 and the block 4 warps, as the kernel
        // assumes; rows past n are clamped inside the kernel and not stored.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `y = x · wᵀ` (+ bias, ReLU as `epilogue` says) (+ y when `accumulate`), `x` `[m, k]`, `w`
    /// `[n, k]`, `y` `[m, n]`, on `stream`. Errors (nothing queued) on wrong lengths, and on
    /// calls that do not [qualify](Gemv::qualifies).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_bf16(
        &self,
        stream: &CudaStream,
        m: usize,
        n: usize,
        k: usize,
        x: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        epilogue: Epilogue<'_>,
        accumulate: bool,
        y: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let what = "gemv_bf16";
        check_len(what, m * k, x.len())?;
        check_len(what, n * k, w.len())?;
        check_len(what, m * n, y.len())?;
        let (mut flags, bias) = match epilogue {
            Epilogue::None => (0, None),
            Epilogue::Bias(b) => (FLAG_BIAS, Some(b)),
            Epilogue::BiasRelu(b) => (FLAG_BIAS | FLAG_RELU, Some(b)),
        };
        if let Some(b) = bias {
            check_len("gemv_bf16: bias", n, b.len())?;
        }
        if accumulate {
            flags |= FLAG_ACC;
        }
        if n == 0 && m > 0 {
            return Ok(());
        }
        let (px, _gx) = x.device_ptr(stream);
        let (pw, _gw) = w.device_ptr(stream);
        let pb = bias.map(|b| b.device_ptr(stream));
        let (py, _gy) = y.device_ptr_mut(stream);
        let pbias = pb.as_ref().map_or(0, |(p, _)| *p);
        self.launch(stream, m, n, k, px, pw, pbias, py, flags)
    }

    /// LLaMA's gate/up projection and activation in one pass: `act[m, f] = silu(x·gateᵀ) ·
    /// (x·upᵀ)`, with `w_gate_up` `[2f, k]` (gate rows first, as
    /// [`GateUp::fused`](crate::elementwise::GateUp::fused) reads them), each product rounded
    /// to bf16 before the activation exactly as `linear_bf16` + `silu_mul_bf16` do.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_silu_mul_bf16(
        &self,
        stream: &CudaStream,
        m: usize,
        f: usize,
        k: usize,
        x: &impl DevicePtr<bf16>,
        w_gate_up: &impl DevicePtr<bf16>,
        act: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let what = "gemv_silu_mul_bf16";
        check_len(what, m * k, x.len())?;
        check_len(what, 2 * f * k, w_gate_up.len())?;
        check_len(what, m * f, act.len())?;
        if f == 0 && m > 0 {
            return Ok(());
        }
        let (px, _gx) = x.device_ptr(stream);
        let (pw, _gw) = w_gate_up.device_ptr(stream);
        let (py, _gy) = act.device_ptr_mut(stream);
        self.launch(stream, m, f, k, px, pw, 0, py, FLAG_SILU)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elementwise::{silu_mul_bf16_ref, GateUp};
    use crate::gemm::{linear_bf16_ref, Blas, EpilogueRef};
    use crate::testutil::*;

    /// f32 accumulation of k products in [-1, 1] (partial sums of |·| ~ sqrt(k)/3, typical
    /// error ~ sqrt(k)·2^-24 of that, ~1e-4 at k = 14336) in a different order than the f64
    /// reference; near zero that is all that separates them. 1e-3 held for cuBLASLt at
    /// k <= 1024; scaled by sqrt(k / 1024) above.
    fn gemv_atol(k: usize) -> f32 {
        1e-3 * (k as f32 / 1024.0).sqrt().max(1.0)
    }
    /// Away from zero: the one rounding to bf16, which two sums a few f32 ulps apart can take
    /// to neighbouring values (one bf16 step, <= 2^-7 of the value).
    const GEMV_RTOL: f32 = BF16_ULP;
    /// The absolute floor of gemm.rs's accumulate check (cuBLASLt's extra roundings).
    const LT_ACCUMULATE_ATOL: f32 = 1e-3;

    /// The fused SiLU·mul against the reference composition (f64 products rounded to bf16,
    /// then silu·mul in f64, one rounding). g and u may each be one bf16 step (or gemv_atol)
    /// off, as in the two-step path; silu' <= 1.1, so the output may be off by
    /// 1.1·|u|·δg + |silu(g)|·δu + δg·δu, plus one rounding of its own.
    fn check_silu(
        what: &str,
        seed: u64,
        got: &[bf16],
        want: &[bf16],
        gu: &[bf16],
        f: usize,
        k: usize,
    ) {
        let atol = gemv_atol(k);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let (r, c) = (i / f, i % f);
            let gate = gu[r * 2 * f + c].to_f32();
            let up = gu[r * 2 * f + f + c].to_f32();
            let silu = gate / (1.0 + (-gate).exp());
            let (dg, du) = (atol + GEMV_RTOL * gate.abs(), atol + GEMV_RTOL * up.abs());
            let (g, w) = (g.to_f32(), w.to_f32());
            let tol = 1.1 * up.abs() * dg + silu.abs() * du + dg * du + GEMV_RTOL * w.abs() + 1e-6;
            assert!(
                (g - w).abs() <= tol,
                "{what}: element {i}: got {g}, want {w} (gate {gate}, up {up}, tol {tol}; seed {seed})"
            );
        }
    }

    #[test]
    fn gpu_gemv_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream().clone();
        let blas = Blas::new(&gpu, s.clone()).unwrap();
        let gemv = Gemv::new(&gpu).unwrap();
        for (m, n, k) in [
            (1usize, 1000usize, 8usize),
            (2, 4097, 4096),
            (3, 1000, 14336),
            (5, 4097, 8),
            (8, 1000, 4096),
            (8, 4097, 14336),
            (1, 28672, 4096),
            (4, 3, 4096),
            (1, 1, 14336),
            (7, 6, 520),
            // k not a multiple of 8: cuBLASLt through Blas, an error from Gemv.
            (3, 1000, 4100),
        ] {
            let x = rand_bf16(&mut rng, m * k, -1.0, 1.0);
            let w = rand_bf16(&mut rng, n * k, -1.0, 1.0);
            let bias = rand_bf16(&mut rng, n, -1.0, 1.0);
            let y0 = rand_bf16(&mut rng, m * n, -1.0, 1.0);
            let (dx, dw, db) = (
                s.clone_htod(&x).unwrap(),
                s.clone_htod(&w).unwrap(),
                s.clone_htod(&bias).unwrap(),
            );
            let bv = db.as_view();
            let direct = k % 8 == 0;
            let (atol, rtol) = (gemv_atol(k), GEMV_RTOL);
            for (i, accumulate) in [(0, false), (1, false), (2, false), (0, true), (1, true)] {
                let init = if accumulate {
                    y0.clone()
                } else {
                    poisoned(m * n)
                };
                let epi = [Epilogue::None, Epilogue::Bias(&bv), Epilogue::BiasRelu(&bv)][i];
                let epi_ref = [
                    EpilogueRef::None,
                    EpilogueRef::Bias(&bias),
                    EpilogueRef::BiasRelu(&bias),
                ][i];
                let mut want = y0.clone();
                linear_bf16_ref(m, n, k, &x, &w, epi_ref, accumulate, &mut want).unwrap();
                let what = format!("gemv m {m} n {n} k {k} epilogue {i} accumulate {accumulate}");
                // The kernel itself (qualifying shapes), then Blas's dispatch (GEMV unless
                // TANDEM_GEMV=0 or k % 8 != 0), then cuBLASLt forced.
                let mut dy = s.clone_htod(&init).unwrap();
                let r = gemv.linear_bf16(&s, m, n, k, &dx, &dw, epi, accumulate, &mut dy);
                assert_eq!(r.is_ok(), direct, "{what}: {r:?}");
                let mut got = Vec::new();
                if direct {
                    got = s.clone_dtoh(&dy).unwrap();
                    assert_close(&what, seed, &got, &want, atol, rtol);
                }
                let mut dy = s.clone_htod(&init).unwrap();
                blas.linear_bf16(m, n, k, &dx, &dw, epi, accumulate, &mut dy)
                    .unwrap();
                let via_blas = s.clone_dtoh(&dy).unwrap();
                let mut dy = s.clone_htod(&init).unwrap();
                blas.linear_bf16_lt(m, n, k, &dx, &dw, epi, accumulate, &mut dy)
                    .unwrap();
                let lt = s.clone_dtoh(&dy).unwrap();
                if accumulate || i > 0 {
                    // cuBLASLt may round the product before adding the bias and the old y
                    // (see assert_accumulated; seen 0.0029 off at |y| = 0.11, k 4100, bias).
                    let rounded = lt_intermediates(m, n, k, &x, &w, epi_ref);
                    let atol = atol.max(LT_ACCUMULATE_ATOL);
                    for (name, v) in [("blas", &via_blas), ("cublaslt", &lt)] {
                        let what = format!("{what} {name}");
                        assert_accumulated(&what, seed, v, &want, &rounded, atol);
                    }
                } else {
                    assert_close(&format!("{what} blas"), seed, &via_blas, &want, atol, rtol);
                    assert_close(&format!("{what} cublaslt"), seed, &lt, &want, atol, rtol);
                }
                if direct && !accumulate {
                    // GEMV vs cuBLASLt (TANDEM_GEMV=0): each within tolerance of the
                    // reference, so within twice it of each other. (With accumulate, each was
                    // held to the reference above with a bound on the product's magnitude,
                    // which the two results do not carry.)
                    for (j, (g, l)) in got.iter().zip(&lt).enumerate() {
                        let (g, l) = (g.to_f32(), l.to_f32());
                        let tol = 2.0 * atol + 3.0 * rtol * l.abs().max(g.abs());
                        assert!(
                            (g - l).abs() <= tol,
                            "{what}: gemv {g} vs cublaslt {l} at {j} (seed {seed})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gpu_gemv_silu_mul_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream().clone();
        let blas = Blas::new(&gpu, s.clone()).unwrap();
        let gemv = Gemv::new(&gpu).unwrap();
        for (m, f, k) in [
            (1usize, 1000usize, 8usize),
            (2, 4097, 4096),
            (3, 1000, 14336),
            (5, 3, 4096),
            (8, 1001, 4096),
            (8, 14336, 4096),
            (4, 500, 4100),
            (9, 300, 512),
        ] {
            let x = rand_bf16(&mut rng, m * k, -1.0, 1.0);
            let w = rand_bf16(&mut rng, 2 * f * k, -1.0, 1.0);
            let (dx, dw) = (s.clone_htod(&x).unwrap(), s.clone_htod(&w).unwrap());
            let mut gu = vec![bf16::ZERO; m * 2 * f];
            linear_bf16_ref(m, 2 * f, k, &x, &w, EpilogueRef::None, false, &mut gu).unwrap();
            let mut want = vec![bf16::ZERO; m * f];
            silu_mul_bf16_ref(m, f, &gu, GateUp::fused(f), &mut want).unwrap();
            let what = format!("silu_mul m {m} f {f} k {k}");
            let direct = m <= GEMV_MAX_M && k % 8 == 0;
            let mut da = s.clone_htod(&poisoned(m * f)).unwrap();
            let r = gemv.linear_silu_mul_bf16(&s, m, f, k, &dx, &dw, &mut da);
            assert_eq!(r.is_ok(), direct, "{what}: {r:?}");
            if direct {
                let got = s.clone_dtoh(&da).unwrap();
                check_silu(&what, seed, &got, &want, &gu, f, k);
            }
            // Blas's entry (GEMV or the two-step path), then the two-step path forced.
            let mut scratch = s.clone_htod(&poisoned(m * 2 * f)).unwrap();
            let mut da = s.clone_htod(&poisoned(m * f)).unwrap();
            blas.linear_silu_mul_bf16(m, f, k, &dx, &dw, &mut scratch, &mut da)
                .unwrap();
            let got = s.clone_dtoh(&da).unwrap();
            check_silu(&format!("{what} blas"), seed, &got, &want, &gu, f, k);
            let mut da = s.clone_htod(&poisoned(m * f)).unwrap();
            blas.linear_silu_mul_bf16_lt(m, f, k, &dx, &dw, &mut scratch, &mut da)
                .unwrap();
            let got = s.clone_dtoh(&da).unwrap();
            check_silu(&format!("{what} two-step"), seed, &got, &want, &gu, f, k);
        }
    }

    #[test]
    fn gpu_gemv_bad_shapes_are_errors() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let s = gpu.stream().clone();
        let gemv = Gemv::new(&gpu).unwrap();
        let blas = Blas::new(&gpu, s.clone()).unwrap();
        let buf = s.clone_htod(&vec![bf16::ONE; 9 * 4096 + 8]).unwrap();
        let mut y = s.clone_htod(&vec![bf16::ZERO; 9 * 64]).unwrap();
        let (x, w) = (buf.slice(..2 * 64), buf.slice(..64 * 64));
        let ok = gemv.linear_bf16(
            &s,
            2,
            64,
            64,
            &x,
            &w,
            Epilogue::None,
            false,
            &mut y.slice_mut(..128),
        );
        assert!(ok.is_ok(), "{ok:?}");
        // Lengths.
        assert!(gemv
            .linear_bf16(
                &s,
                2,
                64,
                64,
                &x,
                &w,
                Epilogue::None,
                false,
                &mut y.slice_mut(..127)
            )
            .is_err());
        assert!(gemv
            .linear_bf16(
                &s,
                2,
                64,
                64,
                &buf.slice(..127),
                &w,
                Epilogue::None,
                false,
                &mut y.slice_mut(..128)
            )
            .is_err());
        let short_bias = buf.slice(..63);
        assert!(gemv
            .linear_bf16(
                &s,
                2,
                64,
                64,
                &x,
                &w,
                Epilogue::Bias(&short_bias),
                false,
                &mut y.slice_mut(..128)
            )
            .is_err());
        // m outside 1..=8.
        assert!(gemv
            .linear_bf16(
                &s,
                9,
                64,
                64,
                &buf.slice(..9 * 64),
                &w,
                Epilogue::None,
                false,
                &mut y.slice_mut(..9 * 64)
            )
            .is_err());
        // Misaligned x (by one element) and k not a multiple of 8.
        assert!(gemv
            .linear_bf16(
                &s,
                2,
                64,
                64,
                &buf.slice(1..129),
                &w,
                Epilogue::None,
                false,
                &mut y.slice_mut(..128)
            )
            .is_err());
        assert!(gemv
            .linear_bf16(
                &s,
                2,
                16,
                60,
                &buf.slice(..120),
                &buf.slice(..960),
                Epilogue::None,
                false,
                &mut y.slice_mut(..32)
            )
            .is_err());
        // Silu: w must be [2f, k], act [m, f]; the scratch of the Blas entry [m, 2f].
        let mut act = y.slice_mut(..2 * 32);
        assert!(gemv
            .linear_silu_mul_bf16(&s, 2, 32, 64, &x, &w, &mut act)
            .is_ok());
        assert!(gemv
            .linear_silu_mul_bf16(&s, 2, 32, 64, &x, &buf.slice(..63 * 64), &mut act)
            .is_err());
        let mut scratch = s.alloc_zeros::<bf16>(2 * 64).unwrap();
        assert!(blas
            .linear_silu_mul_bf16(2, 32, 64, &x, &w, &mut scratch, &mut act)
            .is_ok());
        let mut small = s.alloc_zeros::<bf16>(2 * 64 - 1).unwrap();
        assert!(blas
            .linear_silu_mul_bf16(2, 32, 64, &x, &w, &mut small, &mut act)
            .is_err());
        s.synchronize().unwrap();
    }

    /// A misaligned x (a view at an odd element) is not the GEMV kernel's: Blas sends it to
    /// cuBLASLt, whose plan was chosen without alignment hints. Kept apart from the other shape
    /// tests so that a cuBLASLt refusal shows up under its own name.
    #[test]
    fn gpu_blas_misaligned_x_falls_back() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream().clone();
        let blas = Blas::new(&gpu, s.clone()).unwrap();
        let (m, n, k) = (2usize, 64usize, 64usize);
        let x = rand_bf16(&mut rng, m * k + 1, -1.0, 1.0);
        let w = rand_bf16(&mut rng, n * k, -1.0, 1.0);
        let (dx, dw) = (s.clone_htod(&x).unwrap(), s.clone_htod(&w).unwrap());
        let mut dy = s.clone_htod(&poisoned(m * n)).unwrap();
        blas.linear_bf16(m, n, k, &dx.slice(1..), &dw, Epilogue::None, false, &mut dy)
            .unwrap();
        let mut want = vec![bf16::ZERO; m * n];
        linear_bf16_ref(m, n, k, &x[1..], &w, EpilogueRef::None, false, &mut want).unwrap();
        let got = s.clone_dtoh(&dy).unwrap();
        assert_close("misaligned x", seed, &got, &want, gemv_atol(k), GEMV_RTOL);
    }
}
