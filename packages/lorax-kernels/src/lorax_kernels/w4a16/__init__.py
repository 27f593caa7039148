"""4-bit weight x 16-bit activation matmul (GPTQ / AWQ bases): Triton on CUDA, reference elsewhere."""

from __future__ import annotations

import torch

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
    g_idx: torch.Tensor,
) -> torch.Tensor:
    return w4a16_matmul_ref(x, qweight, scales, zeros, g_idx)


@_w4a16_op.register_kernel("cuda")
def _w4a16_cuda(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    g_idx: torch.Tensor,
) -> torch.Tensor:
    from lorax_kernels.w4a16.triton import w4a16_matmul as triton_matmul

    return triton_matmul(x, qweight, scales, zeros, g_idx)


@_w4a16_op.register_fake
def _w4a16_fake(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    g_idx: torch.Tensor,
) -> torch.Tensor:
    return x.new_empty(x.shape[0], qweight.shape[1])


def w4a16_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    g_idx: torch.Tensor,
) -> torch.Tensor:
    """``x @ W`` for a 4-bit weight W in GPTQ layout (see ``reference``): ``[M, K] -> [M, N]``.

    qweight: ``[K // 8, N]`` int32; scales, zeros: ``[num_groups, N]`` (same layout, floats);
    g_idx: ``[K]`` int32. The result has x's dtype.
    """
    if x.dim() != 2 or qweight.dim() != 2 or x.shape[1] != qweight.shape[0] * 8:
        raise ValueError(f"x {tuple(x.shape)} does not match qweight {tuple(qweight.shape)}")
    n = qweight.shape[1]
    if scales.dim() != 2 or scales.shape[1] != n or zeros.shape != scales.shape:
        raise ValueError(f"scales {tuple(scales.shape)} / zeros {tuple(zeros.shape)} for N={n}")
    if scales.stride() != zeros.stride() or scales.stride(1) != 1 or qweight.stride(1) != 1:
        raise ValueError("scales and zeros must share one row-major layout; qweight row-major")
    if g_idx.shape != (x.shape[1],) or g_idx.dtype != torch.int32:
        raise ValueError(
            f"g_idx must be int32 [{x.shape[1]}], got {g_idx.dtype} {tuple(g_idx.shape)}"
        )
    if qweight.dtype != torch.int32:
        raise ValueError(f"qweight must be int32, got {qweight.dtype}")
    return _w4a16_op(x, qweight, scales, zeros, g_idx)
