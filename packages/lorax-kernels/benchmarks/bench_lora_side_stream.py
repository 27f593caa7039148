"""A projection plus its multi-LoRA delta at decode points, three ways, per Llama-3-8B projection:
the base GEMM alone, the base GEMM then ``lora_apply_`` (after it the fused kernel, or where
``uses_token_kernel`` says so the per-token one: q/k/v and o up to 96 tokens,
gate/up up to 16, down from 17 to 96), and the engine's
side-stream form (``lora_shrink_partials`` on a side stream forked beside the base GEMM,
joined before ``lora_expand_partials_``). Every token has its own rank-16 adapter (bf16 tables).

What it answers: how much of ``lora_apply_``'s time after the GEMM the side stream takes off a
step, at each batch size (the engine's CUDA graphs use the side stream wherever the fused kernel
would run), since the GEMM's own use of the SMs and of memory bandwidth decides
how much of the shrink can hide beside it. Each captured call rotates over several base weights
and slot sets (hundreds of MB), as a decode step reads them from HBM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from bench_sgmv import DT, PROJECTIONS, Tables
from common import markdown_table, time_graph_us

from lorax_kernels import LoraBatchMeta, lora_apply_, lora_expand_partials_, lora_shrink_partials

TOKENS = (1, 16, 64, 128, 256)
# Base weights rotated per captured call (gate_up: 4 x 235 MB, far past the 50 MB L2).
WEIGHT_COPIES = 4


def _measure(name: str, tokens: int, side: torch.cuda.Stream) -> list[float]:
    """µs per call: base alone, base then ``lora_apply_``, base beside the side-stream shrink."""
    in_features, widths = PROJECTIONS[name]
    tables = Tables(16, 512, in_features, widths)
    x = torch.randn(tokens, in_features, device="cuda", dtype=DT)
    weights = [
        torch.randn(tables.offsets[-1], in_features, device="cuda", dtype=DT) / 64
        for _ in range(WEIGHT_COPIES)
    ]
    metas = []
    for _ in range(WEIGHT_COPIES):
        meta = LoraBatchMeta.allocate(tokens, tables.slots, "cuda")
        meta.update_(torch.randperm(tables.slots, device="cuda")[:tokens].int())
        metas.append(meta)
    lora = (tables.a, tables.b, tables.ranks, tables.scales, tables.offsets)

    def base(i: int) -> torch.Tensor:
        return x @ weights[i].T

    def serial(i: int) -> None:
        lora_apply_(base(i), x, *lora, metas[i])

    def beside(i: int) -> None:
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            partials = lora_shrink_partials(x, tables.a, tables.ranks, tables.offsets, metas[i])
        y = base(i)
        main.wait_stream(side)
        lora_expand_partials_(
            y, partials, tables.b, tables.ranks, tables.scales, tables.offsets, metas[i]
        )

    def timed(fn: Callable[[int], object]) -> float:
        return time_graph_us([lambda i=i: fn(i) for i in range(WEIGHT_COPIES)] * 2)

    return [timed(base), timed(serial), timed(beside)]


def run(copy_gbs: float) -> str:
    del copy_gbs  # the table is a comparison of three ways within one run
    side = torch.cuda.Stream()
    rows = []
    for tokens in TOKENS:
        totals = [0.0, 0.0, 0.0]
        for name in PROJECTIONS:
            us = _measure(name, tokens, side)
            totals = [t + u for t, u in zip(totals, us, strict=True)]
            rows.append([tokens, name, *us, us[1] - us[0], us[2] - us[0]])
            torch.cuda.empty_cache()
        rows.append([tokens, "layer", *totals, totals[1] - totals[0], totals[2] - totals[0]])
    header = [
        "tokens",
        "projection",
        "µs base GEMM",
        "µs base then lora_apply_",
        "µs base beside shrink, then expand",
        "LoRA µs, lora_apply_ after",
        "LoRA µs, side stream",
    ]
    title = (
        "### A projection plus its LoRA delta: lora_apply_ after the GEMM, or shrink beside it\n\n"
    )
    return title + markdown_table(header, rows)
