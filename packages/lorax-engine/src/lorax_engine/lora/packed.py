"""One adapter's weights stacked per PEFT target across layers: the host side of a slot write.

``LoraSlots`` keeps one slot's data for all layers in one region, grouped by PEFT target (see
``lorax_engine.lora.slots``). A :class:`PackedLora` holds the same grouping on the host, so a
promotion copies one block per A and per B of each target (at most 14 copies, however many
layers) instead of one per layer, projection and slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from lorax_engine.lora.spec import PEFT_TARGETS


@dataclass(slots=True, frozen=True, weakref_slot=True)
class PackedLora:
    """An adapter as per-target stacks, all views of one flat (optionally pinned) host buffer.

    ``a[target]``: ``[rank, num_layers, in_features]``, rank-major so that a slot's first ``rank``
    rows of every layer are one contiguous block on the device too. ``b[target]``:
    ``[num_layers, out_features, rank]``. Layers the adapter does not target are zero and are left
    out of ``layers[target]``, so the slots give them rank 0.

    Weak references are allowed so that the CPU tier can find a copy that is still alive (in a
    GPU slot's entry, say) and share it with another adapter id of the same origin.
    """

    rank: int
    scale: float
    num_layers: int  # highest targeted layer + 1
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    layers: dict[str, frozenset[int]]
    buffer: torch.Tensor  # [total elements] what a and b view
    # module_views' result, made once: every adapter id sharing this copy shares one dict of views
    # (thousands of ids would otherwise hold hundreds of tensor objects each).
    _views: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
        compare=False,
        repr=False,
    )

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes

    @property
    def is_pinned(self) -> bool:
        return self.buffer.is_pinned()

    def module_views(self) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
        """``(layer, target) -> (A [rank, in], B [out, rank])`` views of the packed tensors.

        Made on the first call and returned again after (callers must not change the dict). Two
        ``unbind`` calls per target rather than two indexing calls per module: each torch call
        may wait for the GIL behind a busy engine thread.
        """
        if not self._views:
            views: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
            for target, layers in self.layers.items():
                a_layers = self.a[target].unbind(1)  # num_layers x [rank, in]
                b_layers = self.b[target].unbind(0)  # num_layers x [out, rank]
                for layer in sorted(layers):
                    views[(layer, target)] = (a_layers[layer], b_layers[layer])
            # Two threads may both get here; either result is the same views.
            self._views.update(views)
        return self._views


class LoraWeightsLike(Protocol):
    """The part of ``lorax_engine.adapters.weights.LoraWeights`` the slots read."""

    @property
    def rank(self) -> int: ...
    @property
    def scale(self) -> float: ...
    @property
    def modules(self) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]: ...
    @property
    def packed(self) -> PackedLora | None:
        """The same weights already packed (the CPU tier's pinned copy), if they are."""
        ...


def pack_lora(weights: LoraWeightsLike, *, pin: bool = False) -> PackedLora:
    """Stack ``weights`` per target into one new buffer (page-locked with ``pin``).

    Raises:
        ValueError: a module's shapes do not match ``rank``, modules of one target disagree on
            their shapes, or a module names an unknown target.
    """
    modules = weights.modules
    if not modules:
        raise ValueError("an adapter needs at least one module")
    rank = weights.rank
    num_layers = max(layer for layer, _ in modules) + 1
    shapes: dict[str, tuple[int, int]] = {}  # target -> (in, out)
    layers: dict[str, set[int]] = {}
    for (layer, target), (a, b) in modules.items():
        if target not in PEFT_TARGETS:
            raise ValueError(f"unknown LoRA target {target!r}")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise ValueError(
                f"module {(layer, target)}: expected A [{rank}, in] and B [out, {rank}], "
                f"got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        shape = (int(a.shape[1]), int(b.shape[0]))
        if shapes.setdefault(target, shape) != shape:
            raise ValueError(f"{target}: layers disagree on (in, out): {shapes[target]} vs {shape}")
        layers.setdefault(target, set()).add(layer)
    targets = [t for t in PEFT_TARGETS if t in shapes]  # a fixed order: reproducible offsets
    dtype = next(iter(modules.values()))[0].dtype
    total = sum(num_layers * rank * (fin + fout) for fin, fout in shapes.values())
    # Zeroed: layers a target lacks must read as zero (a missing layer gets rank 0 anyway).
    buffer = torch.zeros(total, dtype=dtype, pin_memory=pin)
    a_views: dict[str, torch.Tensor] = {}
    b_views: dict[str, torch.Tensor] = {}
    offset = 0
    for target in targets:
        fin, fout = shapes[target]
        n = rank * num_layers * fin
        a_views[target] = buffer[offset : offset + n].view(rank, num_layers, fin)
        offset += n
        n = num_layers * fout * rank
        b_views[target] = buffer[offset : offset + n].view(num_layers, fout, rank)
        offset += n
    for (layer, target), (a, b) in modules.items():
        a_views[target][:, layer].copy_(a)
        b_views[target][layer].copy_(b)
    return PackedLora(
        rank=rank,
        scale=weights.scale,
        num_layers=num_layers,
        a=a_views,
        b=b_views,
        layers={t: frozenset(layers[t]) for t in targets},
        buffer=buffer,
    )
