// Shared device helpers for every kernel of the crate.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

namespace tandem {
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ __nv_bfloat16 to_bf16(float x) { return __float2bfloat16(x); }
}  // namespace tandem
