#!/usr/bin/env bash
# Builds, on a machine with Rust, everything the GPU host runs: release test executables and
# criterion benches (CUDA kernels on), the `tandem` binary, the anchor scripts and test data,
# into one git-ignored folder (default dist/device, under 64 MiB). Carry that folder to the GPU
# host (no Rust, no network needed there) and run its run.sh. LEAVE_OUT (an extended regular
# expression over the executables' names, e.g. 'cuda_kernels__gpu_') leaves those out of the
# folder, for a call that does not need them when everything would not fit. KEEP (paths inside
# the folder, space-separated, e.g. 'benches/amx_kernels__gemm') saves those executables of the
# previous build into its old/ before the folder is rebuilt, so that one call can alternate the
# two builds (anchors/gemm_ab.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-dist/device}
LIMIT_MIB=60

kept=$(mktemp -d)
trap 'rm -rf "$kept"' EXIT
for k in ${KEEP:-}; do
    if [ -e "$kept/$(basename "$k")" ]; then
        echo "build-device: KEEP: two paths named $(basename "$k"): old/ keeps executables by name, so keep one of them" >&2
        exit 1
    fi
    if [ -f "$DEST/$k" ]; then
        cp "$DEST/$k" "$kept/$(basename "$k")"
    else
        echo "build-device: KEEP: $DEST/$k is not there (no previous build of it to keep)" >&2
        exit 1
    fi
done
rm -rf "$DEST"
mkdir -p "$DEST/tests" "$DEST/benches" "$DEST/bin" "$DEST/anchors" "$DEST/data"

copy_exes() { # kind folder
    while IFS=$'\t' read -r pkg target path; do
        name="${pkg//-/_}"
        [ "$target" = "${pkg//-/_}" ] || [ "$target" = "$pkg" ] || name="${name}__${target//-/_}"
        if [ -n "${LEAVE_OUT:-}" ] && [[ "$name" =~ $LEAVE_OUT ]]; then
            echo "build-device: left out $2/$name (LEAVE_OUT)"
            continue
        fi
        cp "$path" "$DEST/$2/$name"
        strip --strip-unneeded "$DEST/$2/$name" 2>/dev/null || true
    done
}

echo "build-device: test executables"
cargo test --release --workspace --no-run --message-format=json 2>/dev/null | python3 ci/exes.py test | copy_exes test tests
echo "build-device: benches"
cargo bench --workspace --no-run --message-format=json 2>/dev/null | python3 ci/exes.py bench | copy_exes bench benches
echo "build-device: tandem"
cargo build --release -p harness
cp target/release/tandem "$DEST/bin/" && strip --strip-unneeded "$DEST/bin/tandem" 2>/dev/null || true

# The paged decode's segment function on one core, alone (crates/ispc-kernels/benches/
# segment_min.c), as built and with each phase left out (ci/anchors/ispc_phases.sh runs them).
ispc=${ISPC:-${TANDEM_TOOLCHAIN:-/opt/tandem/toolchain}/bin/ispc}
[ -x "$ispc" ] || ispc=$(command -v ispc || true)
if [ -n "$ispc" ]; then
    echo "build-device: segment_min"
    obj=$(mktemp -d)
    for v in full SKIP_QK SKIP_SOFTMAX SKIP_PV; do
        def=(); [ "$v" = full ] || def=("-D$v")
        "$ispc" crates/ispc-kernels/kernels/paged_decode.ispc -O3 --pic --woff --addressing=64 \
            -I crates/ispc-kernels/kernels --target=avx2-i32x8,avx512skx-x16 "${def[@]}" \
            -o "$obj/pd.o" -h "$obj/pd.h"
        name=segment_min; [ "$v" = full ] || name="segment_min_$(echo "${v#SKIP_}" | tr A-Z a-z)_out"
        cc -O2 crates/ispc-kernels/benches/segment_min.c "$obj/pd.o" "$obj/pd_avx2.o" \
            "$obj/pd_avx512skx.o" -lm -o "$DEST/bin/$name"
    done
    rm -rf "$obj"
else
    echo "build-device: no ISPC found: segment_min not built"
fi

cp ci/run-device.sh "$DEST/run.sh"
[ -d ci/anchors ] && cp -r ci/anchors/. "$DEST/anchors/"
# Test data the executables read (fixtures); TANDEM_DATA points them here on the GPU host.
for d in crates/*/tests/data; do
    [ -d "$d" ] || continue
    crate=$(basename "$(dirname "$(dirname "$d")")")
    mkdir -p "$DEST/data/$crate" && cp -r "$d/." "$DEST/data/$crate/"
done

if [ -n "${KEEP:-}" ]; then
    mkdir -p "$DEST/old" && cp "$kept"/* "$DEST/old/"
    echo "build-device: the previous build's $(ls "$kept" | tr '\n' ' ')kept in $DEST/old"
fi

size=$(du -sm "$DEST" | cut -f1)
ls -1 "$DEST/tests" "$DEST/benches"
echo "build-device: $DEST is ${size} MiB"
if [ "$size" -gt "$LIMIT_MIB" ]; then
    echo "build-device: over ${LIMIT_MIB} MiB: the device carry limit is 64 MiB; the largest:" >&2
    (cd "$DEST" && du -k tests/* benches/* bin/* | sort -rn | head -5) >&2
    echo "build-device: set LEAVE_OUT to a pattern of the names a call does not need (e.g. LEAVE_OUT='cuda_kernels__gpu_')" >&2
    exit 1
fi
