#!/usr/bin/env bash
# Two builds of the GEMM side by side in one call: the folder's benches/amx_kernels__gemm (new)
# and old/amx_kernels__gemm (the previous build, kept by `KEEP=benches/amx_kernels__gemm bash
# ci/build-device.sh`), alternated ROUNDS times (default 2) on the same shapes, 16 threads. Prints
# each cell's median throughput per round and new / old (the mean of the rounds' ratios). Run
# from the folder ci/build-device.sh wrote; logs under $OUT.
#   GEMM_GROUP=int8 GEMM_SHAPES=llama3-8b.o,llama3-8b.down,llama3-8b.gate_up,opt-30b.fc1 \
#   GEMM_MS=128,512 bash anchors/gemm_ab.sh
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/gemm_ab; mkdir -p "$L"
export TANDEM_THREADS=${TANDEM_THREADS:-16}
G=${GEMM_GROUP:-bf16}
case $G in bf16|int8) ;; *) echo "gemm_ab.sh: GEMM_GROUP=$G is neither bf16 nor int8" >&2; exit 2;; esac
for b in benches old; do
  [ -x "$here/$b/amx_kernels__gemm" ] || { echo "gemm_ab.sh: no $here/$b/amx_kernels__gemm (build with KEEP=benches/amx_kernels__gemm)" >&2; exit 2; }
done
S=${GEMM_SHAPES:-llama3-8b.o,llama3-8b.down,llama3-8b.gate_up}
MS=${GEMM_MS:-128,512}
for r in $(seq 1 "${ROUNDS:-2}"); do
  for b in benches old; do
    GEMM_GROUPS=$G GEMM_SHAPES=$S GEMM_MS=$MS CRITERION_HOME=$L/c_${b}_$r \
      "$here/$b/amx_kernels__gemm" --bench --warm-up-time 0.3 --measurement-time 1 > "$L/${b}_$r.log" 2>&1
  done
done
python3 - "$L" "${ROUNDS:-2}" "$here/anchors" <<'PY'
import sys
L, rounds = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from knob_ratio import medians  # criterion's median throughput per benchmark id in one log
runs = {(b, r): medians(f"{L}/{b}_{r}.log") for b in ("benches", "old") for r in range(1, rounds + 1)}
names = sorted(set.intersection(*(set(v) for v in runs.values())))
if not names:
    sys.exit("gemm_ab.sh: no cell that every run measured (see the logs)")
print(f"{'cell (G/s)':40s} " + " ".join(f"new{r:<2d} old{r:<2d}" for r in range(1, rounds + 1)) + "  new/old")
for n in names:
    ratios = [runs["benches", r][n] / runs["old", r][n] for r in range(1, rounds + 1)]
    cells = " ".join(f"{runs['benches', r][n] / 1e9:6.0f} {runs['old', r][n] / 1e9:6.0f}" for r in range(1, rounds + 1))
    print(f"{n:40s} {cells}  {sum(ratios) / len(ratios):.3f}")
PY
