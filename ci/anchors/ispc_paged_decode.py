#!/usr/bin/env python3
"""PyTorch CPU anchors for ispc-kernels' paged decode attention (bench `cpu_paged_decode_bf16`).

Same shapes as the Rust bench (LLaMA-3-8B attention: 32 query heads, 8 KV heads, head_dim 128,
blocks of 16 tokens, bf16 KV, block tables that interleave the sequences' blocks), same bytes:
  (a) DRAM read bandwidth, PyTorch's best streaming readers over 1 GiB: an fp32 sum and a bf16
      GEMV (the Rust bench's `cpu_read_bf16`, a plain parallel read on tandem's pool, is the
      ceiling the kernel is held to; these are a cross-check);
  (b) decode attention in PyTorch: gather the blocks (index_select), then bmm + softmax + bmm,
      or scaled_dot_product_attention, GQA by viewing q as [kv_head, batch, group, d].
Prints one line per case: GB/s of KV read (KV bytes / best time). 16 threads unless
ANCHOR_THREADS is set.
"""
import os
import time

import torch
import torch.nn.functional as F

THREADS = int(os.environ.get("ANCHOR_THREADS", "16"))
torch.set_num_threads(THREADS)
QH, KVH, D, BS = 32, 8, 128, 16
G = QH // KVH
SCALE = D ** -0.5
CASES = [(256, 1024), (64, 4096), (16, 16384), (2, 131072)]  # (batch, context): 1 GiB of KV each
REPS = 5


def best_time(fn, reps=REPS):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), sorted(ts)[len(ts) // 2]


def read_bandwidth():
    n = 1 << 30
    x = torch.rand(n // 4, dtype=torch.float32)
    t, _ = best_time(lambda: x.sum())
    print(f"read  torch fp32 sum        1.00 GiB  {n / t / 1e9:7.1f} GB/s")
    del x
    w = torch.rand(n // 2 // 4096, 4096).to(torch.bfloat16)
    v = torch.rand(4096).to(torch.bfloat16)
    t, _ = best_time(lambda: torch.mv(w, v))
    print(f"read  torch bf16 GEMV       1.00 GiB  {n / t / 1e9:7.1f} GB/s")


def decode_case(batch, ctx):
    nb = ctx // BS
    blocks = batch * nb
    kc = torch.empty(blocks, KVH, BS, D, dtype=torch.bfloat16).uniform_(-1, 1)
    vc = torch.empty_like(kc).uniform_(-1, 1)
    # tables[i][pos] = pos * batch + i: the sequences' blocks interleaved, as in the Rust bench.
    tables = (torch.arange(nb).unsqueeze(0) * batch + torch.arange(batch).unsqueeze(1)).flatten()
    q = torch.empty(batch, QH, D, dtype=torch.bfloat16).uniform_(-1, 1)
    kv_bytes = 2 * batch * ctx * KVH * D * 2

    def gather(cache):
        # [kvh, batch·nb, 16, d] -> [kvh, batch, ctx, d]
        return cache.permute(1, 0, 2, 3).index_select(1, tables).view(KVH, batch, ctx, D)

    qg = q.view(batch, KVH, G, D).permute(1, 0, 2, 3)

    def bmm():
        k, v = gather(kc), gather(vc)
        s = torch.matmul(qg, k.transpose(-1, -2)).float() * SCALE
        p = torch.softmax(s, dim=-1).to(torch.bfloat16)
        return torch.matmul(p, v)

    def sdpa():
        return F.scaled_dot_product_attention(qg, gather(kc), gather(vc), scale=SCALE)

    a, b = bmm().float(), sdpa().float()
    assert (a - b).abs().max().item() < 0.05, "bmm and SDPA disagree"
    name = f"b{batch}_ctx{ctx // 1024}k"
    for label, fn in [("gather+bmm", bmm), ("gather+sdpa", sdpa)]:
        t, med = best_time(fn, 3)
        print(f"torch {label:<12} {name:<14} {kv_bytes / 2**30:5.2f} GiB  {kv_bytes / t / 1e9:7.1f} GB/s"
              f"  (best {t * 1e3:.1f} ms, median {med * 1e3:.1f} ms)")


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    read_bandwidth()
    for batch, ctx in CASES:
        decode_case(batch, ctx)


if __name__ == "__main__":
    main()
