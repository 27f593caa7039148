"""Triton SGMV shrink/expand over the tile layout of ``LoraBatchMeta``.

One program handles one tile (up to ``block_m`` tokens on one slot, gathered through
``sorted_ids``) and one slice, so prefill runs share each adapter read across ``block_m`` tokens
while decode batches (one token per adapter) still read every adapter once. The grid size depends
only on static shapes; tiles beyond the step's runs are empty and exit at once. Rows of A / columns
of B past a slot's rank are masked, so a rank-8 adapter in a rank-64 table reads 8 rows.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from lorax_kernels.device import num_sms
from lorax_kernels.sgmv.meta import MAX_SLICES


@triton.jit
def _shrink_kernel(
    x_ptr,
    a_ptr,
    ranks_ptr,
    h_ptr,
    sorted_ptr,
    tile_slot_ptr,
    tile_start_ptr,
    tile_end_ptr,
    in_features,
    k_per_split,  # in_features handled by one program (a multiple of BLOCK_K)
    max_rank,
    stride_xm,
    stride_as,
    stride_aslot,
    stride_ar,
    stride_hp,
    stride_hs,
    stride_hm,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):
    tile = tl.program_id(0)
    s = tl.program_id(1)
    split = tl.program_id(2)
    start = tl.load(tile_start_ptr + tile)
    end = tl.load(tile_end_ptr + tile)
    if end <= start:
        return
    slot = tl.load(tile_slot_ptr + tile)
    rank = tl.where(slot >= 0, tl.load(ranks_ptr + tl.maximum(slot, 0)), 0)
    offs_m = start + tl.arange(0, BLOCK_M)
    m_mask = offs_m < end
    tok = tl.load(sorted_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)  # [BLOCK_M]
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    if rank > 0:
        a_base = a_ptr + s.to(tl.int64) * stride_as + slot.to(tl.int64) * stride_aslot
        k_start = split * k_per_split
        k_end = tl.minimum(k_start + k_per_split, in_features)
        for k0 in range(k_start, k_end, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < k_end
            x = tl.load(
                x_ptr + tok[:, None] * stride_xm + offs_k[None, :],
                mask=m_mask[:, None] & k_mask[None, :],
                other=0.0,
            )  # [BLOCK_M, BLOCK_K]
            a = tl.load(
                a_base + offs_r[None, :] * stride_ar + offs_k[:, None],
                mask=r_mask[None, :] & k_mask[:, None],
                other=0.0,
            ).to(x.dtype)  # [BLOCK_K, BLOCK_R]; fp8 tables: exact in 16 bits, one tl.dot dtype
            if IEEE:
                acc += tl.dot(x, a, input_precision="ieee")
            else:
                acc += tl.dot(x, a)
    h_ptrs = h_ptr + split * stride_hp + s * stride_hs + tok[:, None] * stride_hm + offs_r[None, :]
    tl.store(h_ptrs, acc, mask=m_mask[:, None] & (offs_r < max_rank)[None, :])


@triton.jit
def _expand_kernel(
    y_ptr,
    h_ptr,
    b_ptr,
    ranks_ptr,
    scales_ptr,
    sorted_ptr,
    tile_slot_ptr,
    tile_start_ptr,
    tile_end_ptr,
    off1,
    off2,
    off3,
    off4,
    stride_ym,
    stride_hs,
    stride_hm,
    stride_bs,
    stride_bslot,
    stride_bn,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    VEC: tl.constexpr,
    IEEE: tl.constexpr,
):
    tile = tl.program_id(0)
    pid_n = tl.program_id(1)
    s = tl.program_id(2)
    start = tl.load(tile_start_ptr + tile)
    end = tl.load(tile_end_ptr + tile)
    slot = tl.load(tile_slot_ptr + tile)
    # Column range of slice s in y (offsets are kernel arguments: no metadata tensor to build).
    lo = tl.where(s == 0, 0, tl.where(s == 1, off1, tl.where(s == 2, off2, off3)))
    hi = tl.where(s == 0, off1, tl.where(s == 1, off2, tl.where(s == 2, off3, off4)))
    n0 = pid_n * BLOCK_N
    if (end <= start) | (slot < 0) | (n0 >= hi - lo):
        return
    rank = tl.load(ranks_ptr + slot)
    if rank == 0:
        return
    scale = tl.load(scales_ptr + slot)
    offs_m = start + tl.arange(0, BLOCK_M)
    m_mask = offs_m < end
    tok = tl.load(sorted_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)  # [BLOCK_M]
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_mask = offs_n < hi - lo
    h = tl.load(
        h_ptr + s * stride_hs + tok[:, None] * stride_hm + offs_r[None, :],
        mask=m_mask[:, None] & r_mask[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_R] fp32
    # B's rank rows in VEC-wide vectors (contiguous in memory): a rank mask that is constant
    # across each vector keeps the loads vectorised, where a per-element one made them 2 bytes
    # wide; rows between the rank and the next multiple of VEC are zero in the table, as in h.
    offs_v = tl.arange(0, BLOCK_R // VEC)
    r3 = offs_v[:, None, None] * VEC + tl.arange(0, VEC)[None, :, None]  # [BLOCK_R // VEC, VEC, 1]
    b = tl.load(
        b_ptr
        + s.to(tl.int64) * stride_bs
        + slot.to(tl.int64) * stride_bslot
        + offs_n[None, None, :] * stride_bn
        + r3,
        mask=(offs_v < tl.cdiv(rank, VEC))[:, None, None] & n_mask[None, None, :],
        other=0.0,
    )  # [BLOCK_R // VEC, VEC, BLOCK_N]
    b = tl.reshape(b, (BLOCK_R, BLOCK_N))
    if IEEE:
        delta = tl.dot(h, b.to(tl.float32), input_precision="ieee")
    else:
        delta = tl.dot(h, b.to(tl.float32))  # tf32: finer than rounding h to bf16
    y_ptrs = y_ptr + tok[:, None] * stride_ym + lo + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + scale * delta).to(y.dtype), mask=mask)


def _block_r(max_rank: int) -> int:
    return max(16, triton.next_power_of_2(max_rank))


def choose_split_k(
    num_tiles: int, num_slices: int, in_features: int, block_k: int, num_sms: int
) -> int:
    """Programs per tile along in_features: few tiles (decode) would leave most SMs idle and
    serialise a long K loop in each program, so split K until the grid has ~4 programs per SM."""
    target_programs = 4 * num_sms
    want = max(1, target_programs // max(1, num_tiles * num_slices))
    most = max(1, in_features // block_k)
    return min(1 << (want.bit_length() - 1), 1 << (most.bit_length() - 1))


def shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    slot_ranks: torch.Tensor,
    sorted_ids: torch.Tensor,
    tile_slot: torch.Tensor,
    tile_start: torch.Tensor,
    tile_end: torch.Tensor,
    num_tiles: int,
    block_m: int,
    *,
    split_k: int | None = None,
) -> torch.Tensor:
    """Triton ``lora_shrink``: x ``[T, K]``, lora_a ``[S, slots, R, K]`` -> ``[S, T, R]`` fp32.

    With ``split_k > 1`` (chosen from the static grid size unless given) each program reduces
    one part of K into its own partial, and the partials are summed in a fixed order afterwards
    (deterministic, unlike atomics).
    """
    num_slices, _, max_rank, in_features = lora_a.shape
    num_tokens = x.shape[0]
    if num_tokens == 0:
        return torch.zeros(num_slices, 0, max_rank, dtype=torch.float32, device=x.device)
    if x.stride(1) != 1:
        x = x.contiguous()
    if lora_a.stride(3) != 1:
        raise ValueError("lora_a must be contiguous along in_features")
    block_r = _block_r(max_rank)
    block_k = max(16, min(256, 4096 // block_r, triton.next_power_of_2(in_features)))
    if split_k is None:
        split_k = choose_split_k(num_tiles, num_slices, in_features, block_k, num_sms(x.device))
    k_per_split = triton.cdiv(triton.cdiv(in_features, split_k), block_k) * block_k
    split_k = triton.cdiv(in_features, k_per_split)
    # [split_k, S, T, R] partials; with one split it is h itself.
    out = torch.empty(
        split_k, num_slices, num_tokens, max_rank, dtype=torch.float32, device=x.device
    )
    _shrink_kernel[(num_tiles, num_slices, split_k)](
        x,
        lora_a,
        slot_ranks,
        out,
        sorted_ids,
        tile_slot,
        tile_start,
        tile_end,
        in_features,
        k_per_split,
        max_rank,
        x.stride(0),
        lora_a.stride(0),
        lora_a.stride(1),
        lora_a.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        BLOCK_M=block_m,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        IEEE=x.dtype == torch.float32,
        num_warps=4,
        num_stages=3,
    )
    return out[0] if split_k == 1 else out.sum(0)


def expand_(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    sorted_ids: torch.Tensor,
    tile_slot: torch.Tensor,
    tile_start: torch.Tensor,
    tile_end: torch.Tensor,
    num_tiles: int,
    block_m: int,
) -> None:
    """Triton ``lora_expand_``: adds each slice's ``scale * h @ B^T`` into ``y`` in place."""
    num_slices, max_rank = lora_b.shape[0], lora_b.shape[3]
    if num_slices > MAX_SLICES:
        raise ValueError(f"at most {MAX_SLICES} slices per projection, got {num_slices}")
    if y.shape[0] == 0 or max_rank == 0:
        return
    if y.stride(1) != 1 or h.stride(2) != 1 or lora_b.stride(3) != 1:
        raise ValueError("y, h and lora_b must be contiguous in their last dimension")
    offs = [*slice_offsets[1:], *[slice_offsets[-1]] * (MAX_SLICES + 1 - len(slice_offsets))]
    max_width = max(hi - lo for lo, hi in itertools.pairwise(slice_offsets))
    block_r = _block_r(max_rank)
    block_n = min(128, max(16, triton.next_power_of_2(max_width)))
    grid = (num_tiles, triton.cdiv(max(max_width, 1), block_n), num_slices)
    _expand_kernel[grid](
        y,
        h,
        lora_b,
        slot_ranks,
        slot_scales,
        sorted_ids,
        tile_slot,
        tile_start,
        tile_end,
        *offs,
        y.stride(0),
        h.stride(0),
        h.stride(1),
        lora_b.stride(0),
        lora_b.stride(1),
        lora_b.stride(2),
        BLOCK_M=block_m,
        BLOCK_R=block_r,
        BLOCK_N=block_n,
        # Widest vector (<= 8 elements) that never crosses the end of a B row.
        VEC=min(8, max_rank & -max_rank),
        IEEE=y.dtype == torch.float32,
        num_warps=4,
        num_stages=1,
    )
