#!/usr/bin/env bash
# Paged decode on the GPU host's CPU: the prefetch plan (TANDEM_CPU_DECODE_PREFETCH, blocks
# ahead : 64-byte lines per 4 KiB page) swept on two 1 GiB cases on the whole pool (16 threads there), each setting
# beside the plain read and the read in the kernel's page order of the same process. Run from
# the folder ci/build-device.sh wrote; logs under $OUT (or /tmp), a short table on stdout.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/ispc_pf; mkdir -p "$L"
B=$here/benches/ispc_kernels__paged_decode
C="--warm-up-time 0.5 --measurement-time 1.5"
F='(b256_ctx1k|b16_ctx16k)_t[0-9]+$'
for pf in 2:64 1:64 4:64 2:16 2:4 4:4 8:2 0; do
    TANDEM_CPU_DECODE_PREFETCH=$pf CRITERION_HOME="$L/c-$pf" "$B" --bench "$F" $C > "$L/pf-$pf.log" 2>&1
    awk -v pf="$pf" '/^cpu_[a-z0-9_]+\/[a-z0-9_]+/ {n=$1} /thrpt:  \[[0-9.]+ GiB/ {print "pf " pf, n, $4, "GiB/s"}' "$L/pf-$pf.log"
done
