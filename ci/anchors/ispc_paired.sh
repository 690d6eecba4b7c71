#!/usr/bin/env bash
# Paged decode against its ceilings in alternating rounds (benches/ispc_kernels__paged_decode_paired:
# each kernel call beside a plain read and a page-order read of the same bytes), on every case of
# 1 GiB or more: the default prefetch plan and two others, the `_dot` build, and thread scaling
# on 16 x 16k. Run from the folder ci/build-device.sh wrote; logs under $OUT (or /tmp).
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/ispc_paired; mkdir -p "$L"
P=$here/benches/ispc_kernels__paged_decode_paired
run() { tag=$1; shift; f=""; [ "${!#}" = "${!#%=*}" ] && f=${!#} && set -- "${@:1:$#-1}"; env "$@" "$P" $f > "$L/$tag.log" 2>&1; sed "s/^/$tag /" "$L/$tag.log"; }
lscpu > "$L/lscpu.txt"
run default X=1
run pf2:64 TANDEM_CPU_DECODE_PREFETCH=2:64
run pf1:32 TANDEM_CPU_DECODE_PREFETCH=1:32
run dot TANDEM_CPU_DECODE_DOT=1
for t in 1 2 4 8; do run t$t TANDEM_THREADS=$t PAIRED_ROUNDS=9 b16_ctx16k; done
run default2 X=2
