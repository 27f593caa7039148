"""The preallocated LoRA weights of one fused projection in one layer (docs/internals.md section 1)."""

from __future__ import annotations

import itertools

import torch


class LoraSlotTable:
    """Fixed-size tensors holding up to ``num_slots`` adapters for one ``(layer, projection)``.

    Preallocated once so that CUDA graphs captured over them stay valid while adapters come and go:
    loading an adapter is a copy into a slot, never a new allocation.
    """

    def __init__(
        self,
        in_features: int,
        slice_offsets: tuple[int, ...],
        num_slots: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if num_slots <= 0 or max_rank <= 0:
            raise ValueError("num_slots and max_rank must be positive")
        if len(slice_offsets) < 2 or list(slice_offsets) != sorted(slice_offsets):
            raise ValueError("slice_offsets must be increasing with num_slices + 1 entries")
        self.in_features = in_features
        self.slice_offsets = slice_offsets
        self.num_slices = len(slice_offsets) - 1
        self.num_slots = num_slots
        self.max_rank = max_rank
        widths = [b - a for a, b in itertools.pairwise(slice_offsets)]
        self.max_out_features = max(widths)
        self.lora_a = torch.zeros(  # [num_slices, num_slots, max_rank, in_features]
            self.num_slices, num_slots, max_rank, in_features, dtype=dtype, device=device
        )
        self.lora_b = torch.zeros(  # [num_slices, num_slots, max_out_features, max_rank]
            self.num_slices, num_slots, self.max_out_features, max_rank, dtype=dtype, device=device
        )
        self.slot_ranks = torch.zeros(num_slots, dtype=torch.int32, device=device)
        self.slot_scales = torch.zeros(num_slots, dtype=torch.float32, device=device)

    def write_(
        self,
        slot: int,
        slices: list[tuple[torch.Tensor, torch.Tensor] | None],
        rank: int,
        scale: float,
    ) -> None:
        """Copy one adapter into ``slot``: per slice ``(A [r, in], B [out, r])`` or None (not targeted)."""
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} out of range")
        if len(slices) != self.num_slices:
            raise ValueError(f"expected {self.num_slices} slices, got {len(slices)}")
        if rank > self.max_rank:
            raise ValueError(f"adapter rank {rank} exceeds max_rank {self.max_rank}")
        self.lora_a[:, slot].zero_()
        self.lora_b[:, slot].zero_()
        targeted = False
        for s, pair in enumerate(slices):
            if pair is None:
                continue
            a, b = pair
            width = self.slice_offsets[s + 1] - self.slice_offsets[s]
            if tuple(a.shape) != (rank, self.in_features) or tuple(b.shape) != (width, rank):
                raise ValueError(
                    f"slice {s}: expected A {(rank, self.in_features)} and B {(width, rank)}, "
                    f"got {tuple(a.shape)} and {tuple(b.shape)}"
                )
            self.lora_a[s, slot, :rank].copy_(a, non_blocking=True)
            self.lora_b[s, slot, :width, :rank].copy_(b, non_blocking=True)
            targeted = True
        # A projection the adapter does not touch gets rank 0, so the kernels skip it entirely.
        self.slot_ranks[slot] = rank if targeted else 0
        self.slot_scales[slot] = scale if targeted else 0.0

    def clear_(self, slot: int) -> None:
        """Empty a slot (rank 0: tokens mapped to it get no delta)."""
        self.lora_a[:, slot].zero_()
        self.lora_b[:, slot].zero_()
        self.slot_ranks[slot] = 0
        self.slot_scales[slot] = 0.0

    @property
    def nbytes(self) -> int:
        return self.lora_a.nbytes + self.lora_b.nbytes
