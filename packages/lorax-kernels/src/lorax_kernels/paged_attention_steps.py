"""Triton steps both paged attention kernels (decode and prefill) take for each K/V block.

``load_kv_block`` gathers ``BLOCK_N`` cache positions of one kv head through a sequence's block
table; ``online_softmax_step`` folds one block of scores into the running (max, sum, acc) state.
They are inlined into the kernels that call them, so the compiled code is what it was when each
kernel spelled them out.
"""

# Triton's constexpr parameters are not typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_kv_block(
    k_cache_ptr,
    v_cache_ptr,
    table,
    offs_n,
    n_mask,
    offs_d,
    d_mask,
    kv_head,
    stride_kb,
    stride_kt,
    dtype: tl.constexpr,
    PAGE: tl.constexpr,
):
    """K and V ``[BLOCK_N, BLOCK_D]`` at positions ``offs_n`` (zeros where masked), in ``dtype``
    (fp8 caches are upcast, exactly; 16-bit ones are returned as stored)."""
    block = tl.load(table + offs_n // PAGE, mask=n_mask, other=0).to(tl.int64)
    rows = block * stride_kb + (offs_n % PAGE) * stride_kt + kv_head  # [BLOCK_N]
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    return k.to(dtype), v.to(dtype)


@triton.jit
def scores(q, k, IEEE: tl.constexpr):
    """``q @ k^T`` in fp32 (exact fp32 products when the inputs are fp32)."""
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    return s


@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc, IEEE: tl.constexpr):
    """Fold scores ``s`` (log2 units, ``-inf`` where hidden) and values ``v`` into the state."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc
