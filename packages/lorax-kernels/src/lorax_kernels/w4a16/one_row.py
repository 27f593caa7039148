"""Triton w4a16 GEMV for one row (batch-1 decode) on the CUDA cores: ``x[perm] @ W``, W 4-bit.

One row makes one multiply-add per weight, so what holds the kernel back is the instructions and
stalls spent on each weight, not the tensor cores. The general kernel's CUDA-core path (run 7's
sm_90 SASS, compiled here from Triton 3.6) spent 814 instructions a K step on 128 weights a thread
(6.4 a weight: nibble unpack, the 2^23 float trick and its subtraction, multiply, a tree of adds
over K, x through shared memory) with CTA barriers every step; it read the weights at 21-30% of
copy bandwidth. This kernel's step is 691 instructions (5.4 a weight), with no shared memory or
barrier inside the loop:

- A word's even and odd nibbles are split once (two masks, one shift) into one nibble a byte;
  each nibble q then becomes the float ``0.5 + q / 256`` by a shift and one LOP3 that masks it
  and ORs in the exponent's bits (``0x3F000000 | q << 16``): no int -> float conversion, nothing
  subtracted per weight.
- One FMA adds ``(0.5 + q / 256) * x`` into a per-word accumulator ``t``, kept 2D (``[word rows,
  columns]``, the words' own layout): nothing is summed across threads inside the K loop.
- Per word (eight weights) the group's scale and zero come in once:
  ``sum_j (q_j - z) x_j s = s (256 t - (128 + z) X)`` with ``X = sum_j x_j``. The 0.5 cancels in
  fp32 (q sits 7 bits below the float's leading 1: a relative error near 1e-6 of the result,
  far below the 16-bit output's rounding).
- Scales and zeros are read as ``[word rows, columns]`` tiles in that same layout (the rows of a
  group repeat, from L1): a ``[columns]`` vector would be moved into it through shared memory.

x for nibble j of word row i is ``x[8 i + j]``: the same for every column a warp holds, read from
L1. The weight rows are split across programs until ``waves`` programs per SM stream them; the
last program of a column tile to arrive sums the fp32 partials in split order (an atomic counter
it re-arms: CUDA-graph safe, the same result whichever program finishes last).
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false
# pyright: reportGeneralTypeIssues=false

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorax_kernels.device import SPLIT_COUNTERS, split_counters, split_k
from lorax_kernels.split_k_sum import last_split_total


@triton.jit
def _byte_as_float(nibbles, b: tl.constexpr):
    """Byte ``b`` of words whose bytes each hold one nibble q, as the float ``0.5 + q / 256``:
    bits ``0x3F000000 | q << 16``, q three bits below the top of the mantissa (exact)."""
    if b <= 2:
        bits = ((nibbles << (16 - 8 * b)) & 0x000F0000) | 0x3F000000
    else:
        bits = ((nibbles >> 8) & 0x000F0000) | 0x3F000000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _w4a16_one_row_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    z_ptr,
    perm_ptr,
    y_ptr,
    part_ptr,
    count_ptr,
    N,
    K,
    k_per_split,
    num_splits,
    stride_qk,
    stride_sg,
    GROUP_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WORD_ROWS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_PERM: tl.constexpr,
    GROUP_PER_STEP: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = rn < N
    ri = tl.arange(0, WORD_ROWS)  # [WORD_ROWS]
    acc = tl.zeros((WORD_ROWS, BLOCK_N), dtype=tl.float32)
    k_begin = split * k_per_split
    for k0 in range(k_begin, tl.minimum(k_begin + k_per_split, K), 8 * WORD_ROWS):
        rw = k0 // 8 + ri  # [WORD_ROWS] word rows of this step
        w_mask = rw < K // 8
        words = tl.load(
            qw_ptr + rw[:, None] * stride_qk + rn[None, :],
            mask=w_mask[:, None] & n_mask[None, :],
            other=0,
        )  # [WORD_ROWS, BLOCK_N] int32
        t = tl.zeros((WORD_ROWS, BLOCK_N), dtype=tl.float32)
        x_sum = tl.zeros((WORD_ROWS,), dtype=tl.float32)
        even = words & 0x0F0F0F0F  # nibbles 0, 2, 4, 6, one per byte
        odd = (words >> 4) & 0x0F0F0F0F  # nibbles 1, 3, 5, 7
        for j in tl.static_range(8):
            rk = 8 * rw + j  # [WORD_ROWS] weight rows of nibble j
            if HAS_PERM:
                cols = tl.load(perm_ptr + rk, mask=w_mask, other=0)  # act-order: x's columns
            else:
                cols = rk
            xj = tl.load(x_ptr + cols, mask=w_mask, other=0.0).to(tl.float32)  # [WORD_ROWS]
            if j % 2 == 0:
                v = _byte_as_float(even, j // 2)
            else:
                v = _byte_as_float(odd, j // 2)
            t += v * xj[:, None]
            x_sum += xj
        # Scales and zeros come as [WORD_ROWS, BLOCK_N] tiles, in the words' layout: a [BLOCK_N]
        # vector would be moved into it through shared memory, with barriers, every step.
        if GROUP_PER_STEP:  # the step lies in one group: its rows repeat, read from L1
            gn = (k0 // GROUP_SIZE) * stride_sg + 0 * rw[:, None] + rn[None, :]
            gn_mask = n_mask[None, :]
        else:  # groups of 8-row multiples: one scale and zero per word row
            gn = ((8 * rw) // GROUP_SIZE)[:, None] * stride_sg + rn[None, :]
            gn_mask = w_mask[:, None] & n_mask[None, :]
        s = tl.load(s_ptr + gn, mask=gn_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + gn, mask=gn_mask, other=0.0).to(tl.float32)
        acc += s * (256.0 * t - (128.0 + z) * x_sum[:, None])
    y = tl.sum(acc, axis=0)  # [BLOCK_N]
    if not SPLIT_K:
        tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_mask)
    else:
        part_ptrs = part_ptr + rn  # [num_splits, N] fp32 partials
        last, total = last_split_total(
            y, part_ptrs, N, split, num_splits, count_ptr + pid_n, n_mask
        )
        if last:
            tl.store(y_ptr + rn, total.to(y_ptr.dtype.element_ty), mask=n_mask)


def w4a16_one_row(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    perm: torch.Tensor | None,
    group_size: int,
    *,
    block_n: int,
    block_k: int,
    warps: int,
    stages: int,
    waves: int,
) -> torch.Tensor:
    """``x[:, perm] @ W`` for x ``[1, K]`` (validated arguments, as ``w4a16.w4a16_matmul``):
    ``[block_k // 8, block_n]``-word tiles, K split until ``waves`` programs per SM. ``block_k``
    is a multiple of 8 that divides ``group_size`` or not (then one scale per word row)."""
    k = x.shape[1]
    n = qweight.shape[1]
    if x.shape[0] != 1:
        raise ValueError(f"the one-row kernel takes one row, got {x.shape[0]}")
    y = torch.empty(1, n, device=x.device, dtype=x.dtype)
    if x.stride(1) != 1:
        x = x.contiguous()
    tiles_n = triton.cdiv(n, block_n)
    split, k_per_split = split_k(k, block_k, tiles_n, waves, x.device)
    if split > 1 and tiles_n > SPLIT_COUNTERS:
        raise ValueError(f"{n} output features need more than {SPLIT_COUNTERS} column tiles")
    parts = torch.empty(split * n if split > 1 else 0, device=x.device, dtype=torch.float32)
    _w4a16_one_row_kernel[(tiles_n, split)](
        x,
        qweight,
        scales,
        zeros,
        perm if perm is not None else qweight,  # never read without HAS_PERM
        y,
        parts,
        split_counters(x.device),
        n,
        k,
        k_per_split,
        split,
        qweight.stride(0),
        scales.stride(0),
        # A constant: the step's group index divides by it (a multiply, not a division loop).
        GROUP_SIZE=group_size,
        BLOCK_N=block_n,
        WORD_ROWS=block_k // 8,
        SPLIT_K=split > 1,
        HAS_PERM=perm is not None,
        GROUP_PER_STEP=group_size % block_k == 0,
        num_warps=warps,
        num_stages=stages,
    )
    return y
