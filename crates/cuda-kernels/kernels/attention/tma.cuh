// Hopper (sm_90a) tensor-memory-accelerator loads, shared-memory transaction barriers and the
// warp-specialization primitives of the attention kernels. Only for code compiled under
// __CUDA_ARCH_FEAT_SM90_ALL; the descriptor type is declared everywhere (kernel parameters).
//
// * TmaDesc: the 128-byte CUtensorMap the host encodes with cuTensorMapEncodeTiled, passed as a
//   __grid_constant__ kernel parameter. load_2d copies one box (coordinates x = innermost
//   element, y = row) into shared memory and signals `bar` with the bytes written; rows past the
//   tensor's end arrive as zeros.
// * mbarrier: `full` barriers count one arrival (the producer's expect_tx) plus the bytes of the
//   copies; `empty` barriers count the consumer warps. wait(bar, parity) returns once the phase
//   of that parity has completed; a fresh barrier is in phase 0, so waiting for parity 1
//   returns at once (the producer's first pass over the empty ring).
// * named barriers (ids 1..15; 0 is __syncthreads) and setmaxnreg, which moves registers
//   between warpgroups (every warp of a warpgroup executes it).
#pragma once
#include "common.cuh"

struct alignas(64) TmaDesc {
    uint64_t opaque[16];
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace tma {
__device__ __forceinline__ void bar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
// Makes barrier initialization visible to the async proxy (TMA); a __syncthreads must follow.
__device__ __forceinline__ void fence_barrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void wait(uint32_t bar, uint32_t parity) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra W;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void prefetch_desc(const TmaDesc* d) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(d)) : "memory");
}
__device__ __forceinline__ void load_2d(uint32_t dst, const TmaDesc* d, int x, int y, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            dst),
        "l"(reinterpret_cast<uint64_t>(d)), "r"(x), "r"(y), "r"(bar)
        : "memory");
}
template <int THREADS>
__device__ __forceinline__ void named_sync(int id) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(THREADS) : "memory");
}
template <int THREADS>
__device__ __forceinline__ void named_arrive(int id) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(THREADS) : "memory");
}
template <int N>
__device__ __forceinline__ void regs_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void regs_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
}  // namespace tma
#endif
