#!/usr/bin/env bash
# The AMX bf16 GEMM's item orders (TANDEM_AMX_ORDER: columns, the default; rows; own, each
# thread packing its own rows of A) on LLaMA-3-8B o and down and a wide product of o's K, at 512
# and 2048 rows, alternating the orders over two rounds so that the host's drift shows. 16
# threads; GFLOP/s (criterion medians). Run from the folder ci/build-device.sh wrote; logs
# under $OUT.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/gemm_orders; mkdir -p "$L"
export TANDEM_THREADS=${TANDEM_THREADS:-16}
S=${GEMM_SHAPES:-llama3-8b.o,llama3-8b.down,28672x4096}
MS=${GEMM_MS:-512,2048}
for r in 1 2; do
  for o in ${ORDERS:-columns own rows}; do
    TANDEM_AMX_ORDER=$o GEMM_GROUPS=bf16 GEMM_SHAPES=$S GEMM_MS=$MS CRITERION_HOME=$L/c_$o$r \
      "$here/benches/amx_kernels__gemm" --bench --warm-up-time 0.3 --measurement-time 1 > "$L/$o$r.log" 2>&1
    echo "$o ($r): $(awk '/^cpu_/ {name = $1} /thrpt/ {sub(/^cpu_gemm_bf16\/(llama3-8b\.)?/, "", name); printf "%s=%s ", name, $(NF-3)}' "$L/$o$r.log")"
  done
done
