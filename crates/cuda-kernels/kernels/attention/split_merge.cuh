// The merge of split-KV decode partials, shared by paged_decode_reduce_bf16 (its own launch)
// and the tensor-core kernel's fused merge (the last block of a group).
#pragma once
#include "common.cuh"
#include <math_constants.h>

namespace split_merge {
// Element d of one output row from its num_splits partials: ml[2s] = m_s (log2 domain),
// ml[2s + 1] = l_s, acc[s * D + d] = the unnormalized sum; empty splits (l_s = 0) wrote no acc.
// out = sum_s acc_s 2^(m_s - M) / sum_s l_s 2^(m_s - M), M the largest m_s of non-empty splits.
// Loads go through L2 (ld.global.cg): the partials may have been written by other blocks of
// the same launch.
__device__ __forceinline__ float merge(const float* ml, const float* acc, int num_splits, int D, int d) {
    float M = -CUDART_INF_F;
    for (int s = 0; s < num_splits; ++s)
        if (__ldcg(ml + 2 * s + 1) > 0.f) M = fmaxf(M, __ldcg(ml + 2 * s));
    float a = 0.f, L = 0.f;
    for (int s = 0; s < num_splits; ++s) {
        const float l = __ldcg(ml + 2 * s + 1);
        if (l > 0.f) {
            const float w = exp2f(__ldcg(ml + 2 * s) - M);
            a += __ldcg(acc + (int64_t)s * D + d) * w;
            L += l * w;
        }
    }
    return a / L;
}
}  // namespace split_merge
