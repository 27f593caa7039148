"""fp8 (e4m3) weight matmuls with per-output-channel scales: the decode GEMV and the per-token
activation quantization of the tensor-core path. Triton on CUDA, the fp32 reference elsewhere."""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.fp8_gemv.reference import (
    FP8,
    FP8_MAX,
    fp8_linear_ref,
    fp8_scale,
    quantize_rows_ref,
)

__all__ = ["FP8", "FP8_MAX", "GEMV_MAX_ROWS", "fp8_gemv", "fp8_scale", "quantize_rows"]

# The GEMV serves up to this many rows; larger batches quantize x and use fp8 tensor cores.
GEMV_MAX_ROWS = 16


@torch.library.custom_op("lorax_kernels::fp8_gemv", mutates_args=())
def _fp8_gemv_op(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return fp8_linear_ref(x, qweight, scale, bias)


@_fp8_gemv_op.register_kernel("cuda")
def _fp8_gemv_cuda(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    from lorax_kernels.fp8_gemv.triton import fp8_gemv as triton_gemv

    return triton_gemv(x, qweight, scale, bias)


@_fp8_gemv_op.register_fake
def _fp8_gemv_fake(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return x.new_empty(x.shape[0], qweight.shape[0])


def fp8_gemv(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ (qweight * scale[:, None])^T + bias`` for a few rows: ``[M, K] -> [M, N]``.

    qweight: ``[N, K]`` float8 e4m3, row-major; scale: ``[N]`` float32; bias: ``[N]`` or None.
    Up to ``GEMV_MAX_ROWS`` rows (decode); the result has x's dtype, accumulated in float32.
    """
    if x.dim() != 2 or qweight.dim() != 2 or x.shape[1] != qweight.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} does not match qweight {tuple(qweight.shape)}")
    if x.shape[0] > GEMV_MAX_ROWS:
        raise ValueError(f"fp8_gemv serves up to {GEMV_MAX_ROWS} rows, got {x.shape[0]}")
    if qweight.dtype != FP8 or qweight.stride(1) != 1:
        raise ValueError(f"qweight must be row-major {FP8}, got {qweight.dtype}")
    n = qweight.shape[0]
    if scale.shape != (n,) or scale.dtype != torch.float32:
        raise ValueError(f"scale must be float32 [{n}], got {scale.dtype} {tuple(scale.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
    return dispatch.call(_fp8_gemv_op, _fp8_gemv_cuda, x, qweight, scale, bias)


@torch.library.custom_op("lorax_kernels::fp8_quantize_rows", mutates_args=())
def _quantize_rows_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_rows_ref(x)


@_quantize_rows_op.register_kernel("cuda")
def _quantize_rows_cuda(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from lorax_kernels.fp8_gemv.act_quant import quantize_rows as triton_quantize

    return triton_quantize(x)


@_quantize_rows_op.register_fake
def _quantize_rows_fake(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape, dtype=FP8), x.new_empty((x.shape[0], 1), dtype=torch.float32)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token fp8 quantization ``x ≈ xq * x_scale``: ``[M, K] -> ([M, K] e4m3, [M, 1] fp32)``,
    in one launch on CUDA (the input of ``torch._scaled_mm`` with row-wise scales)."""
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got {tuple(x.shape)}")
    return dispatch.call(_quantize_rows_op, _quantize_rows_cuda, x)
