//! GPU kernels: every `.cu` under `kernels/` is compiled by nvcc (in build.rs) into one fatbin
//! embedded here, loaded once per device, and launched through a typed, checked wrapper.
//!
//! The driver is loaded at run time (cudarc's dynamic loading), so binaries built on a machine
//! without CUDA run on the GPU host and report "no GPU" cleanly elsewhere.

pub mod device;
pub mod elementwise;

pub use device::{devices, gpu_or_skip, DeviceInfo, Gpu};

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
    #[error("{what}: expected {expected} elements, got {got}")]
    Len {
        what: &'static str,
        expected: usize,
        got: usize,
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
