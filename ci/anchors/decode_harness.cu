// Paged decode harness (built by decode_harness.sh): the tensor-core decode kernel of this tree
// as <head dim, warps per block, ring slots> variants ("w4n3": 4 warps, 3 slots), beside the
// kernel of commit b4a8183 ("orig", renamed into orig_mma.cu). First every variant against a
// CPU reference (f64, random data, a NaN/inf poisoned slot past one context end, poisoned
// outputs; 1, 2, 3, 7 and more-than-pages splits, fused merge and reduce launch, two launches
// each), then per shape the median time of each variant x split count ("red": reduce launch,
// "fused": merge in the last block, "fixed": 32-page splits as the fixed plan) and of a
// streaming-only kernel ("strm": the same pages through the same ring, no math), each against
// a device-to-device copy of the same bytes in the same process (read + write counted).
// RESIDENT rows: the split count the default plan (paged_decode.rs) takes on this GPU.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
#include <string>
#include <algorithm>
#include <functional>
#include <cuda_runtime.h>
#include "attention/paged_decode.cu"
#include "attention/paged_decode_mma.cu"
#undef PAGED_DECODE_MMA
#include "orig_mma.cu"
template <int D, int WARPS, int NST>
__global__ void __launch_bounds__(WARPS * 32) hkernel(const __nv_bfloat16* q, int64_t q_stride, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,
    const int* block_tables, int bt_stride, const int* context_lens, int Hq, int Hkv, int head_groups, float scale_log2, int split_pages, int num_splits,
    float* part_acc, float* part_ml, __nv_bfloat16* out, int64_t out_stride, int* counters) {
    paged_decode_mma::run<D, WARPS, NST>(q, q_stride, k_cache, v_cache, block_tables, bt_stride, context_lens, Hq, Hkv, head_groups,
                       scale_log2, split_pages, num_splits, part_acc, part_ml, out, out_stride, counters);
}
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %d: %s\n", #x, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)
typedef __nv_bfloat16 bf;
typedef void (*KF)(const bf*, int64_t, const bf*, const bf*, const int*, int, const int*, int, int, int, float, int, int,
                   float*, float*, bf*, int64_t, int*);
static float tof(uint16_t x) { uint32_t u = (uint32_t)x << 16; float f; memcpy(&f, &u, 4); return f; }
static uint16_t tobf(float f) { uint32_t u; memcpy(&u, &f, 4); u += 0x7fff + ((u >> 16) & 1); return u >> 16; }
struct Var { std::string name; KF f; int warps, smem, d; };
static std::vector<Var> vars;
template <int D, int W, int N> void addv() {
    Var v{"w" + std::to_string(W) + "n" + std::to_string(N), hkernel<D, W, N>, W,
          paged_decode_mma::smem_bytes(D, W, N), D};
    CK(cudaFuncSetAttribute(v.f, cudaFuncAttributeMaxDynamicSharedMemorySize, v.smem));
    cudaFuncAttributes a; CK(cudaFuncGetAttributes(&a, v.f));
    int occ = 0; CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, v.f, W * 32, v.smem));
    printf("variant d%d %s: regs %d local %zu smem %d blocks/SM %d (warps/SM %d)\n", D, v.name.c_str(), a.numRegs,
           a.localSizeBytes, v.smem, occ, occ * W);
    vars.push_back(v);
}
static void addorig(int D) {
    KF f = D == 64 ? (KF)orig_mma_bf16_d64 : (KF)orig_mma_bf16_d128;
    int ring = 4 * 2 * 2 * 16 * (D + 8) * 2, merge = (4 * 16 * D + 2 * 4 * 16) * 4;
    Var v{"orig", f, 4, std::max(ring, merge), D};
    CK(cudaFuncSetAttribute(v.f, cudaFuncAttributeMaxDynamicSharedMemorySize, v.smem));
    vars.push_back(v);
}
struct Bufs {
    int B, Hq, Hkv, D, width;
    bf *q, *k, *v, *out; int *tab, *lens; float *acc, *ml; int* cnt;
};
// split_pages > 0: fixed pages per split (num_splits from the longest context).

// Streaming only: the same pages through the same ring, no math (the access pattern's ceiling).
template <int D, int W, int N>
__global__ void __launch_bounds__(W * 32) stream_only(const bf* k, const bf* v, const int* tab, int width, int Hkv, int pages, float* sink) {
    extern __shared__ __align__(128) unsigned char sm[];
    constexpr int PAGE = 16 * D * 2;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, b = blockIdx.z, kvh = blockIdx.y;
    const uint32_t ring = (uint32_t)__cvta_generic_to_shared(sm) + warp * N * 2 * PAGE;
    const int sp = (pages + gridDim.x - 1) / gridDim.x, pb = blockIdx.x * sp, pe = min(pb + sp, pages);
    const int first = pb + warp, mine = first < pe ? (pe - first + W - 1) / W : 0;
    auto copy = [&](int slot, int i) {
        const int64_t off = ((int64_t)tab[b * width + first + i * W] * Hkv + kvh) * 16 * D;
        paged_decode_mma::copy_page<D>(ring + slot * 2 * PAGE, k + off, 16, lane);
        paged_decode_mma::copy_page<D>(ring + slot * 2 * PAGE + PAGE, v + off, 16, lane);
    };
    for (int st = 0; st < N - 1; ++st) { if (st < mine) copy(st, st); tc::cp_async_commit(); }
    float acc = 0.f;
    for (int i = 0; i < mine; ++i) {
        __syncwarp();
        if (i + N - 1 < mine) copy((i + N - 1) % N, i + N - 1);
        tc::cp_async_commit(); tc::cp_async_wait<N - 1>(); __syncwarp();
        acc += reinterpret_cast<const float*>(sm)[(warp * N * 2 + (i % N) * 2) * PAGE / 4 + lane];
    }
    if (acc == 12345.f) sink[0] = acc;
}
static void launch(const Var& v, Bufs& b, int splits, int split_pages, bool fused, float sl2, int maxpages) {
    int G = b.Hq / b.Hkv, groups = (G + 15) / 16;
    int ns = split_pages > 0 ? (maxpages + split_pages - 1) / split_pages : splits;
    dim3 grid(ns, b.Hkv * groups, b.B);
    v.f<<<grid, v.warps * 32, v.smem>>>(b.q, (int64_t)b.Hq * b.D, b.k, b.v, b.tab, b.width, b.lens, b.Hq, b.Hkv, groups, sl2,
                                        split_pages, ns, b.acc, b.ml, b.out, (int64_t)b.Hq * b.D, fused && ns > 1 ? b.cnt : nullptr);
    if (ns > 1 && !fused)
        paged_decode_reduce_bf16<<<dim3(b.Hq, b.B), b.D>>>(b.Hq, b.D, ns, b.acc, b.ml, b.out, (int64_t)b.Hq * b.D);
}
static Bufs alloc(int B, int Hq, int Hkv, int D, int width, int nblocks, int maxsplits) {
    Bufs b{B, Hq, Hkv, D, width};
    size_t cache = (size_t)nblocks * Hkv * 16 * D;
    CK(cudaMalloc(&b.q, (size_t)B * Hq * D * 2)); CK(cudaMalloc(&b.out, (size_t)B * Hq * D * 2));
    CK(cudaMalloc(&b.k, cache * 2)); CK(cudaMalloc(&b.v, cache * 2));
    CK(cudaMalloc(&b.tab, (size_t)B * width * 4)); CK(cudaMalloc(&b.lens, B * 4));
    CK(cudaMalloc(&b.acc, (size_t)B * Hq * maxsplits * D * 4)); CK(cudaMalloc(&b.ml, (size_t)B * Hq * maxsplits * 8));
    CK(cudaMalloc(&b.cnt, (size_t)B * Hkv * 4 * 4)); CK(cudaMemset(b.cnt, 0, (size_t)B * Hkv * 4 * 4));
    return b;
}
static void freeb(Bufs& b) { cudaFree(b.q); cudaFree(b.out); cudaFree(b.k); cudaFree(b.v); cudaFree(b.tab); cudaFree(b.lens); cudaFree(b.acc); cudaFree(b.ml); cudaFree(b.cnt); }
static uint64_t rs = 88172645463325252ull;
static float rnd() { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (rs >> 11) * (1.0 / 9007199254740992.0) * 2 - 1; }

static bool check_case(std::vector<int> lens, int Hq, int Hkv, int D) {
    int B = lens.size(), maxp = 0, tot = 0;
    for (int l : lens) { maxp = std::max(maxp, (l + 15) / 16); tot += (l + 15) / 16; }
    int width = maxp + 1, nblocks = tot + 3, G = Hq / Hkv;
    std::vector<int> ids(nblocks); for (int i = 0; i < nblocks; ++i) ids[i] = i;
    for (int i = nblocks - 1; i > 0; --i) std::swap(ids[i], ids[(int)((rnd() + 1) / 2 * i) % (i + 1)]);
    std::vector<int> tab(B * width, -7); int nx = 0;
    for (int s = 0; s < B; ++s) for (int p = 0; p < (lens[s] + 15) / 16; ++p) tab[s * width + p] = ids[nx++];
    size_t cache = (size_t)nblocks * Hkv * 16 * D;
    std::vector<uint16_t> kc(cache), vc(cache), q((size_t)B * Hq * D);
    for (auto& x : kc) x = tobf(rnd()); for (auto& x : vc) x = tobf(rnd()); for (auto& x : q) x = tobf(rnd());
    if (lens[0] % 16) { int slot = tab[lens[0] / 16] * 16 + lens[0] % 16; size_t i = ((size_t)(slot / 16) * Hkv * 16 + slot % 16) * D; kc[i] = 0x7fc0; vc[i] = 0x7f80; }
    float scale = 4.f / sqrtf(D);
    std::vector<float> want((size_t)B * Hq * D);
    for (int s = 0; s < B; ++s) for (int h = 0; h < Hq; ++h) {
        int kvh = h / G, L = lens[s]; std::vector<double> sc(L); double m = -1e300;
        auto idx = [&](int t, int d) { int blk = tab[s * width + t / 16]; return (((size_t)blk * Hkv + kvh) * 16 + t % 16) * D + d; };
        for (int t = 0; t < L; ++t) { double a = 0; for (int d = 0; d < D; ++d) a += (double)tof(q[((size_t)s * Hq + h) * D + d]) * tof(kc[idx(t, d)]); sc[t] = a * scale; m = std::max(m, sc[t]); }
        double l = 0; for (auto& x : sc) { x = exp(x - m); l += x; }
        for (int d = 0; d < D; ++d) { double a = 0; for (int t = 0; t < L; ++t) a += sc[t] * tof(vc[idx(t, d)]); want[((size_t)s * Hq + h) * D + d] = a / l; }
    }
    Bufs b = alloc(B, Hq, Hkv, D, width, nblocks, maxp + 8);
    CK(cudaMemcpy(b.q, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(b.k, kc.data(), cache * 2, cudaMemcpyHostToDevice)); CK(cudaMemcpy(b.v, vc.data(), cache * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(b.tab, tab.data(), tab.size() * 4, cudaMemcpyHostToDevice)); CK(cudaMemcpy(b.lens, lens.data(), B * 4, cudaMemcpyHostToDevice));
    bool ok = true;
    std::vector<uint16_t> got(want.size());
    for (auto& v : vars) {
        if (v.d != D) continue;
        for (int splits : {1, 2, 3, 7, maxp + 5}) for (int fused = 0; fused < 2; ++fused) for (int rep = 0; rep < 2; ++rep) {
            if (splits == 1 && fused) continue;
            CK(cudaMemset(b.out, 0xff, got.size() * 2));
            launch(v, b, splits, 0, fused, scale * 1.4426950408889634f, maxp);
            CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(got.data(), b.out, got.size() * 2, cudaMemcpyDeviceToHost));
            float worst = 0; for (size_t i = 0; i < got.size(); ++i) { float e = fabsf(tof(got[i]) - want[i]); if (!(e <= worst)) worst = e; }
            if (!(worst <= 1.f / 128)) { ok = false; printf("FAIL d%d %s hq%d kv%d splits %d fused %d rep %d: max err %g\n", D, v.name.c_str(), Hq, Hkv, splits, fused, rep, worst); }
        }
    }
    freeb(b);
    return ok;
}

static float time_it(std::function<void()> fn, int reps, int batches = 7) {
    cudaEvent_t a, z; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&z));
    for (int i = 0; i < 3; ++i) fn();
    std::vector<float> t;
    for (int bt = 0; bt < batches; ++bt) {
        CK(cudaEventRecord(a)); for (int i = 0; i < reps; ++i) fn(); CK(cudaEventRecord(z)); CK(cudaEventSynchronize(z));
        float ms; CK(cudaEventElapsedTime(&ms, a, z)); t.push_back(ms * 1000 / reps);
    }
    std::sort(t.begin(), t.end()); CK(cudaGetLastError());
    return t[t.size() / 2];
}

int main(int argc, char** argv) {
    cudaDeviceProp p; CK(cudaGetDeviceProperties(&p, 0));
    printf("device %s, %d SMs, smem/SM %zu optin/block %zu\n", p.name, p.multiProcessorCount, p.sharedMemPerMultiprocessor, p.sharedMemPerBlockOptin);
    addorig(128); addorig(64);
    addv<128, 4, 2>(); addv<128, 4, 3>(); addv<64, 4, 4>(); addv<64, 4, 5>();
    bool ok = true;
    ok &= check_case({17, 5, 33}, 12, 4, 64);
    ok &= check_case({100, 1, 16, 250}, 32, 8, 128);
    ok &= check_case({45, 500}, 64, 2, 128);
    ok &= check_case({129, 31}, 32, 2, 64);
    ok &= check_case({3001, 777, 15, 4099}, 32, 8, 128);
    ok &= check_case({2001, 1, 4000}, 64, 8, 64);
    printf("correctness: %s\n", ok ? "all passed" : "FAILED");
    struct Shape { int B, ctx, Hq, Hkv, D; };
    std::vector<Shape> shapes = {{16, 4096, 32, 8, 128}, {16, 4096, 64, 8, 128}, {16, 4096, 32, 8, 64}, {64, 4096, 32, 8, 128}, {16, 16384, 32, 8, 128}, {4, 8192, 32, 8, 128}, {1, 32768, 32, 8, 128}, {2, 8192, 64, 8, 64}};
    printf("\n%-22s %-6s %6s %5s %8s %8s %6s\n", "shape", "var", "splits", "fused", "us", "GB/s", "ofcopy");
    for (auto& sh : shapes) {
        int pages = sh.ctx / 16, nblocks = sh.B * pages;
        Bufs b = alloc(sh.B, sh.Hq, sh.Hkv, sh.D, pages, nblocks, 64);
        size_t cache = (size_t)nblocks * sh.Hkv * 16 * sh.D;
        std::vector<uint16_t> h(std::max(cache, (size_t)sh.B * sh.Hq * sh.D)); for (auto& x : h) x = tobf(rnd());
        CK(cudaMemcpy(b.k, h.data(), cache * 2, cudaMemcpyHostToDevice)); CK(cudaMemcpy(b.v, h.data(), cache * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(b.q, h.data(), (size_t)sh.B * sh.Hq * sh.D * 2, cudaMemcpyHostToDevice));
        std::vector<int> tab(nblocks), lens(sh.B, sh.ctx);
        for (int i = 0; i < nblocks; ++i) tab[i] = (i % pages) * sh.B + i / pages;
        CK(cudaMemcpy(b.tab, tab.data(), nblocks * 4, cudaMemcpyHostToDevice)); CK(cudaMemcpy(b.lens, lens.data(), sh.B * 4, cudaMemcpyHostToDevice));
        double bytes = 2.0 * cache * 2;
        bf* dst; CK(cudaMalloc(&dst, cache * 2 * 2));
        auto copy = [&] { CK(cudaMemcpyAsync(dst, b.k, cache * 2 * 2 > 0 ? cache * 2 : 0, cudaMemcpyDeviceToDevice)); CK(cudaMemcpyAsync(dst + cache, b.v, cache * 2, cudaMemcpyDeviceToDevice)); };
        int reps = std::max(5, (int)(2e-3 / (bytes / 4e12)));
        float tc0 = time_it(copy, reps);
        double copybw = 2 * bytes / tc0 / 1e3;
        char sn[64]; snprintf(sn, 64, "%dx%d %d/%dx%d", sh.B, sh.ctx, sh.Hq, sh.Hkv, sh.D);
        printf("%-22s %-6s %6s %5s %8.1f %8.0f %6s  (copy, read+write)\n", sn, "copy", "-", "-", tc0, copybw, "1.00");
        float sl2 = 0.088f * 1.4426950408889634f;
        struct R { std::string v; int s; int f; float us; };
        std::vector<R> res;
        auto run1 = [&](const Var& v, int s, int sp, bool f) {
            float us = time_it([&] { launch(v, b, s, sp, f, sl2, pages); }, reps);
            double gbs = bytes / us / 1e3;
            int ns = sp > 0 ? (pages + sp - 1) / sp : s;
            printf("%-22s %-6s %6d %5s %8.1f %8.0f %6.3f\n", sn, v.name.c_str(), ns, sp > 0 ? "fixed" : (f ? "fused" : "red"), us, gbs, gbs / copybw);
            res.push_back({v.name, ns, sp > 0 ? 2 : f, us});
        };
        for (auto& v : vars) {
            if (v.d != sh.D) continue;
            if (v.name == "orig") { run1(v, 0, 32, false); run1(v, 3, 0, true); run1(v, 3, 0, false); continue; }
            for (int s : {1, 2, 3, 4, 6, 8, 12, 16}) for (int f = 0; f < 2; ++f) { if (s == 1 && f) continue; run1(v, s, 0, f); }
        }
        {
            float* sink; CK(cudaMalloc(&sink, 4));
            auto sd = [&](auto f, int W, int N, const char* nm) {
                int smem = W * N * 2 * 16 * sh.D * 2; CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
                for (int s : {1, 3}) {
                    float us = time_it([&] { f<<<dim3(s, sh.Hkv, sh.B), W * 32, smem>>>(b.k, b.v, b.tab, pages, sh.Hkv, pages, sink); }, reps);
                    double gbs = bytes / us / 1e3;
                    printf("%-22s %-6s %6d %5s %8.1f %8.0f %6.3f\n", sn, nm, s, "strm", us, gbs, gbs / copybw);
                }
            };
            if (sh.D == 128) { sd(stream_only<128, 4, 2>, 4, 2, "S4n2"); sd(stream_only<128, 12, 2>, 12, 2, "S12n2"); sd(stream_only<128, 8, 3>, 8, 3, "S8n3"); }
            else if (sh.D == 128) { sd(stream_only<64, 4, 2>, 4, 2, "S4n2"); sd(stream_only<64, 16, 2>, 16, 2, "S16n2"); }
            cudaFree(sink);
        }
        { int base = sh.B * sh.Hkv * ((sh.Hq / sh.Hkv + 15) / 16); int want = (int)ceil(0.9 * p.multiProcessorCount / base); int cap = (pages + 3) / 4; int rs = std::max(1, std::min(want, cap));
          printf("RESIDENT %s: plan %d splits\n", sn, rs); for (auto& r : res) if (r.v == (sh.D == 128 ? "w4n3" : "w4n4") && r.s == rs && r.f == 0) printf("RESIDENT %s: %.1f us (%.3f of copy)\n", sn, r.us, (bytes / r.us / 1e3) / copybw); }
        float tc1 = time_it(copy, reps);
        std::sort(res.begin(), res.end(), [](const R& x, const R& y) { return x.us < y.us; });
        printf("SUMMARY %s copy %.1f/%.1f us; best: ", sn, tc0, tc1);
        for (int i = 0; i < 4 && i < (int)res.size(); ++i) printf("%s s%d f%d %.1fus (%.3f)  ", res[i].v.c_str(), res[i].s, res[i].f, res[i].us, (bytes / res[i].us / 1e3) / copybw);
        for (auto& r : res) if (r.v == "orig" && r.f == 2) printf("| orig fixed %.1fus (%.3f)", r.us, (bytes / r.us / 1e3) / copybw);
        printf("\n");
        cudaFree(dst); freeb(b);
    }
    return ok ? 0 : 1;
}
