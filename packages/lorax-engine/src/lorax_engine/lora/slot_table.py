"""The LoRA weights of one fused projection in one layer (docs/internals.md section 1)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


@dataclass(slots=True, frozen=True)
class LoraSlotTable:
    """What the kernels read for one ``(layer, projection)``: views into ``LoraSlots``' buffers.

    The views are strided (only the last dimension is contiguous): every slot's data for all
    layers lives in one region of ``LoraSlots``, so that a promotion is a few large copies. They
    never move, so CUDA graphs captured over them stay valid while adapters come and go.
    """

    in_features: int
    slice_offsets: tuple[int, ...]
    lora_a: torch.Tensor  # [num_slices, num_slots, max_rank, in_features]
    lora_b: torch.Tensor  # [num_slices, num_slots, max_out_features, max_rank]
    slot_ranks: torch.Tensor  # [num_slots] int32, 0 = the slot's adapter skips this projection
    slot_scales: torch.Tensor  # [num_slots] float32

    @property
    def num_slices(self) -> int:
        return len(self.slice_offsets) - 1

    @property
    def num_slots(self) -> int:
        return int(self.lora_a.shape[1])

    @property
    def max_rank(self) -> int:
        return int(self.lora_a.shape[2])

    @property
    def max_out_features(self) -> int:
        return max(b - a for a, b in itertools.pairwise(self.slice_offsets))

    @property
    def nbytes(self) -> int:
        return self.lora_a.nbytes + self.lora_b.nbytes
