#!/usr/bin/env bash
# How the AMX tiles scale with threads, and the cores' clock meanwhile: for 1, 2, 4, 8, 12 and
# 16 threads, the tile products alone (amx_ceiling/tdp_bf16) and the 2 × 2 kernel with its
# operands in each core's own L1 (amx_ceiling/l1), two rounds, GFLOP/s (criterion medians).
# During each run the cores' average clock is read twice: from APERF/MPERF (MSRs 0xE8/0xE7
# through /dev/cpu/N/msr; needs root and the msr module, often absent in a VM) and from
# /proc/cpuinfo's "cpu MHz" (which some VMs report as a constant). On the GPU host the kernel
# from L1 stopped at 6-8 TFLOP/s from 4 threads on while the products alone scaled to 12
# (docs/BENCHMARKS.md, fifteenth session); a clock that falls with the threads says power.
# Each call runs STEPS K steps a thread (65536 by default, about 2 ms: the pool's hand-off is
# then a small part of it; the fifteenth session's figures used 4096). Then, to tell whether
# some of the VM's cores share a physical core (a shared L1 and tile unit, which `lscpu` may not
# show), `l1` runs on two threads pinned to CPU 0 and CPU j for every other j (`taskset`; the
# pool pins its threads to the CPUs it is allowed): a pair that shares a core runs at about half
# the others' rate. Run from the folder ci/build-device.sh wrote; logs under $OUT. THREADS
# overrides the list of thread counts, PAIRS=0 skips the pair scan.
set -u
here=$(cd "$(dirname "$0")/.." && pwd); L=${OUT:-/tmp}/amx_scaling; mkdir -p "$L"
modprobe msr 2>/dev/null
clock() { # seconds: prints "aperf/mperf GHz-equivalent ratio; cpuinfo MHz mean (min..max)"
  python3 - "$1" <<'PY'
import glob, os, struct, sys, time
def msr(cpu, reg):
    try:
        fd = os.open(f"/dev/cpu/{cpu}/msr", os.O_RDONLY)
        try:
            return struct.unpack("<Q", os.pread(fd, 8, reg))[0]
        finally:
            os.close(fd)
    except OSError:
        return None
cpus = sorted(int(p.split("/")[-1][3:]) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*"))
a0 = {c: (msr(c, 0xE8), msr(c, 0xE7)) for c in cpus}
mhz = []
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        mhz += [float(l.split(":")[1]) for l in open("/proc/cpuinfo") if l.startswith("cpu MHz")]
    except (OSError, ValueError, IndexError):
        pass
    time.sleep(0.1)
a1 = {c: (msr(c, 0xE8), msr(c, 0xE7)) for c in cpus}
r = []
for c in cpus:
    (ap0, mp0), (ap1, mp1) = a0[c], a1[c]
    if None not in (ap0, mp0, ap1, mp1) and mp1 > mp0:
        r.append((ap1 - ap0) / (mp1 - mp0))
out = []
out.append(f"APERF/MPERF {min(r):.2f}..{max(r):.2f} of the base clock" if r else "APERF/MPERF unreadable")
out.append(f"cpuinfo {sum(mhz) / len(mhz):.0f} MHz ({min(mhz):.0f}..{max(mhz):.0f})" if mhz else "cpuinfo no MHz")
print("; ".join(out))
PY
}
steps=${STEPS:-65536}
echo "idle: $(clock 1)"
echo "topology: $(cat /sys/devices/system/cpu/cpu*/topology/thread_siblings_list 2>/dev/null | sort -u | tr '\n' ' ')"
rate() { awk '/thrpt:  \[ *[0-9]/ {printf "%s %s", $(NF-3), $(NF-2)}' "$1"; }
for r in 1 2; do
  for t in ${THREADS:-1 2 4 8 12 16}; do
    for k in tdp_bf16 l1; do
      log="$L/r${r}_t${t}_$k.log"
      GEMM_CEILING_STEPS=$steps TANDEM_THREADS=$t GEMM_GROUPS=ceiling timeout 60 \
        "$here/benches/amx_kernels__gemm" --bench "amx_ceiling/$k\$" \
        --warm-up-time 1 --measurement-time 2 > "$log" 2>&1 &
      pid=$!
      sleep 1.5; c=$(clock 1.5); wait $pid
      echo "round $r, $t thread(s), $k, $steps steps: $(rate "$log"); $c"
    done
  done
done
for k in tdp_bf16 l1; do # the old call length, 16 threads, for comparison
  log="$L/short_t16_$k.log"
  GEMM_CEILING_STEPS=4096 TANDEM_THREADS=16 GEMM_GROUPS=ceiling timeout 60 \
    "$here/benches/amx_kernels__gemm" --bench "amx_ceiling/$k\$" \
    --warm-up-time 1 --measurement-time 2 > "$log" 2>&1
  echo "16 threads, $k, 4096 steps: $(rate "$log")"
done
if [ "${PAIRS:-1}" != 0 ]; then
  n=$(nproc)
  for j in $(seq 1 $((n - 1))); do
    log="$L/pair_0_$j.log"
    GEMM_CEILING_STEPS=$steps TANDEM_THREADS=2 GEMM_GROUPS=ceiling timeout 30 taskset -c 0,$j \
      "$here/benches/amx_kernels__gemm" --bench 'amx_ceiling/l1$' \
      --warm-up-time 0.5 --measurement-time 1 > "$log" 2>&1
    echo "pair 0,$j: l1 $(rate "$log")"
  done
fi
