//! bf16 GEMM through cuBLASLt for HF linear layers: `y[M, N] = x[M, K] · wᵀ` with `w` the
//! row-major `[out = N, in = K]` weight as checkpoints store it, f32 accumulation, bf16 output.
//!
//! Row-major buffers read as column-major are transposed, so the call cuBLASLt sees is
//! `yᵀ (N×M, ld N) = op(w as K×N, ld K)ᵀ · (x as K×M, ld K)`: A = w with TRANSA, B = x, no
//! copies. Epilogues save a pass over `y`: a bias (OPT), bias + ReLU (OPT's fc1), and
//! `accumulate` (beta = 1: the residual add after the output projection and fc2/down).
//!
//! Descriptors and the algorithm chosen by cuBLASLt's heuristic are cached per shape and
//! epilogue; a `Blas` is bound to one stream, like a cuBLAS handle.
//!
//! One-row calls (batch-1 decode; k a multiple of 8, x and w 16-byte aligned) go to the GEMV
//! kernel of [`crate::gemv`] instead, which streams the weight about as fast as cuBLASLt, fuses
//! LLaMA's SiLU·mul into gate/up, and on Hopper starts loading its weights while the kernel
//! before it finishes (programmatic dependent launch, [`crate::launch`]); see `GEMV_AUTO_MAX_M`
//! for the measured limits. `TANDEM_GEMV=0` (read once per process) sends every call to
//! cuBLASLt, `TANDEM_GEMV=wide` only the wide weights' one-row calls to the GEMV kernel. [`Blas::linear_bf16_lt`] and [`Blas::linear_silu_mul_bf16_lt`] always take the
//! cuBLASLt path (tests and benches compare the two).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::elementwise::{silu_mul_launch, GateUp};
use crate::gemv::{Gemv, FLAG_SILU};
use crate::{check_len, Error, Gpu, Result};

/// Rows up to which `Blas` hands a product to the GEMV kernel. Measured on the H200 host
/// (LLaMA-3-8B and OPT-30B linears): at one row it matches cuBLASLt (0.84–1.09×, and saves the
/// SiLU·mul pass of gate/up); at 4 and 8 rows cuBLASLt is 1.1–2.1× faster.
const GEMV_AUTO_MAX_M: usize = 1;
/// With `TANDEM_GEMV=wide`, only weights with at least this many rows per column (wide outputs:
/// gate/up, FC1, OPT's QKV, the LM head), where it was 0–8 % faster alone; on square and tall
/// weights (o, down, FC2, LLaMA's QKV) cuBLASLt was 1–16 % faster alone. In a decode step the
/// GEMV wins on every shape: LLaMA-3-8B batch 1 on an H100, 5.71 ms a token with every one-row
/// product on the GEMV against 5.96 ms with the wide ones only (both with PDL). The fused
/// SiLU·mul entry takes the GEMV kernel at one row regardless (it saves a pass).
const GEMV_AUTO_MIN_N_PER_K: usize = 2;

/// Which one-row products go to the GEMV kernel (`TANDEM_GEMV=1|0|wide`, read once).
#[derive(Clone, Copy, PartialEq, Eq)]
enum GemvUse {
    /// Every qualifying one-row product (`1`, the default).
    All,
    /// None: cuBLASLt for all (`0`).
    Off,
    /// Only the wide weights' (`wide`).
    Wide,
}

fn gemv_use() -> GemvUse {
    static U: std::sync::OnceLock<GemvUse> = std::sync::OnceLock::new();
    *U.get_or_init(|| {
        platform::env::choice(
            "TANDEM_GEMV",
            &[
                ("1", GemvUse::All),
                ("0", GemvUse::Off),
                ("wide", GemvUse::Wide),
            ],
            GemvUse::All,
        )
    })
}

/// Whether `Blas` may use the GEMV kernel: not when `TANDEM_GEMV=0`.
fn gemv_enabled() -> bool {
    gemv_use() != GemvUse::Off
}

/// Whether only wide weights' one-row products go to the GEMV kernel (`TANDEM_GEMV=wide`); by
/// default every qualifying one-row product does.
fn gemv_wide_only() -> bool {
    gemv_use() == GemvUse::Wide
}

/// What cuBLASLt adds after the product.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    None,
    /// `+ bias[n]` (length N).
    Bias(&'a CudaView<'a, bf16>),
    /// `relu(· + bias[n])`.
    BiasRelu(&'a CudaView<'a, bf16>),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    epilogue: u8,
    /// The largest power of two, up to 16, that every operand's address is a multiple of:
    /// cuBLASLt's heuristic assumes 16 unless told, and its pick then refuses less.
    align: u8,
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created in `plan` and owned by this Plan only.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A cuBLASLt handle bound to one stream, with its workspace and plan cache, and the GEMV and
/// SiLU·mul kernels of the device for decode-sized calls.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    plans: Mutex<HashMap<Key, Plan>>,
    gemv: Gemv,
    silu_mul: CudaFunction,
    sms: u32,
    use_gemv: bool,
}

// SAFETY: the handle is used under the plans mutex or for launches on the bound stream, which
// cuBLASLt allows from any thread; descriptors are only touched with the mutex held.
unsafe impl Send for Blas {}
// SAFETY: as above.
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        self.plans.lock().unwrap().clear();
        // SAFETY: created in `new`; the plans using it are gone.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// cuBLASLt's recommended workspace on Hopper (32 MiB; 4 MiB would do before it).
const WORKSPACE_BYTES: usize = 32 << 20;

fn set_attr<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<()> {
    // SAFETY: `v` points to a live value of the attribute's type and size.
    unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            v as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    }?;
    Ok(())
}

impl Blas {
    pub fn new(gpu: &Gpu, stream: Arc<CudaStream>) -> Result<Self> {
        gpu.ctx().bind_to_thread()?;
        let handle = lt::create_handle()?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        Ok(Blas {
            handle,
            workspace,
            stream,
            plans: Mutex::new(HashMap::new()),
            gemv: Gemv::new(gpu)?,
            silu_mul: gpu.function("silu_mul_bf16")?,
            sms: gpu.sms(),
            use_gemv: gemv_enabled(),
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn plan(&self, key: Key) -> Result<Plan> {
        let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
        let bf = sys::cudaDataType_t::CUDA_R_16BF;
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )?;
        let mut plan = Plan {
            desc,
            a: lt::create_matrix_layout(bf, k, n, k as i64)?,
            b: lt::create_matrix_layout(bf, k, m, k as i64)?,
            c: lt::create_matrix_layout(bf, n, m, n as i64)?,
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // cublasOperation_t values (an int32 attribute): CUBLAS_OP_T = 1, CUBLAS_OP_N = 0.
        let (t, nt) = (1i32, 0i32);
        set_attr(
            desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &t,
        )?;
        set_attr(
            desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            &nt,
        )?;
        let epi = match key.epilogue {
            1 => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            2 => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS,
            _ => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
        };
        set_attr(
            desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &epi,
        )?;
        if key.epilogue != 0 {
            // The heuristic wants to see a bias pointer; the real one is set per call.
            let (p, _g) = self.workspace.device_ptr(&self.stream);
            set_attr(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &p,
            )?;
        }
        let pref = lt::create_matmul_pref()?;
        let ws = WORKSPACE_BYTES;
        // SAFETY: pref is live; the attribute is a usize.
        let r = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const usize as *const c_void,
                std::mem::size_of::<usize>(),
            )
        }
        // Split-K partial sums are reduced in f32 only: the in-place and output-type schemes
        // reduce them in bf16, which with beta = 1 (accumulate) was seen to lose 15 bf16 steps
        // of the result where the partials cancel.
        .and_then(|_| {
            let mask = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
            // SAFETY: pref is live; the attribute is a u32 mask.
            unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                    &mask as *const u32 as *const c_void,
                    std::mem::size_of::<u32>(),
                )
            }
        })
        .and_then(|_| {
            let align = key.align as u32;
            [
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ]
            .into_iter()
            .try_for_each(|attr| {
                // SAFETY: pref is live; the attribute is a u32.
                unsafe {
                    lt::set_matmul_pref_attribute(
                        pref,
                        attr,
                        &align as *const u32 as *const c_void,
                        std::mem::size_of::<u32>(),
                    )
                }
            })
        })
        // SAFETY: every descriptor is live.
        .and_then(|_| unsafe {
            lt::get_matmul_algo_heuristic(self.handle, desc, plan.a, plan.b, plan.c, plan.c, pref)
        });
        // SAFETY: created above, used no more.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        plan.algo = r?.algo;
        Ok(plan)
    }

    /// `y = x · wᵀ` (+ bias, ReLU as `epilogue` says) (+ y when `accumulate`), with `x`
    /// `[m, k]`, `w` `[n, k]`, `y` `[m, n]`, all row-major bf16, accumulation in f32. Calls with
    /// one row of x that the GEMV kernel takes ([`Gemv::qualifies`]) run there unless
    /// `TANDEM_GEMV=0`; the rest through cuBLASLt.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_bf16(
        &self,
        m: usize,
        n: usize,
        k: usize,
        x: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        epilogue: Epilogue<'_>,
        accumulate: bool,
        y: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        if self.use_gemv
            && (1..=GEMV_AUTO_MAX_M).contains(&m)
            && (n >= GEMV_AUTO_MIN_N_PER_K * k || (m == 1 && !gemv_wide_only()))
        {
            let s = &self.stream;
            let fits = {
                let (px, _gx) = x.device_ptr(s);
                let (pw, _gw) = w.device_ptr(s);
                Gemv::qualifies(m, k, px, pw)
            };
            if fits {
                return self
                    .gemv
                    .linear_bf16(s, m, n, k, x, w, epilogue, accumulate, y);
            }
        }
        self.linear_bf16_lt(m, n, k, x, w, epilogue, accumulate, y)
    }

    /// LLaMA's gate/up projection and activation: `act[m, f] = silu(x · gateᵀ) · (x · upᵀ)`
    /// with `w_gate_up` the fused `[2f, k]` weight (gate rows first), what
    /// [`Blas::linear_bf16`] into `[m, 2f]` followed by
    /// [`silu_mul_bf16`](crate::elementwise::silu_mul_bf16) with [`GateUp::fused`] computes.
    ///
    /// One-row calls the GEMV kernel takes (see [`Gemv::qualifies`]) run in one pass that never
    /// writes the `[m, 2f]` product; the others run the two steps with `scratch` (exactly
    /// `m · 2f` elements, caller-owned so that the hot path allocates nothing) holding the
    /// product. `scratch` is checked either way, so a call's validity does not depend on the
    /// path, and its contents afterwards are unspecified.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_silu_mul_bf16(
        &self,
        m: usize,
        f: usize,
        k: usize,
        x: &impl DevicePtr<bf16>,
        w_gate_up: &impl DevicePtr<bf16>,
        scratch: &mut (impl DevicePtr<bf16> + DevicePtrMut<bf16>),
        act: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let what = "linear_silu_mul_bf16";
        check_len(what, m * k, x.len())?;
        check_len(what, 2 * f * k, w_gate_up.len())?;
        check_len("linear_silu_mul_bf16: scratch", m * 2 * f, scratch.len())?;
        check_len(what, m * f, act.len())?;
        if m == 0 || f == 0 {
            return Ok(());
        }
        if self.use_gemv && m <= GEMV_AUTO_MAX_M && k.is_multiple_of(8) {
            let s = &self.stream;
            let (px, _gx) = x.device_ptr(s);
            let (pw, _gw) = w_gate_up.device_ptr(s);
            if Gemv::qualifies(m, k, px, pw) {
                let (py, _gy) = act.device_ptr_mut(s);
                return self.gemv.launch(s, m, f, k, px, pw, 0, py, FLAG_SILU);
            }
        }
        self.linear_silu_mul_bf16_lt(m, f, k, x, w_gate_up, scratch, act)
    }

    /// [`Blas::linear_silu_mul_bf16`] always in two steps: cuBLASLt into `scratch`, then
    /// `silu_mul_bf16`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_silu_mul_bf16_lt(
        &self,
        m: usize,
        f: usize,
        k: usize,
        x: &impl DevicePtr<bf16>,
        w_gate_up: &impl DevicePtr<bf16>,
        scratch: &mut (impl DevicePtr<bf16> + DevicePtrMut<bf16>),
        act: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        check_len("linear_silu_mul_bf16: scratch", m * 2 * f, scratch.len())?;
        check_len("linear_silu_mul_bf16", m * f, act.len())?;
        self.linear_bf16_lt(m, 2 * f, k, x, w_gate_up, Epilogue::None, false, scratch)?;
        silu_mul_launch(
            &self.silu_mul,
            self.sms,
            &self.stream,
            m,
            f,
            scratch,
            GateUp::fused(f),
            act,
        )
    }

    /// [`Blas::linear_bf16`] always through cuBLASLt (what `TANDEM_GEMV=0` selects).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_bf16_lt(
        &self,
        m: usize,
        n: usize,
        k: usize,
        x: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        epilogue: Epilogue<'_>,
        accumulate: bool,
        y: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let what = "linear_bf16";
        check_len(what, m * k, x.len())?;
        check_len(what, n * k, w.len())?;
        check_len(what, m * n, y.len())?;
        let (code, bias) = match epilogue {
            Epilogue::None => (0u8, None),
            Epilogue::Bias(b) => (1, Some(b)),
            Epilogue::BiasRelu(b) => (2, Some(b)),
        };
        if let Some(b) = bias {
            check_len("linear_bf16: bias", n, b.len())?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return Err(crate::shape_err(
                "linear_bf16: k is 0 (an empty product; fill y instead)",
            ));
        }
        let s = &self.stream;
        let (px, _gx) = x.device_ptr(s);
        let (pw, _gw) = w.device_ptr(s);
        let (py, _gy) = y.device_ptr_mut(s);
        let align = [px, pw, py]
            .iter()
            .map(|&p| 1u64 << p.trailing_zeros().min(4))
            .min()
            .unwrap_or(16) as u8;
        let key = Key {
            m,
            n,
            k,
            epilogue: code,
            align,
        };
        let mut plans = self.plans.lock().unwrap();
        if !plans.contains_key(&key) {
            let p = self.plan(key)?;
            plans.insert(key, p);
        }
        let plan = &plans[&key];
        let bias_ptr = bias.map(|b| b.device_ptr(s));
        if let Some((p, _)) = &bias_ptr {
            set_attr(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                p,
            )?;
        }
        let (pws, _gws) = self.workspace.device_ptr(s);
        let (alpha, beta) = (1f32, if accumulate { 1f32 } else { 0f32 });
        // SAFETY: the layouts describe exactly the checked buffer sizes (w: K×N, x: K×M, y:
        // N×M column-major), the bias holds N elements, the workspace WORKSPACE_BYTES, and the
        // descriptors stay alive (cached) while the call is queued.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                pw as *const c_void,
                plan.a,
                px as *const c_void,
                plan.b,
                py as *const c_void,
                plan.c,
                py as *mut c_void,
                plan.c,
                &plan.algo,
                pws as *mut c_void,
                WORKSPACE_BYTES,
                s.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|source| Error::Matmul { m, n, k, source })
    }
}

/// Host-side epilogue for [`linear_bf16_ref`].
#[derive(Clone, Copy)]
pub enum EpilogueRef<'a> {
    None,
    Bias(&'a [bf16]),
    BiasRelu(&'a [bf16]),
}

/// Reference twin of [`Blas::linear_bf16`]: f64 sums, one rounding to bf16.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16_ref(
    m: usize,
    n: usize,
    k: usize,
    x: &[bf16],
    w: &[bf16],
    epilogue: EpilogueRef<'_>,
    accumulate: bool,
    y: &mut [bf16],
) -> Result<()> {
    check_len("linear_bf16_ref", m * k, x.len())?;
    check_len("linear_bf16_ref", n * k, w.len())?;
    check_len("linear_bf16_ref", m * n, y.len())?;
    let (bias, relu) = match epilogue {
        EpilogueRef::None => (None, false),
        EpilogueRef::Bias(b) => (Some(b), false),
        EpilogueRef::BiasRelu(b) => (Some(b), true),
    };
    if let Some(b) = bias {
        check_len("linear_bf16_ref: bias", n, b.len())?;
    }
    for i in 0..m {
        for j in 0..n {
            let mut acc: f64 = x[i * k..][..k]
                .iter()
                .zip(&w[j * k..][..k])
                .map(|(a, b)| a.to_f32() as f64 * b.to_f32() as f64)
                .sum();
            if accumulate {
                acc += y[i * n + j].to_f32() as f64;
            }
            if let Some(b) = bias {
                acc += b[j].to_f32() as f64;
            }
            if relu {
                acc = acc.max(0.0);
            }
            y[i * n + j] = bf16::from_f64(acc);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    /// f32 accumulation over K <= 1024 products of magnitude <= 1 (typical error ~K·2^-24,
    /// ~1e-4 at worst in practice) before one rounding to bf16 (at most 2^-7 relative).
    const GEMM_ATOL: f32 = 1e-3;
    const GEMM_RTOL: f32 = BF16_ULP;
    #[test]
    fn gpu_linear_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.stream().clone();
        let blas = Blas::new(&gpu, s.clone()).unwrap();
        for (m, n, k) in [
            (1usize, 256usize, 128usize),
            (7, 300, 520),
            (33, 1000, 1024),
            (128, 64, 64),
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
            for (i, accumulate) in [(0, false), (1, false), (2, false), (0, true), (1, true)] {
                let init = if accumulate {
                    y0.clone()
                } else {
                    poisoned(m * n)
                };
                let mut dy = s.clone_htod(&init).unwrap();
                let epi = [Epilogue::None, Epilogue::Bias(&bv), Epilogue::BiasRelu(&bv)][i];
                blas.linear_bf16(m, n, k, &dx, &dw, epi, accumulate, &mut dy)
                    .unwrap();
                let mut want = y0.clone();
                let epi = [
                    EpilogueRef::None,
                    EpilogueRef::Bias(&bias),
                    EpilogueRef::BiasRelu(&bias),
                ][i];
                linear_bf16_ref(m, n, k, &x, &w, epi, accumulate, &mut want).unwrap();
                let what = format!("linear m {m} n {n} k {k} epilogue {i} accumulate {accumulate}");
                let got = s.clone_dtoh(&dy).unwrap();
                if accumulate || i > 0 {
                    let rounded = lt_intermediates(m, n, k, &x, &w, epi);
                    assert_accumulated(&what, seed, &got, &want, &rounded, GEMM_ATOL);
                } else {
                    assert_close(&what, seed, &got, &want, GEMM_ATOL, GEMM_RTOL);
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = vec![bf16::ONE; 6];
        let mut y = vec![bf16::ZERO; 4];
        assert!(linear_bf16_ref(2, 2, 3, &x, &x, EpilogueRef::None, false, &mut y).is_ok());
        assert!(linear_bf16_ref(2, 2, 2, &x, &x, EpilogueRef::None, false, &mut y).is_err());
        assert!(
            linear_bf16_ref(2, 2, 3, &x, &x, EpilogueRef::Bias(&x[..1]), false, &mut y).is_err()
        );
    }
}
