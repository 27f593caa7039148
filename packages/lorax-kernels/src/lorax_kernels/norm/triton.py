"""Triton RMS norm, optionally fused with the residual add that precedes it.

One program normalises one token's row, held whole in registers (a hidden size of 4096 is 16 values
a thread at 8 warps), so the row is read once and the norm, the add and both stores cost one launch
instead of the five elementwise kernels of the eager form (cast, norm, cast, times weight, add).
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorax_kernels.pdl import launch_options, pdl_entry


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    residual_out_ptr,
    stride_x,
    stride_r,
    eps,
    N: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ROUND: tl.constexpr,  # round the normalised row to the output dtype before the weight (HF)
    PDL: tl.constexpr,
):
    pdl_entry(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        # The residual stream is kept in the activation dtype: round the sum before normalising.
        s = (x + r).to(residual_out_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * N + cols, s, mask=mask)
        x = s.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    normed = x * rstd
    if ROUND:
        normed = normed.to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` as ``[rows, n]`` with unit column stride (a view when it already is one)."""
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(1) == 1 else t2.contiguous()


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor,
    residual_out: torch.Tensor | None,
) -> None:
    """Normalise ``x`` (plus ``residual``) into the contiguous ``out`` (and ``residual_out``)."""
    n = x.shape[-1]
    x2 = _rows(x, n)  # [rows, n]
    r2 = None if residual is None else _rows(residual, n)
    rows = x2.shape[0]
    if rows == 0:
        return
    block = triton.next_power_of_2(n)
    pdl, launch = launch_options(x.device)
    _rms_norm_kernel[(rows,)](
        x2,
        x2 if r2 is None else r2,
        weight.contiguous(),
        out,
        out if residual_out is None else residual_out,
        x2.stride(0),
        0 if r2 is None else r2.stride(0),
        eps,
        n,
        block,
        r2 is not None,
        x.dtype != torch.float32,
        pdl,
        num_warps=min(max(block // 512, 1), 16),
        **launch,
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton version of ``reference.rms_norm_ref`` (same arguments)."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, None, weight, eps, out, None)
    return out


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``reference.fused_add_rms_norm_ref`` (same arguments)."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    residual_out = torch.empty_like(out)
    _launch(x, residual, weight, eps, out, residual_out)
    return out, residual_out
