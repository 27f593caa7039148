"""KV-cache write (reshape_and_cache_) at Llama-3-8B shapes, bf16: GB/s against copy bandwidth."""

from __future__ import annotations

import torch
from common import markdown_table, time_graph_us

from lorax_kernels import reshape_and_cache_

KV_HEADS, HEAD_DIM, PAGE, DT = 8, 128, 16, torch.bfloat16


def measure(k_cache: torch.Tensor, v_cache: torch.Tensor, tokens: int) -> tuple[float, int]:
    """µs per write of ``tokens`` rows to random slots, and the bytes it moves."""
    k = torch.randn(tokens, KV_HEADS, HEAD_DIM, device="cuda", dtype=DT)
    v = torch.randn_like(k)
    slots = k_cache.shape[0] * PAGE
    mappings = [torch.randperm(slots, device="cuda")[:tokens] for _ in range(8)]
    us = time_graph_us(
        [lambda m=m: reshape_and_cache_(k, v, k_cache, v_cache, m) for m in mappings]
    )
    return us, 2 * 2 * k.numel() * 2 + tokens * 8  # read + write K and V, read the slots


def run(copy_gbs: float) -> str:
    """Decode-sized and prefill-sized writes into a 1 GiB cache."""
    blocks = (1 << 30) // (PAGE * KV_HEADS * HEAD_DIM * 2)
    k_cache = torch.zeros(blocks, PAGE, KV_HEADS, HEAD_DIM, device="cuda", dtype=DT)
    v_cache = torch.zeros_like(k_cache)
    rows = []
    for tokens in (64, 256, 4096):
        us, nbytes = measure(k_cache, v_cache, tokens)
        gbs = nbytes / us / 1e3
        rows.append([tokens, us, gbs, 100 * gbs / copy_gbs])
    out = "### KV-cache write (bf16, 8 kv heads, d 128)\n\n"
    return out + markdown_table(["tokens", "µs/call", "GB/s", "% of copy BW"], rows)
