"""Triton rotary embedding, in place on the q and k heads of the fused qkv projection's output.

One program rotates ``BLOCK_H`` heads of one token: it gathers the token's cos/sin row from the
float32 table by position, loads each head's two halves and writes both rotated halves back, so the
gather, the casts, the products and the concatenation of the eager form are one launch.
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
def _rotary_kernel(
    qk_ptr,
    positions_ptr,
    cos_sin_ptr,
    stride_t,
    stride_h,
    stride_cs,
    num_heads,
    HALF: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_entry(PDL)
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HALF
    dtype = qk_ptr.dtype.element_ty
    pos = tl.load(positions_ptr + token).to(tl.int64)
    # HF casts the tables to the activation dtype before using them.
    cos = tl.load(cos_sin_ptr + pos * stride_cs + offs_d, mask=d_mask, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + offs_d, mask=d_mask, other=0.0)
    cos = cos.to(dtype).to(tl.float32)[None, :]  # [1, BLOCK_D]
    sin = sin.to(dtype).to(tl.float32)[None, :]
    mask = (heads < num_heads)[:, None] & d_mask[None, :]
    lo = qk_ptr + token * stride_t + heads[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(lo, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_H, BLOCK_D]
    x2 = tl.load(lo + HALF, mask=mask, other=0.0).to(tl.float32)
    # x * cos + rotate_half(x) * sin, each product rounded to the dtype before the sum (as HF).
    o1 = (x1 * cos).to(dtype).to(tl.float32) + (-x2 * sin).to(dtype).to(tl.float32)
    o2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
    tl.store(lo, o1.to(dtype), mask=mask)
    tl.store(lo + HALF, o2.to(dtype), mask=mask)


def rotary_embedding_(qk: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """Triton version of ``reference.rotary_embedding_ref_`` (same arguments).

    ``qk`` may be a strided view (q and k heads of the qkv output); its last dimension must be
    contiguous, as the rotation is written through its strides.
    """
    num_tokens, num_heads, head_dim = qk.shape
    if num_tokens == 0:
        return
    if qk.stride(2) != 1 or cos_sin.stride(1) != 1:
        raise ValueError("qk and cos_sin need a contiguous last dimension")
    half = head_dim // 2
    block_d = triton.next_power_of_2(half)
    # About 2048 values of a token per program: a decode token's 40 heads still span 3 SMs.
    block_h = min(triton.next_power_of_2(num_heads), max(1, 1024 // block_d))
    grid = (num_tokens, triton.cdiv(num_heads, block_h))
    pdl, launch = launch_options(qk.device)
    _rotary_kernel[grid](
        qk,
        positions,
        cos_sin,
        qk.stride(0),
        qk.stride(1),
        cos_sin.stride(0),
        num_heads,
        half,
        block_d,
        block_h,
        pdl,
        num_warps=4,
        **launch,
    )
