//! The engine: models, weights, placement, KV cache, executor and scheduler. It owns layouts,
//! placement and time; the kernel crates below it only compute.

pub mod bench;
pub mod caps;
pub mod config;
pub mod exec;
pub mod kv;
pub mod placement;
pub mod plan;
pub mod profile;
pub mod reference;
pub mod weights;

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model config: {0}")]
    Config(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("placement: {0}")]
    Placement(String),
    #[error("input: {0}")]
    Input(String),
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Platform(#[from] platform::Error),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Serializes a value through its `Display` (memory tiers print as `numa:1`, `pinned`, ...).
pub(crate) fn ser_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
