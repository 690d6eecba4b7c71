#!/usr/bin/env bash
# Installs what building tandem needs, as root, on Debian (bookworm or later) or Ubuntu 24.04:
#   - libnuma-dev, libclang (for bindgen), a C/C++ compiler, Python venv support;
#   - ISPC >= 1.23: the distribution's package where it is new enough; on Debian bookworm the
#     trixie package and its libraries unpacked into a private folder and run through their own
#     loader (the mirror is the one this machine's apt sources already name);
#   - nvcc 13.0.x from NVIDIA's Python packages, in a private virtual environment.
# Tools land in $TANDEM_TOOLCHAIN (default /opt/tandem/toolchain): bin/ispc and bin/nvcc, which
# the build scripts find without any environment set. Idempotent: with everything present it
# only checks, in seconds.
set -euo pipefail

TC=${TANDEM_TOOLCHAIN:-/opt/tandem/toolchain}
CUDA_VERSION=13.0.88         # nvcc, crt, nvvm
CUDA_RUNTIME_VERSION=13.0.96
CUDA_CCCL_VERSION=13.0.85
ISPC_MIN=1.23

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() { [ "$(id -u)" = 0 ] || die "$1 is missing and installing it needs root: sudo bash ci/setup.sh"; }
[ -r /etc/os-release ] && . /etc/os-release
command -v apt-get >/dev/null || die "this script supports Debian and Ubuntu (apt-get); found ${PRETTY_NAME:-an unknown system}"
export DEBIAN_FRONTEND=noninteractive
[ -d "$TC/bin" ] || { as_root "the toolchain folder $TC"; mkdir -p "$TC/bin"; }

# --- system packages ---------------------------------------------------------------------
need=()
for p in libnuma-dev libclang-dev clang gcc g++ make binutils ca-certificates pkg-config; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need+=(python3 python3-venv python3-pip)
fi
apt_updated=0
apt_update() { [ $apt_updated = 1 ] || { apt-get update -qq; apt_updated=1; }; }
if [ ${#need[@]} -gt 0 ]; then
    as_root "${need[*]}"
    say "installing ${need[*]}"
    apt_update
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] || die "Rust (cargo >= 1.89) is needed and not installed: install it with rustup, then run this again"
fi

# --- ISPC ----------------------------------------------------------------------------------
ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
ispc_version() { "$1" --version 2>/dev/null | sed -n 's/.*ISPC), \([0-9.]*\).*/\1/p'; }

v=$(ispc_version "$TC/bin/ispc" || true)
if [ -z "$v" ] && [ -n "${ISPC:-}" ]; then
    # An ISPC the user names (for example from ISPC's release archive) is used as it is.
    v=$(ispc_version "$ISPC" || true)
    [ -n "$v" ] && ver_ge "$v" "$ISPC_MIN" || die "ISPC=$ISPC is not an ispc >= $ISPC_MIN"
    as_root "the link $TC/bin/ispc"
    ln -sf "$(readlink -f "$ISPC")" "$TC/bin/ispc"
fi
if [ -n "$v" ] && ver_ge "$v" "$ISPC_MIN"; then
    say "ISPC $v present"
else
    as_root "ISPC"
    apt_update
    cand=$(apt-cache policy ispc 2>/dev/null | sed -n 's/ *Candidate: \([0-9.]*\).*/\1/p')
    if [ -n "$cand" ] && ver_ge "$cand" "$ISPC_MIN"; then
        say "installing ISPC $cand from the distribution"
        apt-get install -y -qq ispc >/dev/null
        ln -sf "$(command -v ispc)" "$TC/bin/ispc"
    elif [ "${ID:-}" = debian ]; then
        # The trixie package, from the mirror this machine already uses.
        mirror=$(
            { cat /etc/apt/sources.list.d/*.sources 2>/dev/null; } | awk '
                /^URIs:/ {u=$2} /^Suites:/ {s=$0}
                /^$/ { if (u != "" && s !~ /security/) {print u; exit} u=""; s="" }
                END { if (u != "" && s !~ /security/) print u }' | head -n1
        )
        [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
        [ -n "$mirror" ] || die "no Debian mirror found in this machine's apt sources to fetch ISPC from; set ISPC to an ispc >= $ISPC_MIN binary"
        say "installing ISPC from Debian trixie (mirror of this machine's apt sources) into $TC/ispc"
        D="$TC/ispc"
        rm -rf "$D"; mkdir -p "$D/apt/lists/partial" "$D/apt/cache/archives/partial" "$D/debs" "$D/root"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$D/apt/sources.list"
        O=(-o "Dir::Etc::SourceList=$D/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
           -o "Dir::State::Lists=$D/apt/lists" -o "Dir::Cache=$D/apt/cache" -o APT::Architecture=amd64
           -o APT::Sandbox::User=root)
        apt-get "${O[@]}" update -qq
        (cd "$D/debs" && apt-get "${O[@]}" download -qq ispc libllvm19 libc6 libstdc++6 libgcc-s1 libedit2 \
            libffi8 libxml2 libz3-4 libzstd1 zlib1g libbsd0 libmd0 libtinfo6 liblzma5 libicu76)
        for f in "$D"/debs/*.deb; do dpkg -x "$f" "$D/root"; done
        rm -rf "$D/debs" "$D/apt"
        loader=
        for l in "$D"/root/usr/lib64/ld-linux-x86-64.so.2 "$D"/root/lib64/ld-linux-x86-64.so.2; do
            [ -e "$l" ] && { loader=$l; break; }
        done
        [ -n "$loader" ] || die "the unpacked trixie libc has no loader"
        cat > "$TC/bin/ispc" <<WRAP
#!/bin/sh
# ISPC from Debian trixie, run with its own libraries and loader (installed by ci/setup.sh).
R="$D/root"
exec "$loader" --library-path "\$R/usr/lib/x86_64-linux-gnu:\$R/lib/x86_64-linux-gnu" "\$R/usr/bin/ispc" "\$@"
WRAP
        chmod +x "$TC/bin/ispc"
    else
        die "${PRETTY_NAME:-this system} packages no ISPC >= $ISPC_MIN (candidate: ${cand:-none}); unpack ISPC's release archive and link its bin/ispc to $TC/bin/ispc (or set ISPC)"
    fi
    v=$(ispc_version "$TC/bin/ispc" || true)
    [ -n "$v" ] && ver_ge "$v" "$ISPC_MIN" || die "ISPC installed but $TC/bin/ispc does not run"
    say "ISPC $v ready"
fi

# --- nvcc 13.0 -----------------------------------------------------------------------------
if "$TC/bin/nvcc" --version 2>/dev/null | grep -q "release 13.0,"; then
    say "nvcc 13.0 present"
else
    as_root "nvcc $CUDA_VERSION"
    say "installing nvcc $CUDA_VERSION into $TC/cuda"
    rm -rf "$TC/cuda"
    python3 -m venv "$TC/cuda"
    "$TC/cuda/bin/pip" install -q --disable-pip-version-check \
        "nvidia-cuda-nvcc==$CUDA_VERSION" "nvidia-cuda-crt==$CUDA_VERSION" "nvidia-nvvm==$CUDA_VERSION" \
        "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" "nvidia-cuda-cccl==$CUDA_CCCL_VERSION"
    real=$(find "$TC/cuda" -path '*/nvidia/cu13/bin/nvcc' -type f | head -n1)
    [ -n "$real" ] || die "the nvcc wheel installed no nvidia/cu13/bin/nvcc"
    # A wrapper, not a link: nvcc finds its headers and tools relative to its own path.
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$real" > "$TC/bin/nvcc"
    chmod +x "$TC/bin/nvcc"
    "$TC/bin/nvcc" --version | grep -q "release 13.0," || die "nvcc installed but does not run"
    say "nvcc $CUDA_VERSION ready"
fi
say "toolchain ready in $TC"
