//! The engine: models, weights, placement, KV cache, executor and scheduler. It owns layouts,
//! placement and time; the kernel crates below it only compute.

pub mod caps;
