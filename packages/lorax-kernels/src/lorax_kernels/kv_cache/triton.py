"""Triton kernel writing new K/V rows into the paged cache.

A cache slot's ``[num_kv_heads, head_dim]`` row is contiguous in the
``[num_blocks, block_size, num_kv_heads, head_dim]`` layout, so each program copies one token's
row of K and of V as flat vectors. fp8 caches get the row divided by its scale and clamped to the
format's range first (the hardware conversion would turn an out-of-range value into NaN).
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorax_kernels.kv_cache.reference import FP8_KV_DTYPE, FP8_MAX
from lorax_kernels.pdl import launch_options, pdl_entry


@triton.jit
def _cache_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_k,
    stride_v,
    inv_k_scale,
    inv_v_scale,
    ROW: tl.constexpr,  # num_kv_heads * head_dim
    BLOCK: tl.constexpr,
    FP8: tl.constexpr,
    FP8_LIMIT: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_entry(PDL)
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token)
    if slot >= 0:
        for start in range(0, ROW, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < ROW
            k = tl.load(k_ptr + token * stride_k + cols, mask=mask)
            v = tl.load(v_ptr + token * stride_v + cols, mask=mask)
            dst = slot.to(tl.int64) * ROW + cols
            if FP8:
                k = tl.clamp(k.to(tl.float32) * inv_k_scale, -FP8_LIMIT, FP8_LIMIT)
                v = tl.clamp(v.to(tl.float32) * inv_v_scale, -FP8_LIMIT, FP8_LIMIT)
            tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
            tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def reshape_and_cache_(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Triton version of ``reference.reshape_and_cache_ref_`` (same arguments)."""
    num_tokens = k.shape[0]
    if num_tokens == 0:
        return
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("KV caches must be contiguous")
    row = k.shape[1] * k.shape[2]
    k2 = k.reshape(num_tokens, row)  # [num_tokens, kv_heads * head_dim]
    v2 = v.reshape(num_tokens, row)
    if k2.stride(1) != 1:
        k2 = k2.contiguous()
    if v2.stride(1) != 1:
        v2 = v2.contiguous()
    block = min(triton.next_power_of_2(row), 2048)
    pdl, launch = launch_options(k.device)
    _cache_kernel[(num_tokens,)](
        k2,
        v2,
        k_cache,
        v_cache,
        slot_mapping,
        k2.stride(0),
        v2.stride(0),
        1.0 / k_scale,
        1.0 / v_scale,
        ROW=row,
        BLOCK=block,
        FP8=k_cache.dtype == FP8_KV_DTYPE,
        FP8_LIMIT=FP8_MAX,
        PDL=pdl,
        **launch,
    )
