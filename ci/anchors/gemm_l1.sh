#!/usr/bin/env bash
# Where the AMX GEMM's tile loads find their operands, in one call: the micro-kernel's ceilings
# on one thread and on 16 (`amx_ceiling`: both operands in L1, both in L2, and one in L1 with
# the other in L2: l1a_l2b, l2a_l1b), then the blockings that keep one operand in L1, alternated
# with the defaults: at 64 rows with the weight from DRAM (OPT-30B FC1 and FC2, a batch-64
# decode step's CPU layers: row groups outside, a K chunk of A of 8 tiles reused by four or
# eight column pairs, the weight prefetched into L1 two steps ahead; or column pairs outside
# over K chunks of 4, where both row groups' chunk of A, 16 KiB, and a pair's chunk of B, 8 KiB,
# fit L1 together), and at 128 and 512 rows
# (LLaMA-3-8B o and down, issue 3's cells under 2x torch). GFLOP/s (criterion medians). Run
# from the folder ci/build-device.sh wrote; logs under $OUT. Each part is skipped once LIMIT
# seconds (default 300) have passed since the start. The 64-row knob set that beat the
# defaults by 4 % or more in both rounds, if one did, is written to $OUT/gemm_l1/best64.txt.
# Measured in the fifteenth session (docs/BENCHMARKS.md): every blocking that keeps A in L1
# lost to the defaults, by 12-33 %.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/gemm_l1; mkdir -p "$L"
S0=$(date +%s)
left() { echo $(( ${LIMIT:-300} - ($(date +%s) - S0) )); }
for t in 1 16; do
  TANDEM_THREADS=$t GEMM_GROUPS=ceiling timeout 60 "$here/benches/amx_kernels__gemm" --bench amx_ceiling \
    --warm-up-time 0.2 --measurement-time 0.5 > "$L/ceiling_t$t.log" 2>&1
  echo "ceiling, $t thread(s): $(awk '/^amx_ceiling/ {name = $1} /thrpt/ {sub(/^amx_ceiling\//, "", name); printf "%s=%s %s  ", name, $(NF-3), $(NF-2)}' "$L/ceiling_t$t.log")"
done
L1="TANDEM_AMX_ROWS_OUTER=1 TANDEM_AMX_KC=8"
K64="default;$L1 TANDEM_AMX_NB_SMALL=8;$L1 TANDEM_AMX_NB_SMALL=8 TANDEM_AMX_PF_B=2;$L1 TANDEM_AMX_NB_SMALL=4 TANDEM_AMX_PF_B=2;TANDEM_AMX_KC=4 TANDEM_AMX_NB_SMALL=8;default;$L1 TANDEM_AMX_NB_SMALL=8;$L1 TANDEM_AMX_NB_SMALL=8 TANDEM_AMX_PF_B=2;TANDEM_AMX_KC=4 TANDEM_AMX_NB_SMALL=8"
if [ "$(left)" -gt 30 ]; then
  OUT=$L/m64 GEMM_COLD=1 GEMM_SHAPES=opt-30b.fc1,opt-30b.fc2 GEMM_MS=64 KNOBS="$K64" \
    timeout "$(left)" bash "$here/anchors/gemm_knobs.sh"
  # The 64-row winner, if it beat the defaults by 4 % or more in every round, for e2e_knobs.sh.
  python3 "$here/anchors/knob_ratio.py" "$L/m64/gemm_knobs" "$K64" 2>/dev/null > "$L/best64.txt"
  echo "64 rows, best by 4 % or more: [$(cat "$L/best64.txt")]"
fi
[ "$(left)" -gt 30 ] && OUT=$L/m512 GEMM_SHAPES=llama3-8b.o,llama3-8b.down GEMM_MS=128,512 \
  KNOBS="default;$L1;$L1 TANDEM_AMX_PF_B=2;default;$L1;$L1 TANDEM_AMX_PF_B=2" \
  timeout "$(left)" bash "$here/anchors/gemm_knobs.sh"
