#!/usr/bin/env bash
# OPT-30B with every weight pinned on the host and the automatic split, at batch 64 (input 256)
# and 512 (input 32), output 32: LIA's split with plain streamed layers (`--split-steps plain`,
# the default at batch 512) against every host layer a split layer with the decode steps kept
# (`--split-steps fixed`) or rebalanced (`--split-steps adaptive`, the default at batch 64),
# alternated over ROUNDS rounds (default 1) after one probe. Each run also writes its step
# timeline (TANDEM_TIMELINE; summed by anchors/timeline.py). One untimed iteration runs first
# (WARMUP, default 1), as FlexGen's benchmark warms up before timing. Run from the folder
# ci/build-device.sh wrote; logs under $OUT.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/e2e_split_steps; mkdir -p "$L"
"$here/bin/tandem" probe --profile "$L/p.json" > "$L/probe.log" 2>&1
grep -E "DRAM read \(|64 rows|512 rows|host read" "$L/probe.log"
for r in $(seq 1 "${ROUNDS:-1}"); do
  for b in 64 512; do
    input=256; [ "$b" = 512 ] && input=32
    for k in plain fixed adaptive; do
      log="$L/b${b}_${k}_$r.log"
      TANDEM_TIMELINE="$L/timeline_b${b}_${k}_$r.jsonl" TANDEM_PROFILE=1 "$here/bin/tandem" \
        bench --profile "$L/p.json" -m opt-30b --split-steps "$k" \
        --input-tokens "$input" --max-new-tokens 32 --num-iter 1 --num-warmup "${WARMUP:-1}" \
        --gpu-percentage 0 --pin-weight --batch-size "$b" > "$log" 2>&1
      echo "rc=$?" >> "$log"
      awk -v tag="batch $b $k round $r" '
        /^next-token latency/ {step = $3}
        /^throughput/ {tps = $2}
        /^roofline  / {for (i = 1; i + 3 <= NF; i++) if ($(i + 1) == "%" && $(i + 3) == "roofline") roof = $i "%"}
        /split: decode/ {sp = $0}
        /^rc=/ {rc = substr($0, 4)}
        END {printf "%s: %s tokens/s, next token %s ms, %s of the roofline, rc %s %s\n", tag, tps, step, roof, rc, (sp == "" ? "" : "| " sp)}' "$log"
    done
  done
done
