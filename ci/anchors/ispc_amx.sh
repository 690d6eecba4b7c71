#!/usr/bin/env bash
# Paged decode: the AMX tier (TANDEM_CPU_DECODE_AMX=1) against the ISPC build, each in paired
# rounds beside the plain read of the same bytes, on every case of 1 GiB or more, then one
# thread and thread scaling on 16 x 16k. Run from the folder ci/build-device.sh wrote; logs
# under $OUT (or /tmp).
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/ispc_amx; mkdir -p "$L"
P=$here/benches/ispc_kernels__paged_decode_paired
# run TAG [VAR=VALUE ...] [CASE-FILTER]
run() { tag=$1; shift; f=""; [ $# -gt 0 ] && [ "${!#}" = "${!#%=*}" ] && f=${!#} && set -- "${@:1:$#-1}"; env "$@" "$P" $f > "$L/$tag.log" 2>&1; sed "s/^/$tag /" "$L/$tag.log"; }
run ispc TANDEM_CPU_DECODE_AMX=0
run amx TANDEM_CPU_DECODE_AMX=1
run amx_pf0 TANDEM_CPU_DECODE_AMX=1 TANDEM_CPU_DECODE_PREFETCH=0
run amx_pf2 TANDEM_CPU_DECODE_AMX=1 TANDEM_CPU_DECODE_PREFETCH=2:64
run amx_h1 TANDEM_CPU_DECODE_AMX=1 TANDEM_CPU_DECODE_HEADS=1
for t in 1 4 8; do run amx_t$t TANDEM_CPU_DECODE_AMX=1 TANDEM_THREADS=$t PAIRED_ROUNDS=9 b16_ctx16k; done
run ispc_t1 TANDEM_CPU_DECODE_AMX=0 TANDEM_THREADS=1 PAIRED_ROUNDS=9 b16_ctx16k
run amx2 TANDEM_CPU_DECODE_AMX=1
run ispc2 TANDEM_CPU_DECODE_AMX=0
