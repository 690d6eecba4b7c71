//! Kernel launches with programmatic dependent launch (PDL) on Hopper and later.
//!
//! A kernel launched with PDL may be scheduled while the kernel before it in the stream is
//! still running, once every block of that kernel has executed `griddepcontrol.launch_dependents`
//! (`tandem::pdl_trigger()` in common.cuh) or exited. It must execute `griddepcontrol.wait`
//! (`tandem::pdl_wait()`) before it reads or writes anything the kernel before it reads or
//! writes; the wait returns when that kernel has completed and its memory is visible. What a
//! kernel does before the wait (the GEMV loads its first batch of weights, which nothing else
//! writes) overlaps the previous kernel's tail and the launch latency between the two, also
//! inside a captured CUDA graph. On an ordinary launch both instructions do nothing.
//!
//! Only the kernels whose entry waits before any dependent access launch through [`Launch`]:
//! RMSNorm, RoPE, KV append, paged decode and its reduce, the GEMV and argmax (the batch-1
//! decode path). `TANDEM_PDL=0` (read once per process) launches them ordinarily.

use std::ffi::c_void;

use cudarc::driver::{sys, CudaFunction, CudaStream, DeviceRepr, LaunchConfig};

use crate::{Gpu, Result};

/// Whether PDL launches are used on `gpu`: compute capability 9.0 or later, and not
/// `TANDEM_PDL=0`.
pub fn pdl_enabled(gpu: &Gpu) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| platform::env::switch("TANDEM_PDL", true));
    on && gpu.compute_capability().0 >= 9
}

/// A launch of `func` on `stream`: arguments by reference, in the kernel's order, as cudarc's
/// launch builder takes them (values only: device pointers as `u64`).
pub(crate) struct Launch<'a> {
    stream: &'a CudaStream,
    func: &'a CudaFunction,
    args: Vec<*mut c_void>,
    pdl: bool,
}

impl<'a> Launch<'a> {
    /// A launch on `gpu`'s stream `stream`, with PDL where [`pdl_enabled`] says.
    pub fn new(gpu: &Gpu, stream: &'a CudaStream, func: &'a CudaFunction) -> Self {
        Self::with_pdl(stream, func, pdl_enabled(gpu))
    }

    /// With `pdl` (a caller's cached [`pdl_enabled`]) the launch carries the PDL attribute.
    pub fn with_pdl(stream: &'a CudaStream, func: &'a CudaFunction, pdl: bool) -> Self {
        Launch {
            stream,
            func,
            args: Vec::with_capacity(20),
            pdl,
        }
    }

    pub fn arg<T: DeviceRepr>(&mut self, v: &'a T) -> &mut Self {
        self.args.push(v as *const T as *mut c_void);
        self
    }

    /// # Safety
    /// The arguments match the kernel's parameters in number, order and type, every pointer
    /// among them is valid for what the kernel does with it, and the kernel executes
    /// `tandem::pdl_wait()` before any access that depends on earlier work in the stream.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<()> {
        self.stream.context().bind_to_thread()?;
        // SAFETY: a zeroed launch attribute value is valid (a union of plain integers).
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.pdl),
        };
        // SAFETY: the caller's contract; `args` points at values that outlive this call, in the
        // kernel's parameter order; the stream and function belong to the bound context.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.func.cu_function(),
                self.args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()?;
        Ok(())
    }
}
