//! Devices, contexts and the kernel module.
//!
//! `Gpu` is one device's context, its default stream and the loaded module of our kernels.
//! Functions are looked up by name once and cached, so a launch site costs a hash lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};

use crate::{Error, Result};

/// What `tandem info` prints about each GPU.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_mem: usize,
    pub free_mem: usize,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: probing dlopen of libcuda; nothing is called through it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The GPUs of this machine; an error says why there are none.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    if !driver_present() {
        return Err(Error::NoDriver("libcuda.so could not be loaded".into()));
    }
    let n = CudaContext::device_count()? as usize;
    (0..n)
        .map(|i| {
            let ctx = CudaContext::new(i)?;
            let (free_mem, total_mem) = ctx.mem_get_info()?;
            Ok(DeviceInfo {
                ordinal: i,
                name: ctx.name()?,
                total_mem,
                free_mem,
                compute_capability: ctx.compute_capability()?,
                multiprocessors: ctx.attribute(
                    cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                )?,
            })
        })
        .collect()
}

/// One GPU: context, default stream, our kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    sms: u32,
    cc: (i32, i32),
}

impl Gpu {
    /// Opens device `ordinal` and loads the embedded kernels.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        if crate::KERNELS_FATBIN.is_empty() {
            return Err(Error::NotBuilt);
        }
        if !driver_present() {
            return Err(Error::NoDriver("libcuda.so could not be loaded".into()));
        }
        let count = CudaContext::device_count()? as usize;
        if ordinal >= count {
            return Err(Error::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(
            crate::KERNELS_FATBIN.to_vec(),
        ))?;
        let stream = ctx.default_stream();
        let sms = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?;
        let cc = ctx.compute_capability()?;
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            module,
            functions: Mutex::new(HashMap::new()),
            sms: sms.max(1) as u32,
            cc,
        }))
    }

    pub fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Streaming multiprocessors of the device (grid sizing).
    pub fn sms(&self) -> u32 {
        self.sms
    }

    /// Compute capability (major, minor); (9, 0) is Hopper, whose kernels may use wgmma.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// A new non-default stream of this device (copy streams, sub-batch streams).
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        Ok(self.ctx.new_stream()?)
    }

    /// An event that records time (for benches and profiling); plain ordering events can use
    /// `ctx().new_event(None)`.
    pub fn timing_event(&self) -> Result<cudarc::driver::CudaEvent> {
        Ok(self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?)
    }

    /// The stream launches use unless given another.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A kernel of the module by its symbol (`{op}_{dtype}`), cached after the first lookup.
    pub fn function(&self, name: &'static str) -> Result<CudaFunction> {
        let mut f = self.functions.lock().unwrap();
        if let Some(func) = f.get(name) {
            return Ok(func.clone());
        }
        let func = self.module.load_function(name)?;
        f.insert(name, func.clone());
        Ok(func)
    }

    /// Like [`Gpu::function`], with the kernel's dynamic shared memory limit raised to `bytes`
    /// (needed above 48 KiB); the attribute is set on every call, which is cheap.
    pub fn function_with_smem(&self, name: &'static str, bytes: u32) -> Result<CudaFunction> {
        let f = self.function(name)?;
        if bytes > 48 * 1024 {
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )?;
        }
        Ok(f)
    }
}

/// For GPU tests: the first GPU, or a printed reason and `None`. With `TANDEM_REQUIRE=gpu`
/// (the GPU host's test run) a missing GPU fails the test instead.
pub fn gpu_or_skip() -> Option<Arc<Gpu>> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            platform::testing::skip_unless(false, "gpu", &e.to_string());
            None
        }
    }
}
