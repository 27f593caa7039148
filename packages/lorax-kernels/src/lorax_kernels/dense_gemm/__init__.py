"""Decode GEMM for 16-bit weights at a few hundred rows (``x @ W^T + b``): a stream-K Triton
kernel that spreads the output tiles' K steps evenly over the SMs, where cuBLAS's tiles leave a
partial last wave (``streamk``). Triton on CUDA, the fp32 reference elsewhere."""

from __future__ import annotations

import torch

from lorax_kernels.dense_gemv.reference import dense_linear_ref

__all__ = ["DENSE_GEMM_DTYPES", "dense_gemm"]

DENSE_GEMM_DTYPES = (torch.bfloat16, torch.float16)


@torch.library.custom_op("lorax_kernels::dense_gemm", mutates_args=())
def _dense_gemm_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return dense_linear_ref(x, weight, bias)


@_dense_gemm_op.register_kernel("cuda")
def _dense_gemm_cuda(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    from lorax_kernels.dense_gemm.streamk import streamk_gemm

    return streamk_gemm(x, weight, bias)


@_dense_gemm_op.register_fake
def _dense_gemm_fake(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


def dense_gemm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weight^T + bias``: ``[M, K] -> [M, N]``, accumulated in float32.

    weight: ``[N, K]`` row-major in x's dtype (bf16 or fp16); bias: ``[N]`` or None.
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
    if weight.dtype not in DENSE_GEMM_DTYPES or weight.dtype != x.dtype or weight.stride(1) != 1:
        raise ValueError(
            f"weight must be row-major in x's dtype ({x.dtype}), one of {DENSE_GEMM_DTYPES}; "
            f"got {weight.dtype}"
        )
    n = weight.shape[0]
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
    return _dense_gemm_op(x, weight, bias)
