#!/usr/bin/env bash
# Whether a core's tile products and 512-bit FMAs run side by side, and what compute costs a
# reader. Run from the folder ci/build-device.sh wrote; logs under $OUT/tile_fma, a table last.
# 1. amx_fma_overlap (amx_kernels::gemm::ceiling::overlap_ceiling) at 1, 2 and 16 threads:
#    F FMAs / T tile products / C chained multiplies a round (the chain as the clock), bursts of
#    up to 32768 FMAs beside one product.
# 2. The paged decode, paired with the plain read (b64_ctx4k, 1 GiB): g = 4 with readers that
#    issue 0–32 FMAs a line and half the pool reading beside FMAs or tiles, g = 8 on the AMX
#    tier (and PV on tiles), g = 1; g = 4 on 1 and 8 threads with readers' FMAs.
# RUNS (default: all) names the paired runs to make, e.g. RUNS=g4_t16 for a short call.
set -u
RUNS=${RUNS:-g4_t16 g8amx_t16 g8amxpv_t16 g1_t16 g4_t1 g4_t8}
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/tile_fma; mkdir -p "$L"
cd "$here"
lscpu > "$L/lscpu.txt" 2>&1
TANDEM_REQUIRE=amx timeout 120 tests/amx_kernels ceiling > "$L/tests_ceiling.log" 2>&1
echo "ceiling tests rc=$? $(grep 'test result' "$L/tests_ceiling.log" | head -1 | cut -d' ' -f3-6)"
ov() {
    thr=$1
    TANDEM_THREADS=$thr GEMM_GROUPS=ceiling GEMM_OVERLAP="$2" timeout 200 \
        benches/amx_kernels__gemm --bench amx_fma_overlap > "$L/overlap_t$thr.log" 2>&1
    python3 anchors/overlap_table.py "$L/overlap_t$thr.log" "$thr" | tee -a "$L/overlap_table.txt"
}
ov 1 "0/0/64,128/0/0,0/4/0,0/16/0,64/4/0,128/1/0,128/4/0,256/4/0,128/0/64,0/4/64,128/1/64,256/1/128,1024/1/0,2048/1/0,4096/1/0,8192/1/0,32768/1/0,1024/4/0,8192/16/0"
ov 2 "0/0/64,128/0/64,0/4/64,0/16/0,128/0/0,128/1/64"
ov 16 "0/0/64,128/0/64,0/4/64,0/16/0,128/0/0,128/1/64"
pr() {
    tag=$1; shift
    [[ " $RUNS " == *" $tag "* ]] || return 0
    env PAIRED_ROUNDS=5 "$@" benches/ispc_kernels__paged_decode_paired b64_ctx4k > "$L/$tag.log" 2>&1
    echo "== $tag"; grep -A12 "^case" "$L/$tag.log" | grep -v "^case"
}
pr g4_t16 DECODE_G=4 PAIRED_FMAS=0,4,8,12,16,24,32 PAIRED_BESIDE=1
pr g8amx_t16 DECODE_G=8 TANDEM_CPU_DECODE_AMX=1
pr g8amxpv_t16 DECODE_G=8 TANDEM_CPU_DECODE_AMX=1 TANDEM_CPU_DECODE_AMX_PV=1
pr g1_t16 DECODE_G=1
pr g4_t1 TANDEM_THREADS=1 DECODE_G=4 PAIRED_FMAS=0,8,16,32
pr g4_t8 TANDEM_THREADS=8 DECODE_G=4 PAIRED_FMAS=0,8,16
