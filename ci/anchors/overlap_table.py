# ns a round per case of the amx_fma_overlap criterion group (its elem/s are rounds a second
# on each core), the rate against the round's ideal cycles, and the multiply chain's clock.
# Usage: overlap_table.py CRITERION_LOG THREADS
import re, sys
units = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}
name = None
for line in open(sys.argv[1]):
    m = re.match(r"^amx_fma_overlap/(\S+)", line.strip())
    if m:
        name = m.group(1)
    m = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+) ", line)
    if m and name:
        rate = float(m.group(1)) * units[m.group(2)]
        ns = 1e9 / rate
        f, t, c = [int(x[1:]) for x in name.split("_")]
        ideal = max(f / 2, 16 * t, 3 * c)
        ghz = f" chain clock {3 * c / ns:.2f} GHz" if c else ""
        print(f"{sys.argv[2]:>3} thr  F {f:5} T {t:2} C {c:3}: {ns:8.2f} ns a round, {ideal / ns:.2f} GHz-equivalent of its ideal {ideal:.0f} cycles{ghz}")
        name = None
