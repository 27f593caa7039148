"""Triton ``silu(gate) * up`` straight from the fused gate_up projection's output.

Reads both halves of each row in place (no chunk copies) and writes the product once; programs
tile a row in ``BLOCK`` columns so a single decode token still spreads over many SMs.
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
def _silu_and_mul_kernel(
    gate_up_ptr,
    out_ptr,
    stride_in,
    N: tl.constexpr,  # width of one half
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_entry(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    gate = tl.load(gate_up_ptr + row * stride_in + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_in + N + cols, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    # Round the activation to the output dtype before the product, as the eager form does.
    act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * N + cols, (act * up).to(dtype), mask=mask)


def silu_and_mul(gate_up: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Triton version of ``reference.silu_and_mul_ref`` (same argument)."""
    width = gate_up.shape[-1]
    half = width // 2
    out = torch.empty((*gate_up.shape[:-1], half), dtype=gate_up.dtype, device=gate_up.device)
    x2 = gate_up.reshape(-1, width)  # [rows, 2 * half]
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    if rows == 0 or half == 0:
        return out
    block = min(block, triton.next_power_of_2(half))
    grid = (rows, triton.cdiv(half, block))
    pdl, launch = launch_options(gate_up.device)
    _silu_and_mul_kernel[grid](x2, out, x2.stride(0), half, block, pdl, num_warps=4, **launch)
    return out
