#!/usr/bin/env python3
"""Anchor for the CPU attention benches: torch.nn.functional.scaled_dot_product_attention on
the CPU (bf16, causal, GQA) on the shapes of crates/amx-kernels/benches/attention.rs
(LLaMA-3-8B heads: 32 q, 8 kv, head_dim 128), 16 threads, side by side with our criterion
results when their folder is given.

    python3 anchors/amx_attention.py [CRITERION_DIR]
"""
import glob
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("TANDEM_THREADS", "16")))
H, HK, D = 32, 8, 128
LENS = [512, 1024, 2048, 4096, 8192]


def timeit(fn, min_s=0.3, min_reps=3):
    fn()
    ts = []
    t_end = time.perf_counter() + min_s
    while len(ts) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def ours(crit, name, param):
    if not crit:
        return None
    hits = glob.glob(os.path.join(crit, "cpu_attention_bf16", name, str(param), "new", "estimates.json"))
    return json.load(open(hits[0]))["median"]["point_estimate"] * 1e-9 if hits else None


def main():
    crit = sys.argv[1] if len(sys.argv) > 1 else None
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, SDPA bf16 causal GQA {H}/{HK} heads, head_dim {D}")
    print(f"{'case':16} | {'ours ms':>9} {'torch ms':>9} | {'ours TF/s':>9} {'torch TF/s':>10} | {'ours/torch':>10}")
    with torch.no_grad():
        for l in LENS:
            q = torch.randn(1, H, l, D, dtype=torch.bfloat16)
            k = torch.randn(1, HK, l, D, dtype=torch.bfloat16)
            v = torch.randn(1, HK, l, D, dtype=torch.bfloat16)
            tt = timeit(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
            to = ours(crit, "prefill", l)
            flop = 2 * 2 * D * H * l * (l + 1) / 2
            print(f"{'prefill ' + str(l):16} | {to * 1e3 if to else float('nan'):9.2f} {tt * 1e3:9.2f} | "
                  f"{flop / to / 1e12 if to else float('nan'):9.2f} {flop / tt / 1e12:10.2f} | {tt / to if to else float('nan'):10.2f}", flush=True)
        nseq, ctx = 16, 2048
        q = torch.randn(nseq, H, 1, D, dtype=torch.bfloat16)
        k = torch.randn(nseq, HK, ctx, D, dtype=torch.bfloat16)
        v = torch.randn(nseq, HK, ctx, D, dtype=torch.bfloat16)
        tt = timeit(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        to = ours(crit, "decode16x", ctx)
        kv_bytes = 2 * k.numel() * 2
        print(f"{'decode 16x2048':16} | {to * 1e3 if to else float('nan'):9.2f} {tt * 1e3:9.2f} | "
              f"{'GB/s':>4} {kv_bytes / to / 1e9 if to else float('nan'):6.1f} {kv_bytes / tt / 1e9:8.1f}   | {tt / to if to else float('nan'):10.2f}")


if __name__ == "__main__":
    main()
