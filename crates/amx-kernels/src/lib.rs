//! CPU matrix kernels: AMX tile GEMM and attention, with AVX-512, AVX2 and scalar twins.
//!
//! Kernel entry points take slices and shapes, check them, and compute; they know nothing of
//! models. Dispatch follows `platform::cpu_tier()`, so `TANDEM_CPU_TIER` forces a lower path.

pub mod tile;

/// Shape and slice errors: every kernel checks its inputs and says which one is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{what}: expected {expected} elements, got {got}")]
    Len { what: &'static str, expected: usize, got: usize },
    #[error("{0}")]
    Shape(String),
    #[error("this kernel needs {needed}, which this machine cannot run (best tier: {have})")]
    Unsupported { needed: &'static str, have: platform::CpuTier },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Len { what, expected, got })
    }
}
