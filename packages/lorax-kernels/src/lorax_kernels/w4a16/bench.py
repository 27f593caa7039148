"""w4a16 GEMM vs a bf16 matmul at Llama-3-8B projection shapes (CUDA): µs, GB/s, speed-up.

``python -m lorax_kernels.w4a16.bench`` on a GPU prints a markdown table. Group 128, act-order
off and on; M = 1 and 16 take the split-K GEMV path, 64 is a decode batch on the GEMM tiles,
512 a prefill chunk. Bytes are the weight bytes read (4-bit values + fp16 scales and zeros, vs
16-bit), which bound decode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lorax_kernels.w4a16 import pack_rows, w4a16_matmul

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}


def _time_us(fn: Callable[[], object], iters: int = 50) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


def _pair(x: torch.Tensor, w16: torch.Tensor, w4: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """µs of the bf16 matmul and of the w4a16 one on the same activations."""
    return (
        _time_us(lambda: torch.nn.functional.linear(x, w16)),
        _time_us(lambda: w4a16_matmul(x, *w4)),
    )


def run(group: int = 128) -> str:
    """One row per (projection, M, act-order)."""
    rows = [
        "| proj | M | act-order | bf16 µs | w4a16 µs | w4a16 GB/s | speed-up |",
        "|" + "---|" * 7,
    ]
    for name, (k, n) in SHAPES.items():
        qweight = pack_rows(torch.randint(0, 16, (k, n), dtype=torch.int32)).cuda()
        scales = torch.rand(k // group, n, device="cuda", dtype=torch.bfloat16) / 64
        zeros = torch.full_like(scales, 8.0)
        w16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        w4_bytes = k * n // 2 + 2 * scales.numel() * 2
        for act_order in (False, True):
            g_idx = (torch.arange(k) // group).to(torch.int32)
            if act_order:
                g_idx = g_idx[torch.randperm(k)]
            g_idx = g_idx.cuda()
            for m in (1, 16, 64, 512):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                base, quant = _pair(x, w16, (qweight, scales, zeros, g_idx))
                gbs = w4_bytes / quant / 1e3
                rows.append(
                    f"| {name} | {m} | {act_order} | {base:.1f} | {quant:.1f} | {gbs:.0f} "
                    f"| {base / quant:.2f}x |"
                )
    return "\n".join(rows)


if __name__ == "__main__":
    print(run())
