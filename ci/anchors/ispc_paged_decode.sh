#!/usr/bin/env bash
# Paged decode on the GPU host, one command: the f32 ISPC build (default) and the AVX512-BF16
# `_dot` build on every 16-thread case with the plain reads, one thread from L2 (b1_ctx256) and
# on 16 x 16k, thread scaling, and the PyTorch anchors. Run from the folder that
# ci/build-device.sh wrote; logs under $OUT (or /tmp), a short table on stdout.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/ispc_paged; mkdir -p "$L"
B=$here/benches/ispc_kernels__paged_decode
sum() { awk -v tag="$1" '/^(cpu_[a-z0-9_]+)\/[a-z0-9_]+/ {n=$1} /thrpt:  \[[0-9.]+ GiB/ {print tag, n, $4}'; }
run() { tag=$1; shift; env "$@" CRITERION_HOME="$L/c-$tag" "$B" --bench "$F" > "$L/$tag.log" 2>&1; sum "$tag" < "$L/$tag.log"; }
lscpu > "$L/lscpu.txt"
F='_t16$'; run f32
F='cpu_paged.*_t16$'; run dot TANDEM_CPU_DECODE_DOT=1
F='(b1_ctx256_|b16_ctx16k_)t1$'; run t1 TANDEM_THREADS=1; run dot_t1 TANDEM_THREADS=1 TANDEM_CPU_DECODE_DOT=1
F='b16_ctx16k_'; for t in 2 4 8; do run scale_t$t TANDEM_THREADS=$t; done
python3 "$here/anchors/ispc_paged_decode.py" > "$L/anchor.log" 2>&1; sed 's/^/anchor /' "$L/anchor.log" | tail -12
