#!/usr/bin/env bash
# The CPU's compute ceilings by thread count: 512-bit f32 FMAs and AMX tile products
# (`tdpbf16ps`, `tdpbssd`, and the 2 x 2 micro-kernel from L1) on registers, 1 to 16 pool
# threads. Linear scaling means every pool thread has its own core's units; a host whose
# figures stop growing (or whose 16-thread FMA peak is about half of another host's) shares
# its cores with other work. Run from the folder ci/build-device.sh wrote; logs under $OUT.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/cpu_ceilings; mkdir -p "$L"
lscpu > "$L/lscpu.txt"
A="--warm-up-time 0.3 --measurement-time 1"
printf '%-8s %12s %12s %12s %12s\n' threads "fma GFLOP/s" "tdp bf16" "tdp int8" "l1 2x2"
for t in 1 2 4 8 16; do
  TANDEM_THREADS=$t GEMM_GROUPS=ceiling CRITERION_HOME=$L/c$t "$here/benches/amx_kernels__gemm" \
    --bench 'cpu_fma_ceiling|amx_ceiling/(tdp_bf16|tdp_int8|l1)$' $A > "$L/t$t.log" 2>&1
  # criterion order: fma, tdp_bf16, tdp_int8, l1; the median of each thrpt line
  printf '%-8s %12s %12s %12s %12s\n' $t $(grep thrpt "$L/t$t.log" | awk '{print $(NF-3)}')
done
