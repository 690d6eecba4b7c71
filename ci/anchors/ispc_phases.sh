#!/usr/bin/env bash
# The paged decode's segment function on one core from L2 (bin/segment_min: 8 KV heads × 256
# tokens, 1 MiB of K and V, best of 3000 calls) at 1, 4 and 8 query heads per KV head; then at
# 4, the builds that leave out QKᵀ, the softmax or PV (a phase's time is the full build's less
# that one's, where the phases do not overlap). Two rounds each. Run from the folder
# ci/build-device.sh wrote; logs under $OUT.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/ispc_phases; mkdir -p "$L"
B=$here/bin
{
for r in 1 2; do
    for g in 1 4 8; do echo "full r$r $("$B/segment_min" $g 256 3000 1)"; done
    for v in qk softmax pv; do echo "${v}_out r$r $("$B/segment_min_${v}_out" 4 256 3000 1)"; done
done
} 2>&1 | tee "$L/phases.log"
