#!/usr/bin/env python3
"""Anchor for the CPU GEMM benches: torch (oneDNN, AMX in bf16) on the same shapes and
epilogues as crates/amx-kernels/benches/gemm.rs, 16 threads, printed side by side with our
criterion results (bf16 and int8) when their folder is given.

    python3 anchors/amx_gemm.py [CRITERION_DIR]

ANCHOR_SHAPES=llama3-8b.o,opt-30b.fc1 and ANCHOR_MS=128,512 restrict the rows timed.

Ours: median of the criterion samples. Torch: median of timed repetitions after warm-up.
GB/s is the bf16 weight (N·K·2 bytes) over the time: the weight-streaming rate at small M.
"""
import glob
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("TANDEM_THREADS", "16")))
MS = [1, 8, 32, 64, 128, 512, 2048]
SHAPES = [
    ("llama3-8b.qkv", 6144, 4096, "plain"),
    ("llama3-8b.o", 4096, 4096, "plain"),
    ("llama3-8b.gate_up", 2 * 14336, 4096, "silu_mul"),
    ("llama3-8b.down", 4096, 14336, "plain"),
    ("opt-30b.qkv", 3 * 7168, 7168, "bias"),
    ("opt-30b.out", 7168, 7168, "bias_residual"),
    ("opt-30b.fc1", 28672, 7168, "bias_relu"),
    ("opt-30b.fc2", 7168, 28672, "bias_residual"),
]


def selected(var, item):
    v = os.environ.get(var)
    return v is None or str(item) in [x.strip() for x in v.split(",")]


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
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, oneDNN bf16")
    if crit:
        hits = glob.glob(os.path.join(crit, "cpu_dram_read", "u64", "new", "estimates.json"))
        if hits:
            dram = json.load(open(hits[0]))["median"]["point_estimate"] * 1e-9
            print(f"DRAM read (ours, 2 GiB, pool): {2**31 / dram / 1e9:.1f} GB/s")
    print(f"{'shape':18} {'M':>5} | {'ms bf16':>8} {'ms int8':>8} {'ms torch':>8} | {'TF bf16':>7} {'TF int8':>7} {'TF torch':>8} "
          f"| {'bf16/torch':>10} {'int8/torch':>10} {'int8/bf16':>9} | {'GB/s bf16':>9} {'GB/s torch':>10}")
    for name, n, k, kind in SHAPES:
        if not selected("ANCHOR_SHAPES", name):
            continue
        w = torch.randn(n, k, dtype=torch.bfloat16)
        b = torch.randn(n, dtype=torch.bfloat16)
        wbytes = n * k * 2
        for m in MS:
            if not selected("ANCHOR_MS", m):
                continue
            x = torch.randn(m, k, dtype=torch.bfloat16)
            out_cols = n // 2 if kind == "silu_mul" else n
            h = torch.randn(m, out_cols, dtype=torch.bfloat16)
            if kind == "plain":
                fn = lambda: F.linear(x, w)
            elif kind == "silu_mul":
                def fn():
                    g, u = F.linear(x, w).chunk(2, dim=-1)
                    return F.silu(g) * u
            elif kind == "bias":
                fn = lambda: F.linear(x, w, b)
            elif kind == "bias_relu":
                fn = lambda: F.relu(F.linear(x, w, b))
            else:
                fn = lambda: h.add_(F.linear(x, w, b))
            with torch.no_grad():
                tt = timeit(fn)
            tb, ti = ours(crit, "cpu_gemm_bf16", name, m), ours(crit, "cpu_gemm_int8", name, m)
            flop = 2 * m * n * k
            f = lambda t, fmt, v: (fmt % v) if t else "-"
            print(f"{name:18} {m:5d} | {f(tb, '%8.3f', (tb or 0) * 1e3):>8} {f(ti, '%8.3f', (ti or 0) * 1e3):>8} {tt * 1e3:8.3f} | "
                  f"{f(tb, '%7.2f', flop / (tb or 1) / 1e12):>7} {f(ti, '%7.2f', flop / (ti or 1) / 1e12):>7} {flop / tt / 1e12:8.2f} | "
                  f"{f(tb, '%10.2f', tt / (tb or 1)):>10} {f(ti, '%10.2f', tt / (ti or 1)):>10} {f(tb and ti, '%9.2f', (tb or 1) / (ti or 1)):>9} | "
                  f"{f(tb, '%9.1f', wbytes / (tb or 1) / 1e9):>9} {wbytes / tt / 1e9:10.1f}", flush=True)
        del w


if __name__ == "__main__":
    main()
