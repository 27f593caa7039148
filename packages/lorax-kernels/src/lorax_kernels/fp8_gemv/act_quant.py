"""Triton per-token fp8 quantization of activations in one launch (the fp8 GEMM's input side).

One program per row: a pass over the row for its absmax, then a second that scales, clamps and
casts it to e4m3 (the row is in L1/L2 by then). Eager PyTorch needs ~5 kernels for the same.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorax_kernels.fp8_gemv.reference import FP8, FP8_MAX, MIN_ABSMAX

BLOCK_K = 2048  # elements per pass step: 8 per thread at 8 warps (one 16-byte load of bf16)


@triton.jit
def _quantize_rows_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    k,
    stride_xm,
    stride_qm,
    fp8_max: tl.constexpr,
    min_absmax: tl.constexpr,
    block_k: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    amax = tl.zeros((block_k,), dtype=tl.float32)
    for k0 in range(0, k, block_k):
        rk = k0 + tl.arange(0, block_k)
        x = tl.load(x_row + rk, mask=rk < k, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0), min_absmax) / fp8_max
    tl.store(s_ptr + row, scale)
    for k0 in range(0, k, block_k):
        rk = k0 + tl.arange(0, block_k)
        x = tl.load(x_row + rk, mask=rk < k, other=0.0).to(tl.float32)
        # div_rn: the correctly rounded quotient, as PyTorch's division gives the reference.
        q = tl.clamp(tl.math.div_rn(x, scale), -fp8_max, fp8_max)
        tl.store(q_ptr + row * stride_qm + rk, q.to(q_ptr.dtype.element_ty), mask=rk < k)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``reference.quantize_rows_ref`` (x ``[M, K]``, validated)."""
    m, k = x.shape
    xq = torch.empty(m, k, device=x.device, dtype=FP8)
    x_scale = torch.empty(m, 1, device=x.device, dtype=torch.float32)
    if m == 0:
        return xq, x_scale
    if x.stride(1) != 1:
        x = x.contiguous()
    _quantize_rows_kernel[(m,)](
        x,
        xq,
        x_scale,
        k,
        x.stride(0),
        xq.stride(0),
        fp8_max=FP8_MAX,
        min_absmax=MIN_ABSMAX,
        block_k=min(BLOCK_K, triton.next_power_of_2(k)),
        num_warps=8,
    )
    return xq, x_scale
