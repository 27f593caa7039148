"""Plain-PyTorch dense linear in float32: the 16-bit decode GEMV's reference."""

from __future__ import annotations

import torch


def dense_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ weight^T + bias`` computed in float32, in x's dtype: x ``[M, K]`` -> ``[M, N]``."""
    y = x.float() @ weight.float().T  # [M, N]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
