#!/usr/bin/env python3
"""Anchor for the CPU GEMM benches: torch (oneDNN, AMX in bf16) on the same shapes and
epilogues as crates/amx-kernels/benches/gemm.rs, 16 threads, printed side by side with our
criterion results when their folder is given.

    python3 anchors/amx_gemm.py [CRITERION_DIR] [--int8]

Ours: median of the criterion samples. Torch: median of timed repetitions after warm-up.
"""
import glob
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("TANDEM_THREADS", "16")))
MS = [1, 8, 32, 128, 512, 2048]
SHAPES = [
    ("llama3-8b.qkv", 6144, 4096, "plain"),
    ("llama3-8b.o", 4096, 4096, "plain"),
    ("llama3-8b.gate_up", 2 * 14336, 4096, "silu_mul"),
    ("llama3-8b.down", 4096, 14336, "plain"),
    ("opt-30b.fc1", 28672, 7168, "bias_relu"),
    ("opt-30b.fc2", 7168, 28672, "bias_residual"),
]


def timeit(fn, min_s=0.3, min_reps=3):
    for _ in range(2):
        fn()
    ts = []
    t_end = time.perf_counter() + min_s
    while len(ts) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        if len(ts) >= 200:
            break
    ts.sort()
    return ts[len(ts) // 2]


def ours(crit, group, name, m):
    if not crit:
        return None
    pat = os.path.join(crit, group, name, str(m), "new", "estimates.json")
    hits = glob.glob(pat)
    if not hits:
        return None
    with open(hits[0]) as f:
        return json.load(f)["median"]["point_estimate"] * 1e-9


def main():
    crit = next((a for a in sys.argv[1:] if not a.startswith("--")), None)
    group = "cpu_gemm_int8" if "--int8" in sys.argv else "cpu_gemm_bf16"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, oneDNN bf16; ours: {group}")
    dram = ours(crit, "cpu_dram_read", "u64", "")
    if dram is None and crit:
        hits = glob.glob(os.path.join(crit, "cpu_dram_read", "u64", "new", "estimates.json"))
        if hits:
            dram = json.load(open(hits[0]))["median"]["point_estimate"] * 1e-9
    if dram:
        print(f"DRAM read (ours, 2 GiB, pool): {2**31 / dram / 1e9:.1f} GB/s")
    hdr = f"{'shape':20} {'M':>5} {'ours ms':>9} {'torch ms':>9} {'ours/torch':>10} {'ours TF/s':>9} {'torch TF/s':>10} {'ours GB/s':>9} {'torch GB/s':>10}"
    print(hdr)
    for name, n, k, kind in SHAPES:
        w = torch.randn(n, k, dtype=torch.bfloat16)
        b = torch.randn(n, dtype=torch.bfloat16)
        wbytes = n * k * 2
        for m in MS:
            x = torch.randn(m, k, dtype=torch.bfloat16)
            out_cols = n // 2 if kind == "silu_mul" else n
            h = torch.randn(m, out_cols, dtype=torch.bfloat16)
            if kind == "plain":
                fn = lambda: F.linear(x, w)
            elif kind == "silu_mul":
                def fn():
                    g, u = F.linear(x, w).chunk(2, dim=-1)
                    return F.silu(g) * u
            elif kind == "bias_relu":
                fn = lambda: F.relu(F.linear(x, w, b))
            else:
                fn = lambda: h.add_(F.linear(x, w, b))
            with torch.no_grad():
                tt = timeit(fn)
            to = ours(crit, group, name, m)
            flop = 2 * m * n * k
            cells = [f"{name:20} {m:5d}", f"{to * 1e3:9.3f}" if to else f"{'-':>9}", f"{tt * 1e3:9.3f}",
                     f"{tt / to:10.2f}" if to else f"{'-':>10}",
                     f"{flop / to / 1e12:9.2f}" if to else f"{'-':>9}", f"{flop / tt / 1e12:10.2f}",
                     f"{wbytes / to / 1e9:9.1f}" if to else f"{'-':>9}", f"{wbytes / tt / 1e9:10.1f}"]
            print(" ".join(cells), flush=True)
        del w


if __name__ == "__main__":
    main()
