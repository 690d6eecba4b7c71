#!/usr/bin/env bash
# The amx-kernels GEMM table: bf16 and int8 at M = 1, 8, 128, 512, 2048 on LLaMA-3-8B o, down,
# gate_up (SiLU·mul) and OPT-30B FC1 (bias, ReLU), the DRAM read of the same process, then torch
# (oneDNN, AMX in bf16) on the same shapes and epilogues, printed side by side. 16 threads. Run
# from the folder ci/build-device.sh wrote; logs under $OUT. (At M <= 8 these weights are partly
# held by the 300 MB L3: the weight-streaming rate past the cache is the probe's GEMV.)
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/gemm_table; mkdir -p "$L"
export TANDEM_THREADS=${TANDEM_THREADS:-16}
S=${GEMM_SHAPES:-llama3-8b.o,llama3-8b.down,llama3-8b.gate_up,opt-30b.fc1}
MS=${GEMM_MS:-1,8,128,512,2048}
GEMM_GROUPS=dram,bf16,int8 GEMM_SHAPES=$S GEMM_MS=$MS CRITERION_HOME=$L/c \
  "$here/benches/amx_kernels__gemm" --bench --warm-up-time 0.3 --measurement-time 1 > "$L/gemm.log" 2>&1
ANCHOR_SHAPES=$S ANCHOR_MS=$MS python3 "$here/anchors/amx_gemm.py" "$L/c" | tee "$L/torch.log"
