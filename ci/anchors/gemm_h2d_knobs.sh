#!/usr/bin/env bash
# The 64-row GEMM beside the GPU's H2D copies (`tandem probe`'s "CPU GEMM 64 rows with H2D"
# line: what a batch-64 decode step's CPU layers run beside its streamed layers' copies), by
# AMX knob, in alternated rounds. Run from the folder ci/build-device.sh wrote; logs under
# $OUT. KNOBS (";"-separated, each a space-separated list of VAR=value, "default" for none) and
# ROUNDS override the defaults.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/gemm_h2d_knobs; mkdir -p "$L"
IFS=';' read -ra list <<< "${KNOBS:-default;TANDEM_AMX_PF_B2=0;TANDEM_AMX_PF_B2=8;TANDEM_AMX_PF_B2=64}"
for r in $(seq 1 "${ROUNDS:-2}"); do
  i=0
  for k in "${list[@]}"; do
    i=$((i + 1)); envs=(); [ "$k" = default ] || read -ra envs <<< "$k"
    env "${envs[@]}" "$here/bin/tandem" probe --profile "$L/p$i.r$r.json" > "$L/p$i.r$r.log" 2>&1
    echo "[$k] round $r: $(grep -E '64 rows|with H2D|host read' "$L/p$i.r$r.log" | tr -s ' ' | tr '\n' ';')"
  done
done
