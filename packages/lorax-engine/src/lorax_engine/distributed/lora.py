"""LoRA weights cut to a shard's part, and rank 0's writer that promotes an adapter on every shard.

Column-parallel projections (q, k, v, gate, up) keep A whole and take their output rows of B;
row-parallel ones (o, down) take their input columns of A and keep B whole: each shard's partial
``x_r A_r^T B^T`` is summed with the layer's output, which gives the exact delta.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lorax_engine.distributed.parallel import COLUMN_PARALLEL, ROW_PARALLEL, TensorParallel
from lorax_engine.lora import LoraSlots, LoraWeightsLike


@dataclass(slots=True, frozen=True)
class ShardWeights:
    """One adapter's modules as plain data (``LoraWeightsLike``): what travels to the shards."""

    rank: int
    scale: float
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    packed: None = None  # never pre-packed: the slot tables pack a shard's slices themselves


def shard_lora_weights(weights: LoraWeightsLike, tp: TensorParallel) -> ShardWeights:
    """This shard's slices of every module of ``weights`` (views, no copies)."""
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, target), (a, b) in weights.modules.items():
        if target in COLUMN_PARALLEL:
            start, length = tp.split(b.shape[0])
            b = b.narrow(0, start, length)  # [out / shards, r]
        elif target in ROW_PARALLEL:
            start, length = tp.split(a.shape[1])
            a = a.narrow(1, start, length)  # [r, in / shards]
        modules[(layer, target)] = (a, b)
    return ShardWeights(weights.rank, weights.scale, modules)


class ShardedSlotWriter:
    """The adapter manager's view of the slot tables on rank 0 (its ``SlotWriter``).

    A promotion sends the whole adapter (already loaded and validated once, by rank 0's loader)
    to the other shards, which slice it into their own tables, then writes rank 0's slice.
    The send comes first so a step that uses the slot reaches the shards after the write.
    """

    def __init__(
        self, slots: LoraSlots, tp: TensorParallel, send: Callable[[int, ShardWeights], None]
    ) -> None:
        self._slots = slots
        self._tp = tp
        self._send = send

    @property
    def num_slots(self) -> int:
        return self._slots.num_slots

    def write_(self, slot: int, weights: LoraWeightsLike) -> None:
        # Compact copies: the modules may be views of one packed buffer, which pickling would
        # otherwise write out once per view.
        modules = {k: (a.clone(), b.clone()) for k, (a, b) in weights.modules.items()}
        whole = ShardWeights(weights.rank, weights.scale, modules)
        self._send(slot, whole)
        self._slots.write_(slot, shard_lora_weights(weights, self._tp))
