#!/usr/bin/env bash
# Paged decode: the AMX tier (QKᵀ on tiles, softmax and PV on AVX-512; TANDEM_CPU_DECODE_AMX=1),
# and with PV on tiles too (TANDEM_CPU_DECODE_AMX_PV=1), against the ISPC build, in paired rounds beside the plain read of the same bytes (1 GiB cases),
# alternating ispc, amx, ispc, amx at 4 query heads per KV head (LLaMA-3-8B), then once each at
# 1, 2 and 8, and on one thread. Run from the folder ci/build-device.sh wrote; logs under $OUT.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/ispc_hybrid; mkdir -p "$L"
P=$here/benches/ispc_kernels__paged_decode_paired
export TANDEM_THREADS=${TANDEM_THREADS:-16} PAIRED_ROUNDS=${PAIRED_ROUNDS:-11}
run() { tag=$1; shift; env "$@" "$P" > "$L/$tag.log" 2>&1; grep ctx "$L/$tag.log" | sed "s/^/$tag /"; }
for r in 1 2; do
  run ispc_g4_$r DECODE_G=4 TANDEM_CPU_DECODE_AMX=0
  run amx_g4_$r DECODE_G=4 TANDEM_CPU_DECODE_AMX=1
  run amx_pv_g4_$r DECODE_G=4 TANDEM_CPU_DECODE_AMX=1 TANDEM_CPU_DECODE_AMX_PV=1
done
for g in 1 2 8; do
  run ispc_g$g DECODE_G=$g TANDEM_CPU_DECODE_AMX=0
  run amx_g$g DECODE_G=$g TANDEM_CPU_DECODE_AMX=1
  run amx_pv_g$g DECODE_G=$g TANDEM_CPU_DECODE_AMX=1 TANDEM_CPU_DECODE_AMX_PV=1
done
for a in 0 1; do
  DECODE_G=4 TANDEM_CPU_DECODE_AMX=$a TANDEM_THREADS=1 PAIRED_ROUNDS=5 "$P" b16_ctx16k > "$L/one_amx$a.log" 2>&1
  grep ctx "$L/one_amx$a.log" | sed "s/^/one_thread_amx$a /"
done
