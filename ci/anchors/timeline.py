#!/usr/bin/env python3
"""Summarises a TANDEM_TIMELINE=FILE run of `tandem bench` (one JSON object per step, spans
in ms from the step's start): per decode step, where the host and the copy engine spent it.

usage: python3 timeline.py FILE [--skip N] [--detail STEP]

Columns (means over the decode steps after the first N, default 2):
  wall       host time from the step's start to its tokens
  cpu        CPU layers' spans (their own work + waiting for a residual)
  res_wait   of which waiting for a residual (the GPU layer before them)
  host_gap   host time in no CPU layer (GPU layers' submission, waits for them, the head)
  copies     PCIe copies' durations (this step's and those queued for the next)
  pcie_idle  time inside [first copy start, last copy end] with no copy running
  gpu        GPU layers' compute (from its weights arriving to its last kernel)
and which side was the longer: the CPU's own work (cpu - res_wait) or the copies.
"""
import json
import statistics
import sys


def union_len(spans):
    tot, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                tot += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        tot += cur_e - cur_s
    return tot


def summary(st):
    cpu = st["cpu"]
    copies = [(a, b) for _, a, b in st["copies"]]
    wall = st["host_end_ms"]
    cpu_t = sum(b - a for _, a, b, _ in cpu)
    res = sum(w for *_, w in cpu)
    cp = sum(b - a for a, b in copies)
    idle = 0.0
    if copies:
        lo, hi = min(a for a, _ in copies), max(b for _, b in copies)
        idle = (hi - lo) - union_len(copies)
    gpu = sum(b - a for _, a, b in st["gpu"])
    return dict(wall=wall, cpu=cpu_t, res_wait=res, host_gap=wall - cpu_t, copies=cp,
                pcie_idle=idle, gpu=gpu, n_cpu=len(cpu), n_copies=len(copies))


def main():
    args = sys.argv[1:]
    skip, detail = 2, None
    if "--skip" in args:
        i = args.index("--skip"); skip = int(args[i + 1]); del args[i:i + 2]
    if "--detail" in args:
        i = args.index("--detail"); detail = int(args[i + 1]); del args[i:i + 2]
    steps = [json.loads(l) for l in open(args[0])]
    dec = [s for s in steps if not s["prefill"]][skip:]
    if not dec:
        print("no decode steps")
        return
    rows = [summary(s) for s in dec]
    keys = ["wall", "cpu", "res_wait", "host_gap", "copies", "pcie_idle", "gpu"]
    print(f"{len(dec)} decode steps (skipped {skip}); {rows[0]['n_cpu']} CPU layers, "
          f"{rows[-1]['n_copies']} copies a step; ms, mean (min..max):")
    for k in keys:
        v = [r[k] for r in rows]
        print(f"  {k:10s} {statistics.mean(v):8.1f}  ({min(v):.1f}..{max(v):.1f})")
    # The longer side: the CPU's own work (its layers less their waits) or the copies.
    own = statistics.mean(r["cpu"] - r["res_wait"] for r in rows)
    cp = statistics.mean(r["copies"] for r in rows)
    wall = statistics.mean(r["wall"] for r in rows)
    side = "the copies (PCIe)" if cp > own else "the CPU"
    print(f"  longer side: {side}: CPU own work {own:.1f} ms, copies {cp:.1f} ms, "
          f"step {wall:.1f} ms ({100 * max(own, cp) / wall:.0f}% of it)")
    if detail is not None:
        st = dec[min(detail, len(dec) - 1)]
        ev = [(a, b, f"cpu {l}" + (f" (res wait {w:.1f})" if w > 0.05 else "")) for l, a, b, w in st["cpu"]]
        ev += [(a, b, f"  gpu {l}") for l, a, b in st["gpu"]]
        ev += [(a, b, f"      copy {l}") for l, a, b in st["copies"]]
        for a, b, what in sorted(ev):
            print(f"  {a:8.1f} {b:8.1f} {b - a:6.1f}  {what}")


if __name__ == "__main__":
    main()
