#!/usr/bin/env bash
# The paged decode's AMX tier with its tile products issued in bursts of items (SCHEDULES:
# TANDEM_CPU_DECODE_AMX_LEAD:TANDEM_CPU_DECODE_AMX_BURST pairs; 1:3, the default, is three items'
# products at a time, one item ahead; 3:1, the earlier default, one at a time, three ahead) against
# the ISPC build, at g = 8 and g = 4 query heads per KV head on the pool's threads, each in paired
# rounds beside the plain read of the same bytes (CASE, default b64_ctx4k: 1 GiB), in PASSES
# alternated passes (default 2); then g = 8 on one thread (3:1 and 1:3). Run from the folder
# ci/build-device.sh wrote; logs under $OUT/amx_burst, a table last.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/amx_burst; mkdir -p "$L"
cd "$here"
CASE=${CASE:-b64_ctx4k}
# LEAD:BURST pairs; 1:3 is the default schedule.
SCHEDULES=${SCHEDULES:-3:1 1:3 2:2 2:4}
run() { # TAG VAR=VALUE...
    tag=$1; shift
    env PAIRED_ROUNDS="${ROUNDS:-7}" "$@" benches/ispc_kernels__paged_decode_paired "$CASE" \
        > "$L/$tag.log" 2>&1
    echo "$tag $(grep -A1 '^case' "$L/$tag.log" | tail -1)" >> "$L/table.txt"
}
amx() { # TAG-PREFIX TAG-SUFFIX LEAD:BURST VAR=VALUE...
    local pre=$1 suf=$2 l b; IFS=: read -r l b <<< "$3"; shift 3
    run "${pre}_l${l}b${b}_$suf" "$@" TANDEM_CPU_DECODE_AMX=1 \
        TANDEM_CPU_DECODE_AMX_LEAD="$l" TANDEM_CPU_DECODE_AMX_BURST="$b"
}
: > "$L/table.txt"
for pass in $(seq 1 "${PASSES:-2}"); do
    for g in 8 4; do
        run "g${g}_ispc_p$pass" DECODE_G=$g TANDEM_CPU_DECODE_AMX=0
        for v in $SCHEDULES; do amx "g$g" "p$pass" "$v" DECODE_G=$g; done
    done
done
for v in 3:1 1:3; do amx g8 t1 "$v" TANDEM_THREADS=1 DECODE_G=8; done
echo "tag case thr kernel read kv-order k/read k/order min..max"
column -t "$L/table.txt" 2>/dev/null || cat "$L/table.txt"
