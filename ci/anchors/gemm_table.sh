#!/usr/bin/env bash
# The amx-kernels GEMM table: bf16 and int8 at M = 1, 8, 128, 512, 2048 on LLaMA-3-8B o, down,
# gate_up (SiLU·mul) and OPT-30B FC1 (bias, ReLU), the DRAM read of the same process, then torch
# (oneDNN, AMX in bf16) on the same shapes and epilogues, printed side by side. 16 threads. Run
# from the folder ci/build-device.sh wrote; logs under $OUT. (At M <= 8 these weights are partly
# held by the 300 MB L3: the weight-streaming rate past the cache is the probe's GEMV.)
# CEILINGS=1 also runs, before the table and after it, the micro-kernel's ceilings on the same
# threads: the tile products alone and the 2 x 2 kernel from L1, bf16 and int8 (amx_ceiling/
# tdp_bf16, l1, tdp_int8, l1_int8; 2 ms calls): what each cell's product is bounded by on this
# host at this moment (the GPU hosts' tile rate moves from round to round).
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/gemm_table; mkdir -p "$L"
export TANDEM_THREADS=${TANDEM_THREADS:-16}
S=${GEMM_SHAPES:-llama3-8b.o,llama3-8b.down,llama3-8b.gate_up,opt-30b.fc1}
MS=${GEMM_MS:-1,8,128,512,2048}
ceilings() { # round
  [ "${CEILINGS:-0}" = 1 ] || return 0
  GEMM_CEILING_STEPS=65536 GEMM_GROUPS=ceiling timeout 60 "$here/benches/amx_kernels__gemm" \
    --bench 'amx_ceiling/(tdp_bf16|l1|tdp_int8|l1_int8)$' --warm-up-time 0.3 --measurement-time 1 \
    > "$L/ceilings$1.log" 2>&1
  awk -v r="$1" '/^amx_ceiling\// {n=$1} /thrpt:  \[ *[0-9]/ {printf "ceiling (round %s) %-24s %s %s\n", r, n, $(NF-3), $(NF-2)}' \
    "$L/ceilings$1.log"
}
ceilings 1
GEMM_GROUPS=dram,bf16,int8 GEMM_SHAPES=$S GEMM_MS=$MS CRITERION_HOME=$L/c \
  "$here/benches/amx_kernels__gemm" --bench --warm-up-time 0.3 --measurement-time 1 > "$L/gemm.log" 2>&1
ANCHOR_SHAPES=$S ANCHOR_MS=$MS python3 "$here/anchors/amx_gemm.py" "$L/c" | tee "$L/torch.log"
ceilings 2
