"""RMS norm, alone or fused with the residual add before it (Triton on CUDA, reference elsewhere).

The decoder keeps the residual stream beside the hidden state ("carry the residual"): each norm
takes the sublayer's output and the stream, and returns the normalised sum and the new stream, so
one kernel does the add, the float32 normalisation, HF's rounding and the weight.
"""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.norm.reference import fused_add_rms_norm_ref, rms_norm_ref

__all__ = ["fused_add_rms_norm", "rms_norm"]


@torch.library.custom_op("lorax_kernels::rms_norm", mutates_args=())
def _norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm_ref(x, weight, eps)


@_norm_op.register_kernel("cuda")
def _norm_cuda(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    from lorax_kernels.norm.triton import rms_norm

    return rms_norm(x, weight, eps)


@_norm_op.register_fake
def _norm_fake(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("lorax_kernels::fused_add_rms_norm", mutates_args=())
def _add_norm_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return fused_add_rms_norm_ref(x, residual, weight, eps)


@_add_norm_op.register_kernel("cuda")
def _add_norm_cuda(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    from lorax_kernels.norm.triton import fused_add_rms_norm

    return fused_add_rms_norm(x, residual, weight, eps)


@_add_norm_op.register_fake
def _add_norm_fake(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(x)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.dim() != 1 or x.shape[-1:] != weight.shape:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit x {tuple(x.shape)}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight is {weight.dtype}, x is {x.dtype}: they must match")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm of ``x: [..., hidden]`` scaled by ``weight: [hidden]`` (same dtype as x).

    Normalised in float32; a bf16/fp16 result is rounded before and after the weight, as HF Llama
    rounds it. Returns a new contiguous tensor of x's shape and dtype.
    """
    _check(x, weight)
    return dispatch.call(_norm_op, _norm_cuda, x, weight, float(eps))


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual, weight, eps), x + residual)`` in one pass.

    ``x, residual: [..., hidden]`` of one dtype; the sum is rounded to that dtype (as the eager
    ``x + residual`` is) and normalised as ``rms_norm`` does. Both results are new tensors.
    """
    _check(x, weight)
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            f"residual {tuple(residual.shape)} {residual.dtype} does not match "
            f"x {tuple(x.shape)} {x.dtype}"
        )
    return dispatch.call(_add_norm_op, _add_norm_cuda, x, residual, weight, float(eps))
