//! Executors: the sublayers of DESIGN.md run on the CPU (`cpu`) or the GPU, over the paged KV
//! cache. `cpu` holds the CPU sublayers and a whole-CPU session (LIA policy 1).

pub mod cpu;
