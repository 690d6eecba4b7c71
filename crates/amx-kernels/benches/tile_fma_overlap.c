// Do a core's AMX tile products and its 512-bit FMAs run side by side? Each pinned thread
// repeats a round of F independent 512-bit FMAs (8 accumulators; 2 a cycle on 2 ports: F/2
// cycles) interleaved with T tdpbf16ps on resident 16x64-byte tiles (16 cycles each at the
// tile unit's rate), and prints ns a round, the mean over threads.
// docs/BENCHMARKS.md (twenty-fourth session) has what it measured on the GPU host.
// Usage: tile_fma_overlap threads F T [seconds=0.4]   (F a multiple of 32)
// Not built by cargo (ci/build-device.sh builds it into bin/): cc -O2 -pthread tile_fma_overlap.c
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int nf, nt;
static double secs = 0.4;
static double ns[64];
static pthread_barrier_t bar;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

// 8 independent accumulators (zmm0-7), products of zeros (zmm8, 9): no denormals, no growth.
#define F8 "vfmadd231ps %%zmm8, %%zmm9, %%zmm0\n\tvfmadd231ps %%zmm8, %%zmm9, %%zmm1\n\t" \
    "vfmadd231ps %%zmm8, %%zmm9, %%zmm2\n\tvfmadd231ps %%zmm8, %%zmm9, %%zmm3\n\t" \
    "vfmadd231ps %%zmm8, %%zmm9, %%zmm4\n\tvfmadd231ps %%zmm8, %%zmm9, %%zmm5\n\t" \
    "vfmadd231ps %%zmm8, %%zmm9, %%zmm6\n\tvfmadd231ps %%zmm8, %%zmm9, %%zmm7\n\t"
#define F32 F8 F8 F8 F8
#define Z(r) "vpxord %%zmm" #r ", %%zmm" #r ", %%zmm" #r "\n\t"
#define FZERO Z(0) Z(1) Z(2) Z(3) Z(4) Z(5) Z(6) Z(7) Z(8) Z(9)
#define CLOB "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9"

__attribute__((target("avx512f,amx-tile,amx-bf16"))) static void *run(void *arg) {
    int id = (int)(intptr_t)arg;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(id, &s);
    sched_setaffinity(0, sizeof s, &s);
    uint8_t cfg[64] __attribute__((aligned(64)));
    memset(cfg, 0, 64);
    cfg[0] = 1;
    for (int t = 0; t < 3; t++) {
        ((uint16_t *)(cfg + 16))[t] = 64;
        cfg[48 + t] = 16;
    }
    _tile_loadconfig(cfg);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    int nb = nf / 32, steps = nb > nt ? nb : nt;
    uint64_t rounds = 0;
    pthread_barrier_wait(&bar);
    double t0 = now(), t;
    do {
        for (int r = 0; r < 256; r++) {
            __asm__ volatile(FZERO ::: CLOB);
            for (int i = 0; i < steps; i++) {
                if (i < nb) __asm__ volatile(F32 ::: CLOB);
                if (i < nt) _tile_dpbf16ps(0, 1, 2);
            }
        }
        rounds += 256;
        t = now();
    } while (t - t0 < secs);
    _tile_release();
    ns[id] = (t - t0) * 1e9 / rounds;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: tile_fma_overlap threads F T [seconds]\n");
        return 2;
    }
    int n = atoi(argv[1]);
    nf = atoi(argv[2]);
    nt = atoi(argv[3]);
    if (argc > 4) secs = atof(argv[4]);
    if (n < 1 || n > 64 || nf < 0 || nf % 32 || nt < 0 || nf + nt == 0) {
        fprintf(stderr, "tile_fma_overlap: threads 1..64, F a multiple of 32, F + T > 0\n");
        return 2;
    }
    if (syscall(SYS_arch_prctl, 0x1023, 18)) {
        fprintf(stderr, "tile_fma_overlap: AMX permission refused\n");
        return 1;
    }
    pthread_barrier_init(&bar, 0, n);
    pthread_t th[64];
    for (int i = 0; i < n; i++) pthread_create(&th[i], 0, run, (void *)(intptr_t)i);
    double sum = 0, lo = 1e30, hi = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], 0);
        sum += ns[i];
        lo = ns[i] < lo ? ns[i] : lo;
        hi = ns[i] > hi ? ns[i] : hi;
    }
    printf("threads %2d F %3d T %2d: %.2f ns a round (threads %.2f..%.2f)\n", n, nf, nt, sum / n,
           lo, hi);
    return 0;
}
