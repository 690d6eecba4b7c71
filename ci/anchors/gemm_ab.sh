#!/usr/bin/env bash
# Builds of the GEMM side by side in one call: the folder's benches/amx_kernels__gemm (new) and
# the executables under old/ named in OLDS (default amx_kernels__gemm: the previous build, kept
# by `KEEP=benches/amx_kernels__gemm bash ci/build-device.sh`; several names, space-separated,
# compare several builds), alternated ROUNDS times (default 2) on the same shapes, 16 threads.
# Prints each cell's median throughput per build and round and new / old for each old build (the
# mean of the rounds' ratios). Run from the folder ci/build-device.sh wrote; logs under $OUT.
#   GEMM_GROUP=int8 GEMM_SHAPES=llama3-8b.o,llama3-8b.down,llama3-8b.gate_up,opt-30b.fc1 \
#   GEMM_MS=128,512 bash anchors/gemm_ab.sh
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/gemm_ab; mkdir -p "$L"
export TANDEM_THREADS=${TANDEM_THREADS:-16}
G=${GEMM_GROUP:-bf16}
case $G in bf16|int8) ;; *) echo "gemm_ab.sh: GEMM_GROUP=$G is neither bf16 nor int8" >&2; exit 2;; esac
OLDS=${OLDS:-amx_kernels__gemm}
builds="benches/amx_kernels__gemm"
for o in $OLDS; do builds="$builds old/$o"; done
for b in $builds; do
  [ -x "$here/$b" ] || { echo "gemm_ab.sh: no $here/$b (build with KEEP=benches/amx_kernels__gemm, or name old builds in OLDS)" >&2; exit 2; }
done
S=${GEMM_SHAPES:-llama3-8b.o,llama3-8b.down,llama3-8b.gate_up}
MS=${GEMM_MS:-128,512}
for r in $(seq 1 "${ROUNDS:-2}"); do
  for b in $builds; do
    tag=$(basename "$(dirname "$b")")_$(basename "$b")
    GEMM_GROUPS=$G GEMM_SHAPES=$S GEMM_MS=$MS CRITERION_HOME=$L/c_${tag}_$r \
      "$here/$b" --bench --warm-up-time 0.3 --measurement-time 1 > "$L/${tag}_$r.log" 2>&1
  done
done
python3 - "$L" "${ROUNDS:-2}" "$here/anchors" $builds <<'PY'
import os, sys
L, rounds, anchors, builds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
sys.path.insert(0, anchors)
from knob_ratio import medians  # criterion's median throughput per benchmark id in one log
tags = [os.path.basename(os.path.dirname(b)) + "_" + os.path.basename(b) for b in builds]
short = ["new"] + [os.path.basename(b) for b in builds[1:]]
runs = {(t, r): medians(f"{L}/{t}_{r}.log") for t in tags for r in range(1, rounds + 1)}
names = sorted(set.intersection(*(set(v) for v in runs.values())))
if not names:
    sys.exit("gemm_ab.sh: no cell that every run measured (see the logs)")
print("builds: " + ", ".join(f"{s} = {b}" for s, b in zip(short, builds)))
head = " ".join(f"{s[-8:]:>8s}.{r}" for r in range(1, rounds + 1) for s in short)
print(f"{'cell (G/s)':40s} {head}  " + " ".join(f"new/{s[-8:]:8s}" for s in short[1:]))
for n in names:
    cells = " ".join(f"{runs[t, r][n] / 1e9:10.0f}" for r in range(1, rounds + 1) for t in tags)
    ratios = []
    for t in tags[1:]:
        rs = [runs[tags[0], r][n] / runs[t, r][n] for r in range(1, rounds + 1)]
        ratios.append(f"{sum(rs) / len(rs):12.3f}")
    print(f"{n:40s} {cells}  " + " ".join(ratios))
PY
