"""Plain-PyTorch multi-LoRA shrink/expand: the readable fp32 oracle, and the CPU implementation."""

from __future__ import annotations

import torch


def lora_shrink_ref(
    x: torch.Tensor, lora_a: torch.Tensor, slot_ranks: torch.Tensor, token_slots: torch.Tensor
) -> torch.Tensor:
    """``h[s, t, :r] = x[t] @ lora_a[s, slot(t), :r]^T`` in fp32; zero past the rank / no slot.

    x: ``[num_tokens, in_features]``; lora_a: ``[num_slices, num_slots, max_rank, in_features]``;
    token_slots: ``[num_tokens]`` (``-1`` = no adapter). Returns ``[num_slices, num_tokens,
    max_rank]`` float32.
    """
    num_slices, _, max_rank, _ = lora_a.shape
    num_tokens = x.shape[0]
    h = torch.zeros(num_slices, num_tokens, max_rank, dtype=torch.float32, device=x.device)
    for slot in token_slots.unique().tolist():
        if slot < 0:
            continue
        rank = int(slot_ranks[slot])
        rows = (token_slots == slot).nonzero().squeeze(1)  # [n] tokens on this slot
        xs = x[rows].float()  # [n, in_features]
        for s in range(num_slices):
            a = lora_a[s, slot, :rank].float()  # [rank, in_features]
            h[s, rows, :rank] = xs @ a.T
    return h


def lora_expand_ref_(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: tuple[int, ...] | list[int],
    token_slots: torch.Tensor,
) -> None:
    """``y[t, slice s] += scale[slot(t)] * h[s, t, :r] @ lora_b[s, slot(t), :width_s, :r]^T``.

    Math in fp32, added to ``y`` in fp32 and rounded once to ``y``'s dtype. Tokens with slot
    ``-1`` are left untouched.
    """
    for slot in token_slots.unique().tolist():
        if slot < 0:
            continue
        rank = int(slot_ranks[slot])
        scale = float(slot_scales[slot])
        rows = (token_slots == slot).nonzero().squeeze(1)  # [n]
        for s in range(len(slice_offsets) - 1):
            lo, hi = slice_offsets[s], slice_offsets[s + 1]
            b = lora_b[s, slot, : hi - lo, :rank].float()  # [width, rank]
            delta = scale * (h[s, rows, :rank].float() @ b.T)  # [n, width]
            y[rows, lo:hi] = (y[rows, lo:hi].float() + delta).to(y.dtype)
