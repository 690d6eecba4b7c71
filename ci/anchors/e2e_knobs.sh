#!/usr/bin/env bash
# OPT-30B end to end at one batch (default 64; input 256, output 32, weights pinned, automatic
# split, one warm-up iteration) under several environment settings, alternated after one probe,
# so that knobs of the engine and the kernels (TANDEM_AMX_*, TANDEM_UNPACK_STREAM, ...) are
# compared on the same host. Hosts drift between runs by up to 15 %: list each setting twice or
# more, interleaved, and compare the ratios printed besides tokens/s (down and out against
# norm+up, which most GEMM knobs leave alike), not single runs. Run from the folder
# ci/build-device.sh wrote; logs under $OUT. KNOBS: ";"-separated, each a space-separated list of
# VAR=value, "default" for none; BIN=name in a setting runs bin/name, an earlier build of
# tandem carried beside bin/tandem, for A/B runs of a change without a knob. Example (K slices
# on and off, the unpack stream on and off):
#   KNOBS="default;TANDEM_AMX_KSPLIT=off;TANDEM_UNPACK_STREAM=0;default;TANDEM_AMX_KSPLIT=off;TANDEM_UNPACK_STREAM=0" \
#   bash anchors/e2e_knobs.sh
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/e2e_knobs; mkdir -p "$L"
"$here/bin/tandem" probe --profile "$L/p.json" > "$L/probe.log" 2>&1
grep -E "^(DRAM read \(|CPU GEMM|host read with H2D)" "$L/probe.log"
KNOBS=${KNOBS:-"default;TANDEM_UNPACK_STREAM=0;default;TANDEM_UNPACK_STREAM=0"}
i=0
IFS=';' read -ra list <<< "$KNOBS"
for k in "${list[@]}"; do
  i=$((i + 1)); words=(); [ "$k" = default ] || read -ra words <<< "$k"
  # BIN=name runs bin/name instead of bin/tandem (an earlier build carried beside it).
  bin="$here/bin/tandem"; envs=()
  for e in "${words[@]}"; do
    case "$e" in BIN=*) bin="$here/bin/${e#BIN=}" ;; *) envs+=("$e") ;; esac
  done
  tl="$L/r$i.$(date +%s).timeline.jsonl"   # a new name: an existing timeline is never overwritten
  env "${envs[@]}" TANDEM_PROFILE=1 TANDEM_TIMELINE="$tl" "$bin" bench --profile "$L/p.json" \
    -m opt-30b --input-tokens "${INPUT:-256}" --max-new-tokens 32 --num-iter 1 --num-warmup 1 \
    --gpu-percentage 0 --pin-weight --batch-size "${BATCH:-64}" > "$L/r$i.log" 2>&1
  echo "rc=$?" >> "$L/r$i.log"
  awk -v k="$k" '
    /^next-token latency/ {step = $3}
    /^throughput/ {tps = $2}
    /^CPU per decode step/ {
      for (f = 1; f <= NF; f++) {
        if ($f == "norm+up") up = $(f + 1) + 0
        if ($f == "down") down = $(f + 1) + 0
        if ($f == "proj") out = $(f + 1) + 0
      }
    }
    /^rc=/ {rc = substr($0, 4)}
    END {
      printf "[%s] %s tokens/s, next token %s ms, rc %s", k, tps, step, rc
      if (up > 0) printf "; down / norm+up %.3f, out / norm+up %.3f", down / up, out / up
      printf "\n"
    }' "$L/r$i.log"
  [ -f "$tl" ] && python3 "$here/anchors/timeline.py" "$tl" 2>/dev/null | grep -E "^  (copies|pcie_idle|longer side)" | sed 's/^/    /'
done
