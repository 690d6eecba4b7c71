// Skinny bf16 GEMM for decode: y[m, j] = sum_k x[m, k] * W[j, k] for m < M (M = 1..8), with
//   x row-major [M, k], W row-major [n, k] (HF layout), y row-major [M, n]; f32 accumulation,
//   one rounding to bf16 (or two, for the fused SiLU, as the unfused path rounds).
//
// Entry points gemv_bf16_m{M}(n, k, x, w, bias, y, flags, ksplit), M = 1..8.
//   flags: GEMV_BIAS  y = acc + bias[j]          (bias has n elements)
//          GEMV_RELU  y = max(y, 0)              (after the bias; OPT's fc1)
//          GEMV_ACC   y = acc + y_old (+ bias)   (beta = 1: residual adds)
//          GEMV_SILU  W is a fused gate/up weight [2n, k] (gate rows 0..n, up rows n..2n) and
//                     y is act[M, n] = silu(bf16(x·gateᵀ)) · bf16(x·upᵀ), each product rounded to
//                     bf16 first and the activation computed as silu_mul_bf16 does (f32, one
//                     rounding), so results equal linear_bf16 into [M, 2n] + silu_mul_bf16 up to
//                     the order of the f32 sums. No other flag is allowed with it.
// Requirements (checked by the launcher, src/gemv.rs): k % 8 == 0, x and w 16-byte aligned
// (so every row of both is), 1 <= ksplit <= 4 a power of two; y and bias any alignment.
//
// Work split. A block is 4 warps (128 threads). A "group" is GEMV_ROWS = 4 output rows (with
// GEMV_SILU: 2 gate rows and their 2 up rows, giving 2 outputs). `ksplit` warps share a group,
// each taking every ksplit-th 256-element slice of k; a block holds 4 / ksplit groups. Lane l of
// a warp reads 16 bytes (8 bf16) of each of its 4 W rows per step, so a warp step reads 512
// contiguous bytes per row. Steps go in batches of UNROLL (4 for M = 1, else 2), software
// pipelined: the W loads of the next batch are issued before the FMAs of this one, so 4 * UNROLL
// to 8 * UNROLL independent 16-byte loads of W are in flight per thread (the plain unrolled loop
// let ptxas sink the loads to their uses: 2 to 4 in flight). W is streamed with
// ld.global.nc.L1::no_allocate (read once, kept out of L1); x is read with ld.global.nc through
// L1 (every group re-reads it; for
// M = 8, k = 14336 it is 229 KB and does not fit shared memory), one 16-byte load per row of x
// per step, converted once and used for the 4 W rows.
//
// Reduction. Each thread holds V = M * 4 partial sums (padded to a power of two <= 32). A
// transposing butterfly halves the set at each of log2(V) shuffle levels (lanes with the
// offset's bit set keep the upper half, the others the lower half, each adds what its partner
// sends), then plain butterfly levels finish: V - 1 + 5 - log2(V) shuffles instead of 5 * V.
// Afterwards lane l holds the sum of value l >> (5 - log2 V), value index v = m * 4 + r. With
// ksplit > 1 the warps of a group add their sums through 512 bytes of shared memory and the
// first warp of the group finishes. Rows past n (the tail of the last group) read row n - 1
// (in bounds, any row would do) and are not stored.
#include "common.cuh"

#define GEMV_BIAS 1
#define GEMV_RELU 2
#define GEMV_ACC 4
#define GEMV_SILU 8

namespace gemv {
constexpr int ROWS = 4;     // W rows per group (must match GEMV_ROWS in src/gemv.rs)
constexpr int WARPS = 4;    // warps per block (must match GEMV_WARPS in src/gemv.rs)
constexpr int THREADS = 32 * WARPS;

// 16 bytes of W: not through L1 (read once), non-coherent path (W is not written during the
// kernel). p is 16-byte aligned. Both loads are `asm volatile` to keep the order written (the
// next batch's W loads before this batch's x loads and FMAs) through the front end.
__device__ __forceinline__ uint4 ld_stream(const __nv_bfloat16* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// 16 bytes of x, read-only path, cached in L1. p is 16-byte aligned.
__device__ __forceinline__ uint4 ld_cached(const __nv_bfloat16* p) {
    uint4 r;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// One level of the transposing butterfly over v[0, 2h): lanes with bit `o` set keep the upper
// half, the others the lower half; each adds its partner's copy of the half it keeps.
template <int H>
__device__ __forceinline__ void transpose_level(float* v, int lane, int o) {
    const bool upper = (lane & o) != 0;
#pragma unroll
    for (int i = 0; i < H; ++i) {
        const float keep = upper ? v[i + H] : v[i];
        const float send = upper ? v[i] : v[i + H];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
    }
}

// Levels LEV..log2(V)-1 of the transposing butterfly (offsets 16 >> LEV, ...), written out by
// recursion so that every index into v is a constant (a runtime-bounded loop put v in local
// memory).
template <int V, int LEV>
__device__ __forceinline__ void transpose_reduce(float* v, int lane) {
    if constexpr ((V >> LEV) > 1) {
        transpose_level<(V >> (LEV + 1))>(v, lane, 16 >> LEV);
        transpose_reduce<V, LEV + 1>(v, lane);
    }
}

// Eight bf16 to f32: a bf16 is the top half of its f32, so each is one shift or one mask.
__device__ __forceinline__ void cvt8(const uint4& u, float* f) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

__host__ __device__ constexpr int pow2_at_least(int v) { return v <= 1 ? 1 : 2 * pow2_at_least((v + 1) / 2); }
__host__ __device__ constexpr int log2_exact(int v) { return v <= 1 ? 0 : 1 + log2_exact(v / 2); }

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

// W chunks c + u * stride (u < U) of each of the R rows.
template <int U, int R>
__device__ __forceinline__ void load_batch(uint4 (&wv)[U][R], const __nv_bfloat16* const (&wr)[R], int64_t c,
                                           int64_t stride) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
        for (int r = 0; r < R; ++r) wv[u][r] = ld_stream(wr[r] + (c + u * stride) * 8);
}

// acc[m][r] += x[m, 8c .. 8c + 8] · W_r[8c .. 8c + 8] for one chunk c of R rows already loaded.
template <int M, int R>
__device__ __forceinline__ void step(float (&acc)[M][R], const uint4 (&wv)[R], const __nv_bfloat16* x, int64_t k,
                                     int64_t c) {
    float wf[R][8];
#pragma unroll
    for (int r = 0; r < R; ++r) cvt8(wv[r], wf[r]);
#pragma unroll
    for (int m = 0; m < M; ++m) {
        float xf[8];
        cvt8(ld_cached(x + m * k + c * 8), xf);
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[m][r] = fmaf(xf[e], wf[r][e], acc[m][r]);
    }
}

template <int M>
__device__ __forceinline__ void gemv_body(int64_t n, int64_t k, const __nv_bfloat16* __restrict__ x,
                                          const __nv_bfloat16* __restrict__ w, const __nv_bfloat16* __restrict__ bias,
                                          __nv_bfloat16* __restrict__ y, int flags, int ksplit) {
    constexpr int R = ROWS;
    constexpr int UNROLL = M == 1 ? 4 : 2;
    constexpr int V = pow2_at_least(M * R);  // values reduced per thread, padded
    constexpr int L = log2_exact(V);
    static_assert(V <= 32 && (1 << L) == V, "gemv: V must be a power of two <= 32");
    __shared__ float part[WARPS][32];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int groups_per_block = WARPS / ksplit;
    const int gl = warp / ksplit, slice = warp % ksplit;
    const bool silu_mode = (flags & GEMV_SILU) != 0;
    // Outputs per group: R rows, or R / 2 gate/up pairs.
    const int outs = silu_mode ? R / 2 : R;
    const int64_t j0 = ((int64_t)blockIdx.x * groups_per_block + gl) * outs;

    const __nv_bfloat16* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        int64_t row;
        if (silu_mode) {
            const int64_t j = min(j0 + (r % (R / 2)), n - 1);
            row = r < R / 2 ? j : n + j;
        } else {
            row = min(j0 + r, n - 1);
        }
        wr[r] = w + row * k;
    }

    float acc[M][R];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.f;

    const int64_t chunks = k / 8;  // 16-byte chunks per row
    const int64_t stride = 32 * (int64_t)ksplit;
    int64_t c = (int64_t)slice * 32 + lane;
    // Software pipeline over batches of UNROLL steps: the W loads of the next batch are issued
    // before the FMAs of this one, so between UNROLL * R and 2 * UNROLL * R loads are in flight
    // whatever order the scheduler picks inside an iteration.
    if (c + (UNROLL - 1) * stride < chunks) {
        uint4 cur[UNROLL][R];
        load_batch<UNROLL, R>(cur, wr, c, stride);
        // Under PDL the first batch of W (which no kernel writes) is on its way while the kernel
        // before finishes; x and y only after it has.
        tandem::pdl_wait();
        tandem::pdl_trigger();
        while (true) {
            const int64_t cn = c + UNROLL * stride;
            const bool more = cn + (UNROLL - 1) * stride < chunks;
            uint4 nxt[UNROLL][R];
            if (more) load_batch<UNROLL, R>(nxt, wr, cn, stride);
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) step<M, R>(acc, cur[u], x, k, c + u * stride);
            c = cn;
            if (!more) break;
#pragma unroll
            for (int u = 0; u < UNROLL; ++u)
#pragma unroll
                for (int r = 0; r < R; ++r) cur[u][r] = nxt[u][r];
        }
    }
    tandem::pdl_wait();  // (returns at once if the branch above waited)
    tandem::pdl_trigger();
    for (; c < chunks; c += stride) {
        uint4 wv[1][R];
        load_batch<1, R>(wv, wr, c, stride);
        step<M, R>(acc, wv[0], x, k, c);
    }

    // Transposing butterfly: v[i] for i < V / 2^level.
    float v[V];
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = i < M * R ? acc[i / R][i % R] : 0.f;
    transpose_reduce<V, 0>(v, lane);
#pragma unroll
    for (int o = 16 >> L; o > 0; o >>= 1) v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
    float sum = v[0];
    const int idx = lane >> (5 - L);  // which value this lane holds

    if (ksplit > 1) {  // uniform over the block
        part[warp][lane] = sum;
        __syncthreads();
        if (slice != 0) return;  // no barrier follows
        sum = 0.f;
        for (int s = 0; s < ksplit; ++s) sum += part[warp + s][lane];
    }

    const bool owner = (lane & ((1 << (5 - L)) - 1)) == 0;
    const int m = idx / R, r = idx % R;
    if (silu_mode) {
        // The up sum of pair r (r < R/2) is value idx + R/2, held by lane (idx + R/2) << (5 - L).
        const int src = min((idx + R / 2) << (5 - L), 31);
        const float up = __shfl_sync(0xffffffffu, sum, src);
        const int64_t j = j0 + r;
        if (owner && m < M && r < R / 2 && j < n) {
            const float g = tandem::to_f32(tandem::to_bf16(sum));
            const float u = tandem::to_f32(tandem::to_bf16(up));
            y[m * n + j] = tandem::to_bf16(silu(g) * u);
        }
        return;
    }
    const int64_t j = j0 + r;
    if (owner && m < M && j < n) {
        float out = sum;
        if (flags & GEMV_ACC) out += tandem::to_f32(y[m * n + j]);
        if (flags & GEMV_BIAS) out += tandem::to_f32(bias[j]);
        if (flags & GEMV_RELU) out = fmaxf(out, 0.f);
        y[m * n + j] = tandem::to_bf16(out);
    }
}
}  // namespace gemv

#define GEMV_ENTRY(M)                                                                                              \
    extern "C" __global__ void __launch_bounds__(gemv::THREADS)                                                   \
        gemv_bf16_m##M(int64_t n, int64_t k, const __nv_bfloat16* __restrict__ x,                                 \
                       const __nv_bfloat16* __restrict__ w, const __nv_bfloat16* __restrict__ bias,               \
                       __nv_bfloat16* __restrict__ y, int flags, int ksplit) {                                     \
        gemv::gemv_body<M>(n, k, x, w, bias, y, flags, ksplit);                                                    \
    }
GEMV_ENTRY(1)
GEMV_ENTRY(2)
GEMV_ENTRY(3)
GEMV_ENTRY(4)
GEMV_ENTRY(5)
GEMV_ENTRY(6)
GEMV_ENTRY(7)
GEMV_ENTRY(8)
