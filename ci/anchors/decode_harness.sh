#!/usr/bin/env bash
# Builds ci/anchors/decode_harness.cu (see its header) into a git-ignored folder (default
# dist/decode-harness); copy that folder to the GPU host and run ./harness there.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-dist/decode-harness}
NVCC=${NVCC:-/opt/tandem/toolchain/bin/nvcc}
mkdir -p "$DEST"
git show b4a8183:crates/cuda-kernels/kernels/attention/paged_decode_mma.cu |
    sed -e 's/namespace paged_decode_mma/namespace orig_mma/' -e 's/paged_decode_mma::run/orig_mma::run/' \
        -e 's/paged_decode_mma_bf16_d/orig_mma_bf16_d/' > "$DEST/orig_mma.cu"
CUDART=$(find "$(dirname "$NVCC")/.." -name libcudart_static.a | head -1)
"$NVCC" -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I crates/cuda-kernels/kernels -I "$DEST" \
    ci/anchors/decode_harness.cu -o "$DEST/harness" -cudart static -L"$(dirname "$CUDART")"
echo "decode_harness: $DEST/harness"
