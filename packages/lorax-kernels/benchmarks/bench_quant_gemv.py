"""Quantized decode matmuls at Llama-3-8B projection shapes: bf16 cuBLAS vs fp8 and w4a16.

    PYTHONPATH=packages/lorax-kernels/src python3 packages/lorax-kernels/benchmarks/bench_quant_gemv.py [--sweep]

For each projection (fused qkv, o, fused gate_up, down) and M in 1, 4, 16, 64 tokens: µs per call,
GB/s of weight bytes and % of the measured copy bandwidth (weight bytes bound decode), for
``F.linear`` on bf16, the fp8 GEMV (M <= 16), fp8 per-token quant + ``torch._scaled_mm`` (what
``Fp8Linear`` runs above 16 rows, shown at every M for comparison), and w4a16 (GPTQ layout,
group 128, without and with act-order). Each point is a CUDA graph of calls on rotating weight
and input sets (several hundred MB), so weights are not served from L2.

``--sweep``: the candidate tilings of both kernels at a few M on every shape, the total µs per
tiling, and the best one per M (to set the kernels' defaults from); ``--sweep-only`` skips the
main table (each part runs in about a minute or two on an H200).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import copy_bandwidth_gbs, markdown_table, time_graph_us

from lorax_kernels.dense_gemv import dense_gemv
from lorax_kernels.fp8_gemv import FP8, quantize_rows
from lorax_kernels.fp8_gemv.triton import Fp8GemvConfig, default_config, fp8_gemv
from lorax_kernels.w4a16.few_rows import FewRowsConfig
from lorax_kernels.w4a16.triton import DEFAULT_DECODE, W4Config, w4a16_matmul
from lorax_kernels.w4a16.triton import default_config as w4a16_default

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
GROUP = 128
ROTATE_BYTES = 384 << 20  # weight bytes per timed graph: several times the H200's 50 MB L2
DT = torch.bfloat16

FP8_CANDIDATES = [
    Fp8GemvConfig(block_n=16, block_k=512, warps=4, stages=3, waves=4, dot=False),
    Fp8GemvConfig(block_n=16, block_k=256, warps=4, stages=4, waves=8, dot=False),
    Fp8GemvConfig(block_n=8, block_k=1024, warps=4, stages=2, waves=4, dot=False),
    # More bytes in flight per program for the small shapes (qkv, o), which ran at 43-50%.
    Fp8GemvConfig(block_n=32, block_k=512, warps=8, stages=3, waves=4, dot=False),
    Fp8GemvConfig(block_n=16, block_k=1024, warps=8, stages=3, waves=4, dot=False),
    Fp8GemvConfig(block_n=16, block_k=512, warps=4, stages=4, waves=8, dot=False),
    Fp8GemvConfig(block_n=32, block_k=256, warps=4, stages=4, waves=6, dot=False),
    Fp8GemvConfig(block_n=64, block_k=256, warps=4, stages=3, waves=4, dot=True),
    Fp8GemvConfig(block_n=32, block_k=256, warps=4, stages=4, waves=8, dot=True),
    Fp8GemvConfig(block_n=128, block_k=256, warps=8, stages=3, waves=2, dot=True),
]
W4_CANDIDATES = [
    DEFAULT_DECODE,
    W4Config(block_n=64, block_k=128, warps=8, stages=3, waves=4),
    W4Config(block_n=32, block_k=128, warps=4, stages=4, waves=8),
    W4Config(block_n=128, block_k=128, warps=8, stages=3, waves=2),
    W4Config(block_n=128, block_k=64, warps=4, stages=3, waves=4),
    # The few-rows tensor-core kernel (M <= 32): a 32-column strip per warp.
    FewRowsConfig(warps=1, waves=32),
    FewRowsConfig(warps=1, waves=16),
    FewRowsConfig(warps=1, waves=8),
    FewRowsConfig(warps=2, waves=16),
    FewRowsConfig(warps=2, waves=8),
    FewRowsConfig(warps=4, waves=8),
    FewRowsConfig(warps=4, waves=4),
]


class Weights:
    """Rotating random weight sets of one ``[K -> N]`` projection in every format measured."""

    def __init__(self, k: int, n: int) -> None:
        self.k, self.n = k, n
        self.sets = max(2, -(-ROTATE_BYTES // (k * n)))  # sized by the fp8 bytes
        groups = k // GROUP
        self.w16 = [torch.randn(n, k, device="cuda", dtype=DT) / 64 for _ in range(self.sets)]
        self.fp8 = [
            ((torch.randn(n, k, device="cuda") * 64).to(FP8), torch.rand(n, device="cuda") / 1e3)
            for _ in range(self.sets)
        ]
        self.w4 = [
            (
                torch.randint(-(2**31), 2**31 - 1, (k // 8, n), device="cuda", dtype=torch.int32),
                torch.rand(groups, n, device="cuda", dtype=DT) / 64,
                torch.full((groups, n), 8.0, device="cuda", dtype=DT),
            )
            for _ in range(self.sets)
        ]
        self.perm = torch.randperm(k, device="cuda").to(torch.int32)
        self.bytes = {
            "bf16": n * k * 2,
            "fp8": n * k + 4 * n,
            "w4": n * k // 2 + 2 * groups * n * 2,
        }

    def inputs(self, m: int) -> list[torch.Tensor]:
        return [torch.randn(m, self.k, device="cuda", dtype=DT) for _ in range(self.sets)]


def _scaled_mm(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    xq, x_scale = quantize_rows(x)
    return torch._scaled_mm(  # pyright: ignore[reportPrivateImportUsage]
        xq, qweight.t(), scale_a=x_scale, scale_b=scale.view(1, -1), out_dtype=x.dtype
    )


Call = Callable[["Weights", torch.Tensor, int], object]  # (weights, x, set index)


def _time(w: Weights, xs: list[torch.Tensor], call: Call) -> float:
    """µs per call of ``call`` over the rotating sets, in one CUDA graph."""
    return time_graph_us([lambda i=i: call(w, xs[i], i) for i in range(w.sets)])


def run(copy_gbs: float, ms: tuple[int, ...] = (1, 4, 16, 64)) -> str:
    """µs, weight GB/s and % of copy bandwidth of every method at every shape and M."""
    rows = []
    for name, (k, n) in SHAPES.items():
        w = Weights(k, n)
        for m in ms:
            xs = w.inputs(m)
            base = _time(w, xs, lambda w, x, i: F.linear(x, w.w16[i]))
            points: list[tuple[str, str, float]] = [("bf16 F.linear", "bf16", base)]
            if m <= 2:
                us = _time(w, xs, lambda w, x, i: dense_gemv(x, w.w16[i]))
                points.append(("bf16 dense_gemv", "bf16", us))
            if m <= 16:
                us = _time(w, xs, lambda w, x, i: fp8_gemv(x, *w.fp8[i], None))
                points.append(("fp8 GEMV", "fp8", us))
            us = _time(w, xs, lambda w, x, i: _scaled_mm(x, *w.fp8[i]))
            points.append(("fp8 quant + _scaled_mm", "fp8", us))
            for perm, label in ((None, "w4a16 g128"), (w.perm, "w4a16 g128 act-order")):
                us = _time(w, xs, lambda w, x, i, p=perm: w4a16_matmul(x, *w.w4[i], p, GROUP))
                points.append((label, "w4", us))
            for label, fmt, us in points:
                gbs = w.bytes[fmt] / us / 1e3
                rows.append([name, m, label, us, gbs, 100 * gbs / copy_gbs, base / us])
    header = ["proj", "M", "method", "µs", "weight GB/s", "% of copy BW", "× bf16"]
    return "### Quantized matmuls (Llama-3-8B shapes, CUDA graph)\n\n" + markdown_table(
        header, rows
    )


def _sweep_call(
    kernel: str, cfg: Fp8GemvConfig | W4Config | FewRowsConfig | None, w: Weights
) -> tuple[Call, int]:
    """The call the sweep times for ``kernel`` at tiling ``cfg`` (None: cuBLAS), and its bytes."""
    if kernel == "bf16 GEMV":
        if cfg is None:
            return (lambda w, x, i: F.linear(x, w.w16[i])), w.bytes["bf16"]
        return (lambda w, x, i: fp8_gemv(x, w.w16[i], None, None, cfg)), w.bytes["bf16"]
    if isinstance(cfg, Fp8GemvConfig):
        return (lambda w, x, i: fp8_gemv(x, *w.fp8[i], None, cfg)), w.bytes["fp8"]
    return (lambda w, x, i: w4a16_matmul(x, *w.w4[i], None, GROUP, cfg)), w.bytes["w4"]


def sweep(copy_gbs: float) -> str:
    """Every candidate tiling at a few M on every shape; totals over the shapes."""
    weights = {name: Weights(k, n) for name, (k, n) in SHAPES.items()}
    out = []
    # Both kernels' tl.dot tiles are 16 rows whatever M; the fp8 GEMV's CUDA-core mode runs at
    # M <= 4, w4a16's few-rows kernel at M <= 32 (past 16 the tl.dot tiles split K up to 64).
    # "bf16 GEMV": the fp8 GEMV's tilings streaming bf16 weights (no scale), against cuBLAS at
    # M = 1,
    # the batch-1 decode shape where cuBLAS reads qkv and o at 60-70% of copy bandwidth.
    kernels = (
        ("fp8 GEMV", FP8_CANDIDATES, (1, 4, 16)),
        ("w4a16", W4_CANDIDATES, (1, 4, 16, 32)),
        ("bf16 GEMV", [None, *FP8_CANDIDATES], (1,)),
    )
    for kernel, candidates, ms in kernels:
        for m in ms:
            rows = []
            for cfg in candidates:
                if isinstance(cfg, Fp8GemvConfig) and not cfg.dot and m > 4:
                    continue  # the fp8 GEMV's CUDA-core rows unroll
                label = "cuBLAS F.linear" if cfg is None else str(cfg).split("(", 1)[1].rstrip(")")
                row: list[object] = [label]
                total = 0.0
                for w in weights.values():
                    xs = w.inputs(m)
                    call, nbytes = _sweep_call(kernel, cfg, w)
                    us = _time(w, xs, call)
                    row.append(f"{us:.1f} ({100 * nbytes / us / 1e3 / copy_gbs:.0f}%)")
                    total += us
                rows.append([*row, total])
            best = min(rows, key=lambda r: float(r[-1]))  # pyright: ignore[reportArgumentType]
            # The default per shape (the fp8 GEMV's depends on K), each tiling with its shapes.
            used: dict[str, list[str]] = {}
            for name, (k, n) in SHAPES.items():
                shape_default = {
                    "fp8 GEMV": default_config(m, k),
                    "w4a16": w4a16_default(m, k, n, GROUP, DT),
                    "bf16 GEMV": default_config(m, k, dense=True),  # the engine: cuBLAS
                }[kernel]
                used.setdefault(str(shape_default), []).append(name)
            default = "; ".join(f"{c} for {', '.join(names)}" for c, names in used.items())
            header = ["tiling", *(f"{s} µs (% BW)" for s in SHAPES), "total µs"]
            out.append(
                f"### {kernel}, M = {m} (default: {default})\n\n"
                + markdown_table(header, rows)
                + f"\n\nbest: {best[0]}\n"
            )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="also time the candidate tilings")
    ap.add_argument("--sweep-only", action="store_true", help="the sweep without the main table")
    ap.add_argument("--ms", default="1,4,16,64", help="token counts of the main table")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    copy_gbs = copy_bandwidth_gbs()
    print(f"GPU: {props.name}, {props.multi_processor_count} SMs; copy {copy_gbs:.0f} GB/s\n")
    if not args.sweep_only:
        t0 = time.time()
        print(run(copy_gbs, tuple(int(m) for m in args.ms.split(","))), flush=True)
        print(f"\n({time.time() - t0:.0f} s)\n", flush=True)
    if args.sweep or args.sweep_only:
        t0 = time.time()
        print(sweep(copy_gbs), flush=True)
        print(f"\n(sweep: {time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
