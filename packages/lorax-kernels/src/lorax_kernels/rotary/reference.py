"""Plain-PyTorch rotary position embedding (HF's half-split form), applied in place."""

from __future__ import annotations

import torch


def rotary_embedding_ref_(qk: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """Rotate every head of ``qk: [T, H, D]`` by its token's position, in place.

    ``cos_sin: [max_positions, D]`` float32 holds ``[cos | sin]`` of the ``D / 2`` frequencies.
    HF casts the tables to the activation dtype and computes ``x * cos + rotate_half(x) * sin``
    in that dtype; so does this.
    """
    half = qk.shape[-1] // 2
    cos, sin = cos_sin.index_select(0, positions).to(qk.dtype).chunk(2, dim=-1)  # [T, D/2]
    cos = torch.cat([cos, cos], dim=-1).unsqueeze(1)  # [T, 1, D]
    sin = torch.cat([sin, sin], dim=-1).unsqueeze(1)
    rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)  # [T, H, D]
    qk.copy_(qk * cos + rotated * sin)
