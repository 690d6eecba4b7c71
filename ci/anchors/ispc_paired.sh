#!/usr/bin/env bash
# Paged decode against its ceilings in alternating rounds (benches/ispc_kernels__paged_decode_paired:
# each kernel call beside a plain read and a read in the kernel's order of the same bytes), on
# every case of 1 GiB or more: KV heads per call (TANDEM_CPU_DECODE_HEADS) 1, 2, 4 and the
# default (all 8), prefetch plans, the `_dot` build, and thread scaling on 16 x 16k. Run from the
# folder ci/build-device.sh wrote; logs under $OUT (or /tmp).
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/ispc_paired; mkdir -p "$L"
P=$here/benches/ispc_kernels__paged_decode_paired
# run TAG [VAR=VALUE ...] [CASE-FILTER]
run() { tag=$1; shift; f=""; [ $# -gt 0 ] && [ "${!#}" = "${!#%=*}" ] && f=${!#} && set -- "${@:1:$#-1}"; env "$@" "$P" $f > "$L/$tag.log" 2>&1; sed "s/^/$tag /" "$L/$tag.log"; }
lscpu > "$L/lscpu.txt"
run default
for h in 1 2 4; do run heads$h TANDEM_CPU_DECODE_HEADS=$h; done
run pf2 TANDEM_CPU_DECODE_PREFETCH=2:64
run pf0 TANDEM_CPU_DECODE_PREFETCH=0
run dot TANDEM_CPU_DECODE_DOT=1
for t in 1 2 4 8; do run t$t TANDEM_THREADS=$t PAIRED_ROUNDS=9 b16_ctx16k; done
run default2
