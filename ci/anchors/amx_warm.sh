#!/usr/bin/env bash
# The tile unit asleep: amx-kernels' wake probe on one core (a burst of 4 tile products and 256
# FMAs after the core sat idle 0–20 µs), then the paged decode's AMX tier with and without a
# keep-alive product every WARM vector PV passes (TANDEM_CPU_DECODE_AMX_WARM), at schedules 3:1
# (the earlier default) and 1:3 (the default), beside the ISPC build and PV on tiles (1:3), at g =
# 8 and g = 4 on the pool's threads, in PASSES alternated passes of paired rounds beside the plain
# read of the same bytes (CASE, default b64_ctx4k: 1 GiB); then g = 8 on one thread. Run from the
# folder ci/build-device.sh wrote; logs under $OUT/amx_warm, a table last.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/amx_warm; mkdir -p "$L"
cd "$here"
CASE=${CASE:-b64_ctx4k}
WARM=${WARM:-2}
TANDEM_THREADS=1 GEMM_GROUPS=wake timeout 60 benches/amx_kernels__gemm --bench > "$L/wake.log" 2>&1
run() { # TAG VAR=VALUE...
    tag=$1; shift
    env PAIRED_ROUNDS="${ROUNDS:-5}" "$@" timeout 120 benches/ispc_kernels__paged_decode_paired \
        "$CASE" > "$L/$tag.log" 2>&1
    echo "$tag $(grep -A1 '^case' "$L/$tag.log" | tail -1)" >> "$L/table.txt"
}
amx() { # TAG LEAD:BURST WARM VAR=VALUE...
    local tag=$1 l b; IFS=: read -r l b <<< "$2"; local w=$3; shift 3
    run "$tag" "$@" TANDEM_CPU_DECODE_AMX=1 TANDEM_CPU_DECODE_AMX_LEAD="$l" \
        TANDEM_CPU_DECODE_AMX_BURST="$b" TANDEM_CPU_DECODE_AMX_WARM="$w"
}
: > "$L/table.txt"
for pass in $(seq 1 "${PASSES:-2}"); do
    for g in 8 4; do
        run "g${g}_ispc_p$pass" DECODE_G=$g TANDEM_CPU_DECODE_AMX=0
        for s in 3:1 1:3; do
            for w in 0 "$WARM"; do amx "g${g}_${s/:/_}_w${w}_p$pass" "$s" "$w" DECODE_G=$g; done
        done
        amx "g${g}_pv_1_3_p$pass" 1:3 0 DECODE_G=$g TANDEM_CPU_DECODE_AMX_PV=1
    done
done
for w in 0 "$WARM"; do amx "g8_3_1_w${w}_t1" 3:1 "$w" TANDEM_THREADS=1 DECODE_G=8; done
grep amx_wake "$L/wake.log"
echo "tag case thr kernel read kv-order k/read k/order min..max"
column -t "$L/table.txt" 2>/dev/null || cat "$L/table.txt"
