"""Decode GEMV for 16-bit weights (``x @ W^T + b`` for one or two rows): the fp8 GEMV's kernel
without the scale, its split-K partials summed in the launch. cuBLAS splits the small
projections' K too but sums in a second kernel; over a Llama-3-8B layer at one row the GEMV took
116.5 µs against cuBLAS's 120.0 (H200, run 5, four GEMVs back to back in a CUDA graph).
Triton on CUDA, the fp32 reference elsewhere."""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.dense_gemv.reference import dense_linear_ref
from lorax_kernels.fp8_gemv import GEMV_MAX_ROWS

__all__ = ["DENSE_GEMV_DTYPES", "dense_gemv", "dense_linear_ref"]

DENSE_GEMV_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@torch.library.custom_op("lorax_kernels::dense_gemv", mutates_args=())
def _dense_gemv_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return dense_linear_ref(x, weight, bias)


@_dense_gemv_op.register_kernel("cuda")
def _dense_gemv_cuda(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    from lorax_kernels.fp8_gemv.triton import fp8_gemv as triton_gemv

    return triton_gemv(x, weight, None, bias)


@_dense_gemv_op.register_fake
def _dense_gemv_fake(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


def dense_gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weight^T + bias`` for a few rows: ``[M, K] -> [M, N]``, accumulated in float32.

    weight: ``[N, K]`` row-major, x's dtype (bf16, fp16 or fp32); bias: ``[N]`` or None. Up to
    ``GEMV_MAX_ROWS`` rows; tuned for one or two (decode at batch 1).
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
    if x.shape[0] > GEMV_MAX_ROWS:
        raise ValueError(f"dense_gemv serves up to {GEMV_MAX_ROWS} rows, got {x.shape[0]}")
    if weight.dtype not in DENSE_GEMV_DTYPES or weight.dtype != x.dtype or weight.stride(1) != 1:
        raise ValueError(
            f"weight must be row-major in x's dtype ({x.dtype}), one of {DENSE_GEMV_DTYPES}; "
            f"got {weight.dtype}"
        )
    n = weight.shape[0]
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
    return dispatch.call(_dense_gemv_op, _dense_gemv_cuda, x, weight, bias)
