#!/usr/bin/env bash
# The AMX bf16 GEMM's blocking knobs (TANDEM_AMX_*, see amx-kernels/src/gemm/amx_tiles.rs) on
# the shapes where it trails torch most (LLaMA-3-8B o and down) beside gate_up, the default
# first and last so that the host's drift shows. 16 threads; GFLOP/s (criterion medians).
# Run from the folder ci/build-device.sh wrote; logs under $OUT. KNOBS overrides the list
# (";"-separated, each a space-separated list of VAR=value, "default" for none). With
# TANDEM_THREADS=1 it compares the knobs' per-core efficiency, apart from what else shares the
# host's cores; a host whose two default runs differ by more than the knobs do is too noisy.
# The item orders, alternated over two rounds (`own`: each thread packs its own rows of A):
#   GEMM_SHAPES=llama3-8b.o,llama3-8b.down,28672x4096 GEMM_MS=512,2048 \
#   KNOBS="default;TANDEM_AMX_ORDER=own;TANDEM_AMX_ORDER=rows;default;TANDEM_AMX_ORDER=own;TANDEM_AMX_ORDER=rows" \
#   bash anchors/gemm_knobs.sh
# The 64-row product with its weight from DRAM (the engine's batch-64 CPU layers), one column
# pair a block so that its C stays in L1 across short K chunks:
#   GEMM_COLD=1 GEMM_SHAPES=opt-30b.qkv,opt-30b.fc2 GEMM_MS=64 \
#   KNOBS="default;TANDEM_AMX_NB_SMALL=2 TANDEM_AMX_KC=4;TANDEM_AMX_NB_SMALL=2 TANDEM_AMX_KC=8;TANDEM_AMX_NB_SMALL=2;default" \
#   bash anchors/gemm_knobs.sh
# The B-stationary kernel for those blocks (each weight tile loaded once for all 64 rows), with
# one pair a block and with eight column blocks over K chunks of 8 (A's chunk, 32 KiB, in L1):
#   GEMM_COLD=1 GEMM_SHAPES=opt-30b.qkv,opt-30b.fc1,opt-30b.fc2 GEMM_MS=64 \
#   KNOBS="default;TANDEM_AMX_SMALL=b1;TANDEM_AMX_SMALL=b1 TANDEM_AMX_NB_SMALL=8 TANDEM_AMX_KC=8;default;TANDEM_AMX_SMALL=b1;TANDEM_AMX_SMALL=b1 TANDEM_AMX_NB_SMALL=8 TANDEM_AMX_KC=8" \
#   bash anchors/gemm_knobs.sh
# A (the panel, from L2) prefetched into L1 ahead of the 64-row products' tile loads (at 512 and
# 2048 rows the L1 prefetches lost; at 64 rows, with B from DRAM, not yet measured):
#   GEMM_COLD=1 GEMM_SHAPES=opt-30b.qkv,opt-30b.fc1,opt-30b.fc2,opt-30b.out GEMM_MS=64 \
#   KNOBS="default;TANDEM_AMX_PF_A=1;TANDEM_AMX_PF_A=2;TANDEM_AMX_PF_A=4;TANDEM_AMX_PF_A=2 TANDEM_AMX_PF_B=2;default" \
#   bash anchors/gemm_knobs.sh
# and the same for larger M (a 128 × 32 block's C is 16 KiB, L1-resident across K chunks):
#   GEMM_SHAPES=llama3-8b.o,llama3-8b.down,llama3-8b.gate_up GEMM_MS=128,512 \
#   KNOBS="default;TANDEM_AMX_NB=2 TANDEM_AMX_KC=4;TANDEM_AMX_NB=2 TANDEM_AMX_KC=8;TANDEM_AMX_NB=2 TANDEM_AMX_MB=64 TANDEM_AMX_KC=8;default" \
#   bash anchors/gemm_knobs.sh
# The int8 GEMM (GEMM_GROUP=int8) on the same knobs: A quantized straight into the panel (the
# default), into rows then copied into the panel (copy) or read in place (auto: its quantized
# rows are whole lines), shorter K chunks (more K slices), narrower blocks, K slices off:
#   GEMM_GROUP=int8 GEMM_SHAPES=llama3-8b.o,llama3-8b.down,llama3-8b.gate_up,opt-30b.fc1 GEMM_MS=128,512 \
#   KNOBS="default;TANDEM_AMX_A=copy;TANDEM_AMX_A=auto;TANDEM_AMX_KC=16;TANDEM_AMX_NB=4;TANDEM_AMX_KC=16 TANDEM_AMX_NB=4;TANDEM_AMX_KSPLIT=off;default" \
#   bash anchors/gemm_knobs.sh
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/gemm_knobs; mkdir -p "$L"
export TANDEM_THREADS=${TANDEM_THREADS:-16}
S=${GEMM_SHAPES:-llama3-8b.o,llama3-8b.down,llama3-8b.gate_up}
MS=${GEMM_MS:-128,512,2048}
# The bench group: bf16 (default) or int8 (the same knobs drive the int8 GEMM's tiles).
G=${GEMM_GROUP:-bf16}
case $G in bf16|int8) ;; *) echo "gemm_knobs.sh: GEMM_GROUP=$G is neither bf16 nor int8" >&2; exit 2;; esac
KNOBS=${KNOBS:-"default;TANDEM_AMX_KC=16;TANDEM_AMX_KC=64;TANDEM_AMX_KC=128;TANDEM_AMX_ROWS_OUTER=1;TANDEM_AMX_NB=16;TANDEM_AMX_MB=256;TANDEM_AMX_MB=256 TANDEM_AMX_NB=16;TANDEM_AMX_MB=64 TANDEM_AMX_NB=16;TANDEM_AMX_KC=16 TANDEM_AMX_NB=16;TANDEM_AMX_PF_B2=0;default"}
i=0
IFS=';' read -ra list <<< "$KNOBS"
for k in "${list[@]}"; do
  i=$((i + 1)); envs=(); [ "$k" = default ] || read -ra envs <<< "$k"
  env "${envs[@]}" GEMM_GROUPS=$G GEMM_SHAPES=$S GEMM_MS=$MS CRITERION_HOME=$L/c$i \
    "$here/benches/amx_kernels__gemm" --bench --warm-up-time 0.3 --measurement-time 1 > "$L/k$i.log" 2>&1
  echo "[$k] $(awk '/^cpu_/ {name = $1} /thrpt/ {sub(/^cpu_gemm_(bf16|int8)\/(llama3-8b\.)?/, "", name); printf "%s=%s ", name, $(NF-3)}' "$L/k$i.log")"
done
# Each knob set's geometric mean over the shapes against the defaults' (knob_ratio.py).
python3 "$here/anchors/knob_ratio.py" "$L" "$KNOBS" 2>&1 >/dev/null
