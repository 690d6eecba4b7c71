//! Executors: the sublayers of DESIGN.md run on the CPU (`cpu`) or the GPU (`gpu`), over the
//! paged KV cache.

pub mod cpu;
pub mod gpu;
