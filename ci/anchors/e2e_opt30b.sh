#!/usr/bin/env bash
# OPT-30B end to end, LIA's example (input 256, output 32), every weight pinned on the host and
# the automatic split, at batch 1 and 64 after a probe, with TANDEM_PROFILE's CPU breakdown;
# each throughput beside FlexGen 0.1.8's on the GPU host with the same settings (0.90 tokens/s
# at batch 1, 56.8 at batch 64). Run from the folder ci/build-device.sh wrote; logs under $OUT.
# BATCHES overrides the batch list (FlexGen's figure is known for 1 and 64 only), INPUT the
# input tokens (LIA's offline setting: INPUT=32 BATCHES=512). Each run writes its step
# timeline (b$b.<time>.timeline.jsonl); the line printed per batch adds the first token and the
# prefill's first and slowest later GPU layer from it. Like FlexGen's benchmark (a warm-up
# generate before the timed one), one untimed iteration runs first (WARMUP, default 1; ITERS
# timed ones, default 1): at batch 64 without it, the process's first prefill's first GPU layer
# and its first decode step's first CPU layer each took 0.13-0.15 s more than the others; with
# it, only the warm-up's iteration pays them (both are the process's, not each session's). The
# lines printed after each batch give both for every iteration.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/e2e_opt30b; mkdir -p "$L"
"$here/bin/tandem" probe --profile "$L/p.json" > "$L/probe.log" 2>&1
python3 - "$L/p.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
keys = [("dram_read_bytes_s", "DRAM read GB/s"), ("cpu_gemv_bytes_s", "GEMV GB/s"),
        ("cpu_gemm_m64_flop_s", "64-row GEMM TFLOP/s"), ("cpu_gemm_m512_flop_s", "512-row GEMM TFLOP/s"),
        ("cpu_fma_f32_flop_s", "FMA TFLOP/s"),
        ("pcie_h2d_pinned_bytes_s", "PCIe H2D GB/s"), ("host_read_with_h2d_bytes_s", "host read with H2D GB/s")]
print("probe: " + ", ".join(f"{n} {p.get(k, 0) / (1e12 if 'FLOP' in n else 1e9):.2f}" for k, n in keys))
PY
for b in ${BATCHES:-1 64}; do
  tl="$L/b$b.$(date +%s).timeline.jsonl"   # a new name: an existing timeline is never overwritten
  TANDEM_TIMELINE="$tl" TANDEM_PROFILE=1 "$here/bin/tandem" bench --profile "$L/p.json" -m opt-30b --input-tokens "${INPUT:-256}" \
    --max-new-tokens 32 --num-iter "${ITERS:-1}" --num-warmup "${WARMUP:-1}" --gpu-percentage 0 --pin-weight \
    --batch-size "$b" > "$L/b$b.log" 2>&1
  echo "rc=$?" >> "$L/b$b.log"
  awk -v b="$b" -v input="${INPUT:-256}" '
    /^layer map/ {map = $NF}
    /^next-token latency/ {step = $3}
    /^throughput/ {tps = $2}
    /^roofline  / {for (i = 1; i + 3 <= NF; i++) if ($(i + 1) == "%" && $(i + 3) == "roofline") roof = $i "%"}
    /^roofline, CPU compute/ {n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^%;?$/) {n++; if (n == 1) cpu = $(i - 1) "%"; else split_ = $(i - 1) "%"}}
    /^rc=/ {rc = substr($0, 4)}
    END {
      flex = (input != 256) ? 0 : (b == 1) ? 0.90 : (b == 64) ? 56.8 : 0
      printf "batch %s: %s tokens/s", b, tps
      if (flex > 0 && tps != "") printf " (%.2fx FlexGen)", tps / flex
      printf ", next token %s ms, %s of the roofline", step, roof
      if (cpu != "") printf " (%s with the CPU GEMM rate%s)", cpu, (split_ != "") ? ", " split_ " of any split" : ""
      printf ", rc %s, layers %s\n", rc, map
    }' "$L/b$b.log"
  python3 - "$tl" "$L/b$b.log" <<'PY'
import json, re, sys
try:
    steps = [json.loads(l) for l in open(sys.argv[1])]
except OSError:
    sys.exit(0)
# The timed (last) iteration's prefill: the timeline holds the warm-up's steps too.
first = ([s for s in steps if s["prefill"]] or [None])[-1]
ttft = re.search(r"first-token latency\s+([0-9.]+)", open(sys.argv[2]).read())
if first and first["gpu"]:
    g = [b - a for _, a, b in first["gpu"]]
    print(f"  first token {ttft.group(1) if ttft else '?'} ms; prefill: first GPU layer {g[0]:.1f} ms, "
          f"the others {min(g[1:] or [0]):.1f}..{max(g[1:] or [0]):.1f} ms, layers ended at "
          f"{first['gpu_end_ms']:.1f} ms of the step")
# The first decode step of every iteration: a first CPU layer far slower than the next only in
# the warm-up's says the cost is the process's; in the timed iteration's too, each session's.
for i, s in enumerate(steps[:-1]):
    c = steps[i + 1]["cpu"]
    if s["prefill"] and len(c) > 1:
        print(f"  first decode step after the prefill at step {s['step']}: first CPU layer "
              f"{c[0][2] - c[0][1]:.1f} ms, the next {c[1][2] - c[1][1]:.1f} ms")
PY
done
