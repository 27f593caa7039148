"""Plain-PyTorch RMS norm, with and without the residual add before it, rounded as HF Llama does."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x²) + eps)`` over the last dimension, in x's dtype.

    HF normalises in float32 and rounds to the activation dtype *before* the weight, so a bf16 or
    fp16 result is ``weight * round(normalised)`` with one more rounding after the product.
    """
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * F.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)``; the sum is rounded to x's dtype first."""
    new_residual = x + residual
    return rms_norm_ref(new_residual, weight, eps), new_residual
