"""All slot tables of a model, written and cleared one adapter at a time."""

from __future__ import annotations

from typing import Protocol

import torch

from lorax_engine.lora.slot_table import LoraSlotTable
from lorax_engine.lora.spec import PROJECTIONS, ModelLoraSpec


class LoraWeightsLike(Protocol):
    """The part of ``lorax_engine.adapters.weights.LoraWeights`` the slots read."""

    @property
    def rank(self) -> int: ...
    @property
    def scale(self) -> float: ...
    @property
    def modules(self) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]: ...


class LoraSlots:
    """One :class:`LoraSlotTable` per ``(layer, projection)`` the spec describes."""

    def __init__(self, spec: ModelLoraSpec, tables: dict[tuple[int, str], LoraSlotTable]) -> None:
        self.spec = spec
        self._tables = tables
        self.num_slots = next(iter(tables.values())).num_slots
        self.max_rank = next(iter(tables.values())).max_rank

    @classmethod
    def allocate(
        cls,
        spec: ModelLoraSpec,
        num_slots: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> LoraSlots:
        """Preallocate zeroed tables for every projection whose targets the spec lists."""
        dev = torch.device(device)
        tables: dict[tuple[int, str], LoraSlotTable] = {}
        for layer in range(spec.num_layers):
            for proj, names in PROJECTIONS.items():
                if not all(n in spec.targets for n in names):
                    continue
                in_features, offsets = spec.projection_shape(proj)
                tables[(layer, proj)] = LoraSlotTable(
                    in_features, offsets, num_slots, max_rank, dtype, dev
                )
        if not tables:
            raise ValueError("the spec has no LoRA targets")
        return cls(spec, tables)

    def table(self, layer: int, projection: str) -> LoraSlotTable:
        return self._tables[(layer, projection)]

    def write_(self, slot: int, weights: LoraWeightsLike) -> None:
        """Copy every module of ``weights`` into ``slot``; untargeted projections get rank 0."""
        unknown = [
            key for key in weights.modules if (key[0], _projection_of(key[1])) not in self._tables
        ]
        if unknown:
            raise ValueError(f"adapter targets modules the model does not have: {unknown[:4]}")
        for (layer, proj), table in self._tables.items():
            slices: list[tuple[torch.Tensor, torch.Tensor] | None] = [
                weights.modules.get((layer, name)) for name in PROJECTIONS[proj]
            ]
            table.write_(slot, slices, weights.rank, weights.scale)

    def clear_(self, slot: int) -> None:
        for table in self._tables.values():
            table.clear_(slot)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._tables.values())


def _projection_of(peft_target: str) -> str:
    for proj, names in PROJECTIONS.items():
        if peft_target in names:
            return proj
    return peft_target
