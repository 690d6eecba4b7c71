#!/usr/bin/env bash
# Runs on the GPU host, from the folder ci/build-device.sh made (copied there as run.sh):
#   ./run.sh LOGDIR [tests|benches|all] [criterion filter]
# Tests run with TANDEM_REQUIRE=amx,gpu: a test that would skip for want of AMX or a GPU fails
# here instead. Full logs go to LOGDIR; a short table is printed last.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOG=${1:?usage: run.sh LOGDIR [tests|benches|all] [filter]}
what=${2:-tests}
filter=${3:-}
mkdir -p "$LOG"
export TANDEM_REQUIRE=${TANDEM_REQUIRE:-amx,gpu}
export TANDEM_DATA="$here/data"
export CRITERION_HOME="$LOG/criterion"

"$here/bin/tandem" info > "$LOG/info.txt" 2>&1
cat "$LOG/info.txt"
table=""
tp=0; tf=0; bad=0
if [ "$what" = tests ] || [ "$what" = all ]; then
    for t in "$here"/tests/*; do
        [ -x "$t" ] || continue
        n=$(basename "$t")
        "$t" ${filter:+"$filter"} > "$LOG/test-$n.log" 2>&1
        rc=$?
        read -r p f < <(awk '/^test result/ {for (i = 2; i <= NF; i++) {if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1)}} END {print p+0, f+0}' "$LOG/test-$n.log")
        s=$(grep -c '^SKIP ' "$LOG/test-$n.log")
        tp=$((tp + ${p:-0})); tf=$((tf + ${f:-0}))
        [ $rc = 0 ] || bad=1
        table+=$(printf '%-36s rc=%-3s passed=%-4s failed=%-4s skipped=%s' "$n" "$rc" "${p:-0}" "${f:-0}" "$s")$'\n'
    done
fi
if [ "$what" = benches ] || [ "$what" = all ]; then
    for b in "$here"/benches/*; do
        [ -x "$b" ] || continue
        n=$(basename "$b")
        "$b" --bench ${filter:+"$filter"} > "$LOG/bench-$n.log" 2>&1
        rc=$?
        [ $rc = 0 ] || bad=1
        table+=$(printf '%-36s rc=%-3s bench (log: bench-%s.log)' "$n" "$rc" "$n")$'\n'
    done
fi
echo
printf '%s' "$table"
[ "$what" = benches ] || echo "tests: $tp passed, $tf failed"
exit $bad
