"""Float8 e4m3 slot tables (``--lora-dtype fp8``): an adapter rounded to fp8 as it is promoted.

Why one scale per (layer, projection) for A and one for B: the kernels already multiply each
``(table, slot)`` delta by one float32 scale, so ``s_A * s_B`` folds into it and the kernels'
math is unchanged (they convert fp8 tables exactly after the load). A finer grain, per slice or
per rank row, would need the kernels to load scales of their own. The slices of a fused
projection (q/k/v, gate/up) share their table's scale, so the amax is taken over all of them.

Everything here runs on the promoter thread: no host synchronisation (the amax and the scales
stay device tensors) and every launch on the current stream. The temporaries are the size of one
projection of one adapter, not of a slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorax_kernels.fp8_gemv import fp8_scale


def layer_scales(parts: Sequence[torch.Tensor], layer_dim: int) -> torch.Tensor:
    """``[num_layers]`` float32: each layer's amax over every tensor of ``parts``, / 448.

    ``parts`` share their size along ``layer_dim`` (the slices of one projection). A layer whose
    values are all zero gets scale 1: any scale keeps it zero, and 0 would divide by zero.
    Dividing by ``amax / 448`` keeps every quotient within e4m3's range, so the cast to fp8
    never saturates (the largest one is 448 within float32 rounding, which rounds to 448).
    """
    amaxes = [
        p.abs().amax(dim=[d for d in range(p.dim()) if d != layer_dim]).float() for p in parts
    ]
    amax = torch.stack(amaxes).amax(dim=0)  # [num_layers]
    return torch.where(amax > 0, fp8_scale(amax), 1.0)


def to_fp8_(dst: torch.Tensor, src: torch.Tensor, scales: torch.Tensor, layer_dim: int) -> None:
    """``dst = fp8(src / scales)``, ``scales`` (``[num_layers]``) broadcast along ``layer_dim``.

    The division is in float32 (``scales`` is), so a 16-bit ``src`` loses nothing before fp8.
    """
    shape = [1] * src.dim()
    shape[layer_dim] = -1
    dst.copy_(src / scales.view(shape))
