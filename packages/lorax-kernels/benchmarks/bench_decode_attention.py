"""Paged decode attention at Llama-3-8B shapes (32 q / 8 kv heads, head dim 128), bf16, block 16.

Bytes counted: every K and V row of every sequence read once, q read and out written once.
Each captured call gets its own block tables over a cache pool of at least 1 GiB, so small
configurations do not find their KV in L2.
"""

from __future__ import annotations

from typing import Any

import torch
from common import markdown_table, time_graph_us

from lorax_kernels.decode_attention import triton as decode_triton

Q_HEADS, KV_HEADS, HEAD_DIM, PAGE = 32, 8, 128, 16
DT = torch.bfloat16


def measure(batch: int, ctx: int, knob_sets: list[dict[str, Any]]) -> tuple[list[float], int]:
    """µs per call for each knob set (``{}`` = the defaults), and the bytes one call must read."""
    blocks_per_seq = ctx // PAGE
    needed = batch * blocks_per_seq
    block_bytes = PAGE * KV_HEADS * HEAD_DIM * 2
    pool = max(needed, (1 << 30) // block_bytes)
    rotations = max(1, min(8, pool // needed))
    k_cache = torch.randn(pool, PAGE, KV_HEADS, HEAD_DIM, device="cuda", dtype=DT)
    v_cache = torch.randn_like(k_cache)
    tables = [
        torch.randperm(pool, device="cuda")[:needed].view(batch, blocks_per_seq).int()
        for _ in range(rotations)
    ]
    q = torch.randn(batch, Q_HEADS, HEAD_DIM, device="cuda", dtype=DT)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    nbytes = 2 * batch * ctx * KV_HEADS * HEAD_DIM * 2 + 2 * q.numel() * 2
    times = []
    for knobs in knob_sets:
        calls = [
            lambda t=t, kn=knobs: decode_triton.paged_decode_attention(
                q, k_cache, v_cache, t, lens, HEAD_DIM**-0.5, **kn
            )
            for t in tables
        ]
        times.append(time_graph_us(calls * max(1, 16 // len(calls))))
    return times, nbytes


def run(copy_gbs: float) -> str:
    """The batch × context grid, then a config sweep at the goal point (batch 64, ctx 1k)."""
    rows = []
    for batch in (1, 16, 64, 256):
        for ctx in (128, 512, 1024, 4096, 16384):
            (us,), nbytes = measure(batch, ctx, [{}])
            gbs = nbytes / us / 1e3
            rows.append([batch, ctx, us, gbs, 100 * gbs / copy_gbs])
            torch.cuda.empty_cache()
    out = "### Paged decode attention (bf16, 32 q / 8 kv heads, d 128, block 16)\n\n"
    out += markdown_table(["batch", "context", "µs/call", "GB/s", "% of copy BW"], rows)

    knob_sets = [
        {"block_n": bn, "num_warps": w, "num_stages": s, "partition": p}
        for bn in (32, 64, 128)
        for w in (4, 8)
        for s in (2, 3)
        for p in (None, 1024)
    ]
    times, nbytes = measure(64, 1024, knob_sets)
    sweep = []
    for knobs, us in zip(knob_sets, times, strict=True):
        gbs = nbytes / us / 1e3
        sweep.append([*[knobs[k] or "auto" for k in knobs], us, gbs, 100 * gbs / copy_gbs])
    out += "\n\nConfig sweep at batch 64, context 1024:\n\n"
    out += markdown_table(
        ["block_n", "warps", "stages", "partition", "µs/call", "GB/s", "% of copy BW"], sweep
    )
    return out
