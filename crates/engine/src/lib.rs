//! The engine: models, weights, placement, KV cache, executor and scheduler. It owns layouts,
//! placement and time; the kernel crates below it only compute.

pub mod caps;
pub mod config;
pub mod placement;
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
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Platform(#[from] platform::Error),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.display().to_string(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
