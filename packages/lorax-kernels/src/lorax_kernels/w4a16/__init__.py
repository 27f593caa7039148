"""4-bit weight x 16-bit activation matmul (GPTQ / AWQ bases): Triton on CUDA, reference elsewhere."""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.w4a16.reference import (
    dequantize_w4,
    pack_rows,
    unpack_rows,
    w4a16_matmul_ref,
)

__all__ = ["dequantize_w4", "pack_rows", "unpack_rows", "w4a16_matmul"]


@torch.library.custom_op("lorax_kernels::w4a16_matmul", mutates_args=())
def _w4a16_op(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    perm: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    return w4a16_matmul_ref(x, qweight, scales, zeros, perm, group_size)


@_w4a16_op.register_kernel("cuda")
def _w4a16_cuda(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    perm: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    from lorax_kernels.w4a16.triton import w4a16_matmul as triton_matmul

    return triton_matmul(x, qweight, scales, zeros, perm, group_size)


@_w4a16_op.register_fake
def _w4a16_fake(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    perm: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    return x.new_empty(x.shape[0], qweight.shape[1])


def w4a16_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    perm: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """``x[:, perm] @ W`` for a 4-bit weight W in the layout of ``reference``: ``[M, K] -> [M, N]``.

    qweight: ``[K // 8, N]`` int32; scales, zeros: ``[ceil(K / group_size), N]`` (same layout,
    floats), row k in group ``k // group_size``; perm: ``[K]`` int32 (act-order) or None. The
    result has x's dtype.
    """
    if x.dim() != 2 or qweight.dim() != 2 or x.shape[1] != qweight.shape[0] * 8:
        raise ValueError(f"x {tuple(x.shape)} does not match qweight {tuple(qweight.shape)}")
    k, n = x.shape[1], qweight.shape[1]
    if group_size <= 0 or group_size % 8:
        raise ValueError(f"group_size must be a positive multiple of 8, got {group_size}")
    groups = -(-k // group_size)
    if scales.shape != (groups, n) or zeros.shape != scales.shape:
        raise ValueError(
            f"scales {tuple(scales.shape)} / zeros {tuple(zeros.shape)}: expected {(groups, n)}"
        )
    if scales.stride() != zeros.stride() or scales.stride(1) != 1 or qweight.stride(1) != 1:
        raise ValueError("scales and zeros must share one row-major layout; qweight row-major")
    if perm is not None and (perm.shape != (k,) or perm.dtype != torch.int32):
        raise ValueError(f"perm must be int32 [{k}], got {perm.dtype} {tuple(perm.shape)}")
    if qweight.dtype != torch.int32:
        raise ValueError(f"qweight must be int32, got {qweight.dtype}")
    return dispatch.call(_w4a16_op, _w4a16_cuda, x, qweight, scales, zeros, perm, group_size)
