// Per-core time of paged decode's block loop, robust to other load on the machine: the ISPC
// segment function alone (no pool, no planning), one thread, the best of many calls. Each call
// runs the 8 KV heads × ntok tokens (d = 128, blocks in a shuffled order) in segments of as many
// KV heads as the kernel's staging holds (32 query heads), as the Rust side plans them, so the
// default 256 tokens (1 MiB of K and V) stay in L2. Not built by cargo; compile the kernel
// with the same ISPC flags as build.rs and link it:
//
//   ispc kernels/paged_decode.ispc -O3 --pic --woff --addressing=64 -I kernels
//        --target=avx2-i32x8,avx512skx-x16 -o /tmp/pd.o -h /tmp/pd.h   (one line)
//   cc -O2 benches/segment_min.c /tmp/pd.o /tmp/pd_avx2.o /tmp/pd_avx512skx.o -lm
//        -o /tmp/segment_min
//   /tmp/segment_min [g=4] [ntok=256] [calls=3000] [prefetch blocks=1]
//
// Prints the best call's time, GiB/s of K and V, ns per block (16 tokens of one KV head), and a
// checksum of the first head group's bf16 output.

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void ispc_paged_decode_segment_bf16(const uint16_t *q, uint16_t *k, uint16_t *v,
                                    const int32_t *blocks, int32_t ntok, int64_t block_stride,
                                    int64_t head_off, int32_t d, int32_t g, int32_t nh,
                                    float scale, const uint16_t *new_k, const uint16_t *new_v,
                                    int32_t append_at, uint16_t *out, float *part_o,
                                    float *part_ml, int64_t part_stride, int32_t pf_ahead,
                                    int32_t pf_lines);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint32_t state = 12345;
static uint16_t rnd_bf16(void) { // uniform in [-1, 1), truncated to bf16
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    float f = (state % 2000) / 1000.0f - 1.0f;
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

int main(int argc, char **argv) {
    const int d = 128, kvh = 8;
    int g = argc > 1 ? atoi(argv[1]) : 4;
    int ntok = argc > 2 ? atoi(argv[2]) : 256;
    int calls = argc > 3 ? atoi(argv[3]) : 3000;
    int pf = argc > 4 ? atoi(argv[4]) : 1;
    if (g < 1 || g > 16 || ntok < 1 || ntok > 16 * 4096) {
        fprintf(stderr, "g in 1..16, ntok in 1..65536\n");
        return 1;
    }
    int nb = (ntok + 15) / 16;
    int64_t bs = (int64_t)kvh * 16 * d;
    uint16_t *k = aligned_alloc(4096, nb * bs * 2), *v = aligned_alloc(4096, nb * bs * 2);
    for (int64_t i = 0; i < nb * bs; i++) {
        k[i] = rnd_bf16();
        v[i] = rnd_bf16();
    }
    int nh = 32 / g < kvh ? 32 / g : kvh; // KV heads per call (g <= 16: at least 2)
    static uint16_t q[32 * 128], out[32 * 128];
    for (int i = 0; i < 32 * 128; i++) {
        q[i] = rnd_bf16();
    }
    int32_t *blocks = malloc(nb * sizeof(int32_t));
    for (int i = 0; i < nb; i++) {
        blocks[i] = (int32_t)(((int64_t)i * 7) % nb); // a permutation when 7 does not divide nb
    }
    double best = 1e9;
    for (int r = 0; r < calls; r++) {
        double t0 = now();
        for (int h = 0; h < kvh; h += nh) {
            int n = kvh - h < nh ? kvh - h : nh;
            ispc_paged_decode_segment_bf16(q, k, v, blocks, ntok, bs, (int64_t)h * 16 * d, d, g,
                                           n, 0.088f, q, q, -1, out, NULL, NULL, 0, pf, 64);
        }
        double t = now() - t0;
        if (t < best) {
            best = t;
        }
    }
    double bytes = 2.0 * ntok * kvh * d * 2;
    uint32_t cs = 0;
    for (int i = 0; i < g * d; i++) {
        cs = cs * 31 + out[i];
    }
    printf("g=%d ntok=%d: best %.2f us, %.2f GiB/s, %.1f ns/block, checksum %08x\n", g, ntok,
           best * 1e6, bytes / best / (1 << 30), best * 1e9 / ((double)nb * kvh), cs);
    return 0;
}
