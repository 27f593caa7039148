"""Pack an adapter straight from its safetensors data section, with a handful of torch calls.

The result is laid out exactly as :func:`lorax_engine.lora.packed.pack_lora` lays it out. The
point is the number of torch calls: each releases the GIL and may wait up to the switch interval
(5 ms) to get it back from the engine's busy core thread, so copying 224 tensors one by one cost
seconds under load. Here the whole adapter is one gather: the packed buffer is cut into rows of
``width`` elements (a width that divides every tensor row and every B), an ``as_strided`` view of
the file's data whose row ``i`` starts at element ``i`` makes "the run at element ``o``" row
``o``, and one ``index_select`` copies every row to its place.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from lorax_engine.adapters.safetensors_file import TensorEntry
from lorax_engine.lora.packed import PackedLora
from lorax_engine.lora.spec import PEFT_TARGETS

ModuleKey = tuple[int, str]  # (layer index, PEFT target name)


def pack_uniform(
    data: torch.Tensor,
    src_dtype: torch.dtype,
    pairs: dict[ModuleKey, tuple[TensorEntry, TensorEntry]],
    rank: int,
    scale: float,
    dtype: torch.dtype,
    *,
    pin: bool = False,
) -> PackedLora | None:
    """Pack modules that all have rank ``rank``, are stored in ``src_dtype`` and cover every
    layer up to the last for each target; None when some target skips a layer (then the
    module-by-module path, which zero-fills, applies).

    ``data``: the file's data section (uint8). ``pairs``: each module's A ``[rank, in]`` and
    B ``[out, rank]`` entries, already validated against the model. The values are cast to
    ``dtype`` (through float32 from float64, as the module-by-module path does, so both paths
    round alike).
    """
    num_layers = max(layer for layer, _ in pairs) + 1
    shapes: dict[str, tuple[int, int]] = {}  # target -> (in, out)
    counts: dict[str, int] = {}
    for (_, target), (a, b) in pairs.items():
        shapes[target] = (a.shape[1], b.shape[0])
        counts[target] = counts.get(target, 0) + 1
    if any(n != num_layers for n in counts.values()):
        return None
    targets = [t for t in PEFT_TARGETS if t in shapes]  # pack_lora's order
    itemsize = src_dtype.itemsize
    width = math.gcd(
        *(fin for fin, _ in shapes.values()), *(fout * rank for _, fout in shapes.values())
    )
    flat = data[: data.numel() // itemsize * itemsize].view(src_dtype)  # [elements]
    if src_dtype == torch.float64 and dtype != torch.float64:
        flat = flat.to(torch.float32)
    flat = flat.to(dtype)

    def source_rows() -> Iterator[range]:
        """Element offsets in ``flat`` of the packed buffer's rows, in the buffer's order."""
        for target in targets:
            fin, fout = shapes[target]
            a_starts = [pairs[(layer, target)][0].start // itemsize for layer in range(num_layers)]
            for j in range(rank):  # A [rank, num_layers, in]: row j of every layer's A
                for s in a_starts:
                    yield range(s + j * fin, s + (j + 1) * fin, width)
            for layer in range(num_layers):  # B [num_layers, out, rank]: every layer's whole B
                s = pairs[(layer, target)][1].start // itemsize
                yield range(s, s + fout * rank, width)

    index = torch.tensor([o for r in source_rows() for o in r], dtype=torch.int64)  # [rows]
    total = sum(num_layers * rank * (fin + fout) for fin, fout in shapes.values())
    buffer = torch.empty(total, dtype=dtype, pin_memory=pin)  # [total elements]
    rows = flat.as_strided((flat.numel() - width + 1, width), (1, 1))  # row i: flat[i : i + width]
    torch.index_select(rows, 0, index, out=buffer.view(total // width, width))
    sizes = [(rank * num_layers * shapes[t][0], num_layers * shapes[t][1] * rank) for t in targets]
    pieces = buffer.split([n for pair in sizes for n in pair])  # A, B, A, B... in target order
    a_views: dict[str, torch.Tensor] = {}
    b_views: dict[str, torch.Tensor] = {}
    for i, target in enumerate(targets):
        fin, fout = shapes[target]
        a_views[target] = pieces[2 * i].view(rank, num_layers, fin)
        b_views[target] = pieces[2 * i + 1].view(num_layers, fout, rank)
    return PackedLora(
        rank=rank,
        scale=scale,
        num_layers=num_layers,
        a=a_views,
        b=b_views,
        layers={t: frozenset(range(num_layers)) for t in targets},
        buffer=buffer,
    )
