"""Decode GEMMs at a few hundred rows, Llama-3-8B shapes: cuBLAS (``F.linear``) vs the stream-K
Triton GEMM (``lorax_kernels.dense_gemm``).

    PYTHONPATH=packages/lorax-kernels/src python3 packages/lorax-kernels/benchmarks/bench_dense_gemm.py [--rows 64,128,256]

For each projection (fused qkv, o, fused gate_up, down, lm_head) and row count: µs per call and
TFLOP/s for cuBLAS and for each candidate tiling of the stream-K kernel, then per row count the
layer's four projections plus a 32nd of the lm_head summed (the per-layer share of a decode
step's GEMM time) per tiling, and the best tiling per shape. Each point is a CUDA graph of calls
on rotating weights (several hundred MB), so weights are not served from L2; the bf16 matmul
rate of a large square product is measured in the same process.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import markdown_table, matmul_tflops, time_graph_us

from lorax_kernels.dense_gemm.streamk import DEFAULT_CONFIG, StreamKConfig, streamk_gemm

SHAPES = {
    "qkv": (4096, 6144),
    "o": (4096, 4096),
    "gate_up": (4096, 28672),
    "down": (14336, 4096),
    "lm_head": (4096, 128256),
}
LAYERS = 32
ROTATE_BYTES = 512 << 20
DT = torch.bfloat16

CANDIDATES = [
    DEFAULT_CONFIG,
    StreamKConfig(block_m=128, block_n=256, block_k=64, warps=8, stages=4),
    StreamKConfig(block_m=128, block_n=128, block_k=64, warps=4, stages=4),
    StreamKConfig(block_m=128, block_n=128, block_k=64, warps=8, stages=4),
    StreamKConfig(block_m=128, block_n=128, block_k=128, warps=8, stages=3),
    StreamKConfig(block_m=64, block_n=256, block_k=64, warps=4, stages=4),
    StreamKConfig(block_m=64, block_n=128, block_k=64, warps=4, stages=4),
    StreamKConfig(block_m=256, block_n=128, block_k=64, warps=8, stages=3),
    StreamKConfig(block_m=128, block_n=256, block_k=64, warps=8, stages=3, tma=True),
    StreamKConfig(block_m=128, block_n=256, block_k=64, warps=8, stages=4, tma=True),
    StreamKConfig(block_m=128, block_n=128, block_k=64, warps=8, stages=4, tma=True),
    StreamKConfig(block_m=128, block_n=128, block_k=64, warps=4, stages=4, tma=True),
]


def _calls(rows: int, k: int, n: int, fn: Callable) -> list[Callable[[], object]]:
    copies = max(2, min(8, ROTATE_BYTES // (2 * n * k)))
    ws = [torch.randn(n, k, device="cuda", dtype=DT) / k**0.5 for _ in range(copies)]
    xs = [torch.randn(rows, k, device="cuda", dtype=DT) for _ in range(copies)]
    return [lambda x=x, w=w: fn(x, w) for x, w in zip(xs, ws, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="64,128,192,256")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()
    rows_list = [int(r) for r in args.rows.split(",")]
    shapes = args.shapes.split(",")
    t0 = time.time()
    peak = matmul_tflops()
    print(f"bf16 8192^3 matmul: {peak:.0f} TFLOP/s\n")
    kinds: list[tuple[str, StreamKConfig | None]] = [("cublas", None)]
    kinds += [
        (f"sk {c.block_m}x{c.block_n}x{c.block_k} w{c.warps} s{c.stages}{' tma' * c.tma}", c)
        for c in CANDIDATES
    ]
    for rows in rows_list:
        times: dict[tuple[str, str], float] = {}
        table = []
        for shape in shapes:
            k, n = SHAPES[shape]
            flops = 2 * rows * n * k
            for name, cfg in kinds:
                if cfg is not None and cfg.block_m > 2 * rows:
                    continue
                fn = (
                    (lambda x, w: F.linear(x, w))
                    if cfg is None
                    else (lambda x, w, cfg=cfg: streamk_gemm(x, w, None, config=cfg))
                )
                try:
                    us = time_graph_us(_calls(rows, k, n, fn))
                except Exception as e:  # one tiling that fails to compile or launch: skip it
                    print(f"{shape} {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                times[shape, name] = us
                table.append([shape, name, us, flops / us / 1e6, 100 * flops / us / 1e6 / peak])
        print(f"## {rows} rows\n")
        print(markdown_table(["shape", "kernel", "µs", "TFLOP/s", "% of matmul"], table))
        layer = []
        for name, _ in kinds:
            if all((s, name) in times for s in shapes):
                per_layer = sum(times[s, name] / (LAYERS if s == "lm_head" else 1) for s in shapes)
                layer.append([name, per_layer, per_layer * LAYERS / 1e3])
        print("\nper layer (four projections + lm_head / 32):\n")
        print(markdown_table(["kernel", "µs a layer", "ms a step"], layer))
        best = []
        for s in shapes:
            options = [(times[s, nm], nm) for nm, _ in kinds if (s, nm) in times]
            us, nm = min(options)
            best.append([s, nm, us, times[s, "cublas"], times[s, "cublas"] / us])
        print("\nbest per shape:\n")
        print(markdown_table(["shape", "best", "µs", "cuBLAS µs", "speed-up"], best), flush=True)
        print()
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
