#!/usr/bin/env bash
# The bf16 GEMM with its weight L3-hot (one copy reused) against cold (GEMM_COLD=1: 1 GiB of
# copies cycled, the weight read from DRAM as a model's layers are), alternating hot, cold, hot,
# cold, at M = 1, 8, 512, beside the DRAM read of the same process. 16 threads. Run from the
# folder ci/build-device.sh wrote; logs under $OUT.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/gemm_cold; mkdir -p "$L"
export TANDEM_THREADS=${TANDEM_THREADS:-16}
S=${GEMM_SHAPES:-llama3-8b.o,llama3-8b.down,llama3-8b.gate_up,opt-30b.fc1}
for r in hot cold hot2 cold2; do
  c=0; case $r in cold*) c=1 ;; esac
  GEMM_COLD=$c GEMM_GROUPS=dram,bf16 GEMM_SHAPES=$S GEMM_MS=${GEMM_MS:-1,8,512} CRITERION_HOME=$L/$r \
    "$here/benches/amx_kernels__gemm" --bench --warm-up-time 0.3 --measurement-time 1 > "$L/$r.log" 2>&1
  # criterion's median of each bench (GiB/s for M <= 8 and the read, GFLOP/s above)
  echo "$r: $(awk '/^cpu_/ {name = $1} /thrpt/ {printf "%s=%s ", name, $(NF-3)}' "$L/$r.log")"
done
