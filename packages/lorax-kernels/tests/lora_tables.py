"""Random multi-LoRA slot tables for the kernel tests, laid out as the kernels read them."""

from __future__ import annotations

import torch


def random_lora_tables(
    in_features: int, widths: tuple[int, ...], ranks: list[int], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A [slices, slots, max_rank, in]`` and ``B [slices, slots, max(widths), max_rank]`` in
    float32 on the CPU, one slot per entry of ``ranks``, scaled so products stay near unit size,
    and zero past each slot's rank (the tables' contract)."""
    num_slots, max_rank = len(ranks), max(ranks)
    a = torch.randn(len(widths), num_slots, max_rank, in_features, generator=gen)
    b = torch.randn(len(widths), num_slots, max(widths), max_rank, generator=gen)
    a /= in_features**0.5
    b /= max_rank**0.5
    for slot, r in enumerate(ranks):
        a[:, slot, r:] = 0
        b[:, slot, :, r:] = 0
    return a, b
