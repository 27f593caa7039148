"""All slot tables of a model, written and cleared one adapter (one slot) at a time.

Layout. Each slot owns one contiguous region of one ``[num_slots, slot_numel]`` buffer, grouped
by PEFT target: ``A [max_rank, num_layers, in]`` then, after the other slices of the same fused
projection, ``B [num_layers, max_out, max_rank]``. The per-layer tables the kernels read
(:class:`LoraSlotTable`) are strided views of it: the kernels take any strides but the last.

Why this layout and not one tensor per table: a promotion then costs a fixed number of copies
(a zero fill of the region, one copy per A and per B of each target, two for the ranks and
scales: about 20 launches for 32 layers x 7 targets), not one per layer, projection and slice
(~1,000, milliseconds of Python holding the GIL on the promoter thread). A is rank-major so that
an adapter's ``rank`` rows for all layers are one contiguous block, copied straight from the
pinned host buffer (:class:`~lorax_engine.lora.packed.PackedLora`) without any padding on the
host; B's rank must be its innermost dimension for the expand kernel, so a lower-rank B is a
strided copy. Memory is the same as per-table tensors: every slot still holds ``max_rank`` rows.

Tables in float8 e4m3 (``--lora-dtype fp8``) hold the adapter divided by one scale per layer and
projection for A and one for B (:mod:`lorax_engine.lora.fp8`); their product multiplies the
table's scale, so the kernels' ``scale * (x A^T) B^T`` is the adapter's delta.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from lorax_engine.lora.fp8 import layer_scales, to_fp8_
from lorax_engine.lora.packed import LoraWeightsLike, PackedLora, pack_lora
from lorax_engine.lora.slot_table import LoraSlotTable
from lorax_engine.lora.spec import PROJECTIONS, ModelLoraSpec
from lorax_kernels.fp8_gemv import FP8


@dataclass(slots=True, frozen=True)
class _Segment:
    """Where one PEFT target's A and B sit inside a slot's region."""

    a_offset: int  # [max_rank, num_layers, in_features]
    b_offset: int  # [num_layers, max_out, max_rank]
    in_features: int
    out_features: int  # the target's own width; B rows past it stay zero
    max_out: int  # the widest slice of its projection (the B row stride)


class LoraSlots:
    """One :class:`LoraSlotTable` per ``(layer, projection)`` whose targets the spec lists."""

    def __init__(
        self,
        spec: ModelLoraSpec,
        num_slots: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        if num_slots <= 0 or max_rank <= 0:
            raise ValueError("num_slots and max_rank must be positive")
        if dtype.itemsize == 1 and dtype != FP8:
            raise ValueError(f"8-bit slot tables are float8_e4m3fn, not {dtype}")
        self.spec = spec
        self.num_slots = num_slots
        self.max_rank = max_rank
        dev = torch.device(device)
        layers = spec.num_layers
        self._projections, self._segments, self.slot_numel = _layout(spec, max_rank)
        self._weights = torch.zeros(num_slots, self.slot_numel, dtype=dtype, device=dev)
        num_tables = layers * len(self._projections)
        # [num_tables, num_slots]: each table's ranks and scales stay contiguous for the kernels.
        self._ranks = torch.zeros(num_tables, num_slots, dtype=torch.int32, device=dev)
        self._scales = torch.zeros(num_tables, num_slots, dtype=torch.float32, device=dev)
        self._tables: dict[tuple[int, str], LoraSlotTable] = {}
        for layer in range(layers):
            for p, proj in enumerate(self._projections):
                self._tables[(layer, proj)] = self._view(
                    layer, proj, layer * len(self._projections) + p
                )

    @staticmethod
    def bytes_per_slot(spec: ModelLoraSpec, max_rank: int, dtype: torch.dtype) -> int:
        """Device bytes one slot takes: its region of the weights, plus its rank (int32) and
        scale (float32) in every table."""
        projections, _, slot_numel = _layout(spec, max_rank)
        item = torch.empty((), dtype=dtype).element_size()
        return slot_numel * item + 8 * spec.num_layers * len(projections)

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
        return cls(spec, num_slots, max_rank, dtype, device)

    def _view(self, layer: int, proj: str, index: int) -> LoraSlotTable:
        fin, offsets = self.spec.projection_shape(proj)
        first = self._segments[PROJECTIONS[proj][0]]
        layers, rank, n = self.spec.num_layers, self.max_rank, len(offsets) - 1
        lora_a = self._weights.as_strided(  # [num_slices, num_slots, max_rank, in_features]
            (n, self.num_slots, rank, fin),
            (rank * layers * fin, self.slot_numel, layers * fin, 1),
            first.a_offset + layer * fin,
        )
        lora_b = self._weights.as_strided(  # [num_slices, num_slots, max_out, max_rank]
            (n, self.num_slots, first.max_out, rank),
            (layers * first.max_out * rank, self.slot_numel, rank, 1),
            first.b_offset + layer * first.max_out * rank,
        )
        return LoraSlotTable(fin, offsets, lora_a, lora_b, self._ranks[index], self._scales[index])

    def table(self, layer: int, projection: str) -> LoraSlotTable:
        return self._tables[(layer, projection)]

    def write_(self, slot: int, weights: LoraWeightsLike | PackedLora) -> None:
        """Copy an adapter into ``slot``; untargeted projections get rank 0.

        Weights already packed in pinned memory (as the CPU tier keeps them) are copied
        asynchronously; anything else is packed first. Every launch goes to the current stream,
        and nothing waits for the device (fp8 tables are quantized there).

        Raises:
            IndexError: ``slot`` is out of range.
            ValueError: the adapter's rank or shapes do not fit the tables.
        """
        self._check_slot(slot)
        if isinstance(weights, PackedLora):
            packed = weights
        else:
            packed = weights.packed if weights.packed is not None else pack_lora(weights)
        self._validate(packed)
        rank, layers = packed.rank, packed.num_layers
        region = self._weights[slot]  # [slot_numel]
        region.zero_()
        factors = None
        if self._weights.dtype == FP8:
            factors = self._write_fp8(region, packed)
        else:
            for target, a in packed.a.items():
                seg = self._segments[target]
                dev_a = self._segment_a(region, seg)  # [max_rank, num_layers, in]
                dev_a[:rank, :layers].copy_(a, non_blocking=True)
                dev_b = self._segment_b(region, seg)  # [num_layers, max_out, max_rank]
                dev_b[:layers, : seg.out_features, :rank].copy_(packed.b[target], non_blocking=True)
        targeted = [
            any(layer in packed.layers.get(name, ()) for name in PROJECTIONS[proj])
            for layer in range(self.spec.num_layers)
            for proj in self._projections
        ]
        ranks = torch.tensor([rank if t else 0 for t in targeted], dtype=torch.int32)
        scales = torch.tensor([packed.scale if t else 0.0 for t in targeted], dtype=torch.float32)
        self._ranks[:, slot].copy_(ranks, non_blocking=True)
        self._scales[:, slot].copy_(scales, non_blocking=True)
        if factors is not None:
            # [num_layers, num_projections] flattens to the tables' order, layer * P + p.
            self._scales[:, slot].mul_(factors.view(-1))

    def _write_fp8(self, region: torch.Tensor, packed: PackedLora) -> torch.Tensor:
        """Write ``packed`` rounded to fp8 into ``region``; return ``s_A * s_B`` of every
        ``(layer, projection)`` (``[num_layers, num_projections]`` float32, 1 where the adapter
        has no layer), the factor of each table's scale."""
        rank, layers, dev = packed.rank, packed.num_layers, region.device
        factors = torch.ones(self.spec.num_layers, len(self._projections), device=dev)
        for p, proj in enumerate(self._projections):
            names = [n for n in PROJECTIONS[proj] if n in packed.a]
            if not names:
                continue
            # Quantized from 16-bit device temporaries: the host copy stays as the CPU tier
            # keeps it (and may share it with other ids).
            a = [packed.a[n].to(dev, non_blocking=True) for n in names]  # [rank, layers, in]
            b = [packed.b[n].to(dev, non_blocking=True) for n in names]  # [layers, out, rank]
            s_a = layer_scales(a, layer_dim=1)  # [layers]
            s_b = layer_scales(b, layer_dim=0)  # [layers]
            for name, a_n, b_n in zip(names, a, b, strict=True):
                seg = self._segments[name]
                dev_a = self._segment_a(region, seg)[:rank, :layers]
                to_fp8_(dev_a, a_n, s_a, layer_dim=1)
                dev_b = self._segment_b(region, seg)[:layers, : seg.out_features, :rank]
                to_fp8_(dev_b, b_n, s_b, layer_dim=0)
            factors[:layers, p] = s_a * s_b
        return factors

    def clear_(self, slot: int) -> None:
        """Empty a slot (rank 0: tokens mapped to it get no delta)."""
        self._check_slot(slot)
        self._weights[slot].zero_()
        self._ranks[:, slot].zero_()
        self._scales[:, slot].zero_()

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} out of range [0, {self.num_slots})")

    def _validate(self, packed: PackedLora) -> None:
        if packed.rank > self.max_rank:
            raise ValueError(f"adapter rank {packed.rank} exceeds max_rank {self.max_rank}")
        unknown = [
            (layer, target)
            for target, layers in packed.layers.items()
            for layer in sorted(layers)
            if target not in self._segments or layer >= self.spec.num_layers
        ]
        if unknown:
            raise ValueError(f"adapter targets modules the model does not have: {unknown[:4]}")
        for target, a in packed.a.items():
            seg = self._segments[target]
            b = packed.b[target]
            if a.shape[2] != seg.in_features or b.shape[1] != seg.out_features:
                raise ValueError(
                    f"{target}: expected A [{packed.rank}, {seg.in_features}] and "
                    f"B [{seg.out_features}, {packed.rank}], got A [.., {a.shape[2]}] and "
                    f"B [{b.shape[1]}, ..]"
                )

    def _segment_a(self, region: torch.Tensor, seg: _Segment) -> torch.Tensor:
        n = self.max_rank * self.spec.num_layers * seg.in_features
        return region[seg.a_offset : seg.a_offset + n].view(
            self.max_rank, self.spec.num_layers, seg.in_features
        )

    def _segment_b(self, region: torch.Tensor, seg: _Segment) -> torch.Tensor:
        n = self.spec.num_layers * seg.max_out * self.max_rank
        return region[seg.b_offset : seg.b_offset + n].view(
            self.spec.num_layers, seg.max_out, self.max_rank
        )

    @property
    def nbytes(self) -> int:
        return self._weights.nbytes


def _layout(spec: ModelLoraSpec, max_rank: int) -> tuple[list[str], dict[str, _Segment], int]:
    """The targeted projections, each target's segment, and the elements of one slot's region."""
    layers, rank = spec.num_layers, max_rank
    projections = [p for p, names in PROJECTIONS.items() if all(n in spec.targets for n in names)]
    if not projections:
        raise ValueError("the spec has no LoRA targets")
    segments: dict[str, _Segment] = {}
    offset = 0
    for proj in projections:
        fin, offsets = spec.projection_shape(proj)
        max_out = max(b - a for a, b in itertools.pairwise(offsets))
        names = PROJECTIONS[proj]
        # A slices back to back, then B slices: equal strides between a projection's slices.
        b_start = offset + len(names) * rank * layers * fin
        for s, name in enumerate(names):
            segments[name] = _Segment(
                a_offset=offset + s * rank * layers * fin,
                b_offset=b_start + s * layers * max_out * rank,
                in_features=fin,
                out_features=spec.targets[name][1],
                max_out=max_out,
            )
        offset = b_start + len(names) * layers * max_out * rank
    return projections, segments, offset
