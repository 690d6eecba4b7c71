#!/usr/bin/env python3
"""PyTorch anchors for the cuda-kernels benches, on the same shapes, in the same run:
HBM device-to-device copy bandwidth (the ceiling of the memory-bound kernels), torch SDPA
(flash and cuDNN backends) for causal prefill and for GQA decode over a dense KV cache, and
torch.matmul (x @ w.T, bf16) for the linear shapes. Prints one `anchor NAME VALUE UNIT` line
each. Timing: CUDA events around a batch of calls, median of 5 batches, after a warm-up."""
import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

dev = "cuda"
torch.manual_seed(0)


def timed(fn, target_s=0.15):
    fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    fn()
    e1.record()
    torch.cuda.synchronize()
    one = max(e0.elapsed_time(e1) / 1e3, 1e-6)
    iters = max(3, min(1000, int(target_s / one)))
    times = []
    for _ in range(5):
        e0.record()
        for _ in range(iters):
            fn()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) / 1e3 / iters)
    times.sort()
    return times[2]


def show(name, value, unit):
    print(f"anchor {name} {value:.2f} {unit}", flush=True)


print(f"anchor-device {torch.cuda.get_device_name(0)} torch {torch.__version__}", flush=True)

# HBM copy: 512 MiB, bytes read + written.
n = 256 << 20
a = torch.randn(n, device=dev, dtype=torch.bfloat16)
b = torch.empty_like(a)
t = timed(lambda: b.copy_(a))
show("hbm_copy", 2 * 2 * n / t / 1e12, "TB/s")
del a, b

# Prefill: causal SDPA, batch 1, 32 heads x 128, as gpu_prefill_bf16/1xS_h32_kv32_d128;
# 8 x 1024 with 32 q / 8 kv heads, as gpu_prefill_bf16/8x1024_h32_kv8_d128; 4096 with heads of 64.
for bsz, s, hq, hkv, d in [(1, 1024, 32, 32, 128), (1, 2048, 32, 32, 128), (1, 4096, 32, 32, 128),
                           (1, 8192, 32, 32, 128), (8, 1024, 32, 8, 128), (1, 4096, 32, 32, 64)]:
    q = torch.randn(bsz, hq, s, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(bsz, hkv, s, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn(bsz, hkv, s, d, device=dev, dtype=torch.bfloat16)
    flops = bsz * 2 * s * s * hq * d
    # "default": whatever backend torch picks on its own for these inputs.
    for name, backend in [("default", None), ("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
        try:
            with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hq != hkv))
            show(f"sdpa_prefill_{name}/{bsz}x{s}_h{hq}_kv{hkv}_d{d}", flops / t / 1e12, "TFLOP/s")
        except RuntimeError as e:
            print(f"anchor-skip sdpa_prefill_{name}/{bsz}x{s}: {str(e).splitlines()[0]}", flush=True)

# Decode: one query per sequence over a dense KV cache, GQA, as gpu_paged_decode_bf16 (which
# reads a paged cache): KV bytes per second.
for bsz, ctx, hq, hkv, d in [(16, 4096, 32, 8, 128), (64, 4096, 32, 8, 128), (16, 16384, 32, 8, 128)]:
    q = torch.randn(bsz, hq, 1, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(bsz, hkv, ctx, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn(bsz, hkv, ctx, d, device=dev, dtype=torch.bfloat16)
    t = timed(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    show(f"sdpa_decode/b{bsz}_ctx{ctx}_h{hq}_kv{hkv}_d{d}", 2 * k.numel() * 2 / t / 1e12, "TB/s")
    del q, k, v

# Linear: x[M, K] @ w[N, K].T, as gpu_linear_bf16/MxNxK.
for m, nn, kk, bias in [
    (16, 6144, 4096, False),
    (16, 28672, 4096, False),
    (16, 4096, 14336, False),
    (4096, 6144, 4096, False),
    (4096, 28672, 4096, False),
    (4096, 4096, 14336, False),
    (8192, 8192, 8192, False),
    (4096, 28672, 7168, True),
]:
    x = torch.randn(m, kk, device=dev, dtype=torch.bfloat16)
    w = torch.randn(nn, kk, device=dev, dtype=torch.bfloat16)
    bb = torch.randn(nn, device=dev, dtype=torch.bfloat16)
    if bias:
        t = timed(lambda: F.linear(x, w, bb).relu_())
    else:
        t = timed(lambda: torch.matmul(x, w.t()))
    show(f"torch_matmul/{m}x{nn}x{kk}{'_bias_relu' if bias else ''}", 2 * m * nn * kk / t / 1e12, "TFLOP/s")
