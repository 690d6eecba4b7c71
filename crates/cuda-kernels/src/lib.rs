//! GPU kernels: every `.cu` under `kernels/` is compiled by nvcc (in build.rs) into one fatbin
//! embedded here, loaded once per device, and launched through a typed, checked wrapper.
//!
//! The driver is loaded at run time (cudarc's dynamic loading), so binaries built on a machine
//! without CUDA run on the GPU host and report "no GPU" cleanly elsewhere.
//!
//! Each family pairs `kernels/<family>/<op>.cu` with `src/<family>.rs` (or
//! `src/<family>/<op>.rs`). Every launcher takes the stream explicitly, checks lengths, strides
//! and ids on the host before anything is queued, and has a CPU reference twin `<op>_ref` of
//! the same shape on host slices, used by the tests. Device buffers are taken as anything that
//! is a cudarc device slice (`CudaSlice`, `CudaView`, `CudaViewMut`). Index lists (token ids,
//! positions, slots, block tables) travel as [`DeviceIds`], whose host copy lets launchers
//! check every id against its bound without reading the device.
//!
//! This crate knows nothing of models: the engine owns layouts beyond the KV cache's (which
//! DESIGN.md fixes), placement and scheduling.

pub mod attention;
pub mod device;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod gemv;
pub mod ids;
pub mod kv;
pub mod launch;
pub mod norm;
pub mod position;
pub mod sampling;
pub mod transfer;
pub mod unpack;

#[cfg(test)]
pub(crate) mod testutil;

pub use device::{devices, gpu_or_skip, DeviceInfo, Gpu};
pub use ids::DeviceIds;

/// The nvcc-built fatbin (empty when the crate was built without the `cuda` feature).
pub static KERNELS_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tandem_kernels.fatbin"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tandem was built without GPU kernels (the `cuda` feature of cuda-kernels is off)")]
    NotBuilt,
    #[error("no CUDA driver: {0}")]
    NoDriver(String),
    #[error("no GPU with ordinal {ordinal}: this machine has {count}")]
    NoDevice { ordinal: usize, count: usize },
    #[error("CUDA: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLAS: {0}")]
    Cublas(#[from] cudarc::cublas::result::CublasError),
    #[error("cuBLASLt: {0}")]
    CublasLt(#[from] cudarc::cublaslt::result::CublasError),
    #[error("cuBLASLt matmul of {m}x{n}x{k} (M x N x K): {source}")]
    Matmul {
        m: usize,
        n: usize,
        k: usize,
        source: cudarc::cublaslt::result::CublasError,
    },
    #[error("{what}: expected {expected} elements, got {got}")]
    Len {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what}: needs at least {need} elements, got {got}")]
    TooShort {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("{what}: id {id} out of range 0..{bound}")]
    IdRange {
        what: &'static str,
        id: i64,
        bound: i64,
    },
    #[error("{0}")]
    Shape(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Len {
            what,
            expected,
            got,
        })
    }
}

pub(crate) fn check_min_len(what: &'static str, need: usize, got: usize) -> Result<()> {
    if got >= need {
        Ok(())
    } else {
        Err(Error::TooShort { what, need, got })
    }
}

/// Elements a strided row set needs: `rows` rows of `width` elements, row r starting at
/// `r * stride`.
pub(crate) fn strided_need(rows: usize, width: usize, stride: usize) -> usize {
    if rows == 0 {
        0
    } else {
        (rows - 1) * stride + width
    }
}

pub(crate) fn shape_err(msg: impl Into<String>) -> Error {
    Error::Shape(msg.into())
}

/// Threads per block of the grid-stride elementwise kernels.
pub(crate) const ELEMENTWISE_BLOCK: u32 = 256;

/// A grid-stride launch over `n` work items: enough blocks to fill every SM several times
/// over; the loop inside the kernel covers the rest.
pub(crate) fn grid_stride(gpu: &Gpu, n: usize) -> cudarc::driver::LaunchConfig {
    grid_stride_sms(gpu.sms(), n)
}

/// [`grid_stride`] for a device of `sms` multiprocessors.
pub(crate) fn grid_stride_sms(sms: u32, n: usize) -> cudarc::driver::LaunchConfig {
    let blocks = (n.div_ceil(ELEMENTWISE_BLOCK as usize) as u32).clamp(1, sms * 16);
    cudarc::driver::LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}
