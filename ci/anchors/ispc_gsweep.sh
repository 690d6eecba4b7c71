#!/usr/bin/env bash
# Paged decode in paired rounds (each kernel call beside a plain read of the same bytes) at 1, 2,
# 4 and 8 query heads per KV head (DECODE_G), the ISPC build at every size: the same bytes read, the compute times 1 to 8; then,
# at 4 (LLaMA-3-8B), the prefetch plans, one KV head per call, the `_dot` build and the AMX tier.
# Run from the folder ci/build-device.sh wrote; logs under $OUT.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/ispc_gsweep; mkdir -p "$L"
P=$here/benches/ispc_kernels__paged_decode_paired
export TANDEM_THREADS=${TANDEM_THREADS:-16} PAIRED_ROUNDS=${PAIRED_ROUNDS:-11}
run() { tag=$1; shift; env "$@" "$P" > "$L/$tag.log" 2>&1; grep ctx "$L/$tag.log" | sed "s/^/$tag /"; }
for g in 1 2 4 8; do run g$g DECODE_G=$g TANDEM_CPU_DECODE_AMX=0; done
for g in 1 4; do DECODE_G=$g TANDEM_CPU_DECODE_AMX=0 TANDEM_THREADS=1 PAIRED_ROUNDS=5 "$P" b16_ctx16k > "$L/one_g$g.log" 2>&1; grep ctx "$L/one_g$g.log" | sed "s/^/one_g$g /"; done
run pf0 TANDEM_CPU_DECODE_PREFETCH=0
run pf1_16 TANDEM_CPU_DECODE_PREFETCH=1:16
run pf2 TANDEM_CPU_DECODE_PREFETCH=2:64
run heads1 TANDEM_CPU_DECODE_HEADS=1
run dot TANDEM_CPU_DECODE_DOT=1
run amx TANDEM_CPU_DECODE_AMX=1
run g4_again
