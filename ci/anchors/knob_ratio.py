#!/usr/bin/env python3
"""Ranks the knob sets of one gemm_knobs.sh run against its defaults.

Usage: knob_ratio.py LOGDIR KNOBS [MIN]

LOGDIR holds gemm_knobs.sh's k1.log, k2.log, ... (criterion output, one per knob set, in the
order of KNOBS, a ";"-separated list where "default" names no knobs). For every set it prints,
to stderr, the geometric mean of its throughputs over the shapes all sets measured, divided by
the mean of the default runs' geometric means, one ratio per run of the set. On stdout it prints
the set whose worst ratio is highest, if that worst ratio is at least MIN (default 1.04), and
nothing otherwise, so that a script can run the winner end to end.
"""
import math
import re
import sys

SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
# Criterion pads the numbers in brackets with spaces ("[ 12113 Gelem/s  12639 Gelem/s ...]").
THRPT = re.compile(r"thrpt:\s*\[\s*\S+ \S+\s+(\S+) ([KMGT]?)i?(?:elem|B)/s")


def medians(path):
    """Criterion's median throughput per benchmark id in one log."""
    vals, name = {}, None
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return vals
    for line in lines:
        if line.startswith("cpu_"):
            name = line.split()[0]
        m = THRPT.search(line)
        if m and name:
            vals[name] = float(m.group(1)) * SCALE[m.group(2)]
    return vals


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    logdir, knobs = sys.argv[1], sys.argv[2].split(";")
    floor = float(sys.argv[3]) if len(sys.argv) > 3 else 1.04
    runs = [(k, medians(f"{logdir}/k{i}.log")) for i, k in enumerate(knobs, 1)]
    runs = [(k, v) for k, v in runs if v]
    if not runs:
        sys.exit(0)
    names = sorted(set.intersection(*(set(v) for _, v in runs)))
    base = [v for k, v in runs if k == "default"]
    if not names or not base:
        print("knob_ratio: no default run, or no shape that every run measured", file=sys.stderr)
        sys.exit(0)

    def gmean(v):
        return math.exp(sum(math.log(v[n]) for n in names) / len(names))

    b = sum(gmean(v) for v in base) / len(base)
    ratios = {}
    for k, v in runs:
        if k != "default":
            ratios.setdefault(k, []).append(gmean(v) / b)
    print(f"against the defaults' mean ({len(base)} runs, {len(names)} shapes):", file=sys.stderr)
    for k, r in ratios.items():
        print(f"  [{k}] {', '.join(f'{x:.3f}' for x in r)}", file=sys.stderr)
    best = max(ratios.items(), key=lambda kv: min(kv[1]), default=None)
    if best and min(best[1]) >= floor:
        print(best[0])


if __name__ == "__main__":
    main()
