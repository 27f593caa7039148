"""The units of the decode-sized multi-LoRA kernels, shared by the fused one-launch kernel
(``sgmv.decode``) and its two halves (``sgmv.decode_split``), and how a projection is cut into
them. The per-token kernel (``sgmv.decode_token``) forms ``h`` from the same chunk partials
(:func:`chunk_partial`) and adds it with the same :func:`add_delta`, so all three agree bit for
bit with 16-bit activations (exact products in fp32; in fp32 the compiler may contract
multiply-adds differently from one kernel to another).

- *shrink unit* ``(token, slice, j)``: partial ``x[t, K_j] @ A[slot, :r, K_j]^T`` over one chunk
  of ``in_features``, stored to a scratch row of fp32 partials.
- *expand unit* ``(token, slice, j)``: sums the partials of its (token, slice) in chunk order (so
  every expand unit gets the same ``h``, bit for bit) and adds ``scale * h @ B[slot, N_j, :r]^T``
  into one chunk of ``y``.

The chunking depends only on the weight shapes, so a token's result does not depend on the
batch it is in.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lorax_kernels.sgmv.meta import MAX_SLICES

# Elements of A or B one unit reads (32 KB in bf16): large enough to amortise the unit's fixed
# chain of dependent latencies, small enough that a small batch still spreads over many SMs.
# H200 sweep (bench_sgmv.py, one 4096->4096 projection, 4 warps): 64 tokens on 64 rank-16
# adapters take 15.1 / 12.9-13.1 / 11.8 µs with 16 / 32 / 64 KB units, one token 5.7 / 5.9-6.2 /
# 6.5 µs; 64 tokens at rank 64: 34.5 / 30.1 / 29.3. One size for every batch: the chunking, and so
# a token's result, must not depend on the batch the token is in.
UNIT_ELEMENTS = 16384


@triton.jit
def chunk_partial(
    x_row,
    a_base,
    j,
    rank,
    in_features,
    stride_ar,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``x[K_j] @ A[:r, K_j]^T`` in fp32 for chunk ``j`` of one token's row (``x_row``) and one
    slot's A (``a_base``): ``[BLOCK_R]``, zero past ``rank``. Every kernel that forms ``h``
    sums these in chunk order, so all of them give the same bits (with 16-bit activations)."""
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = j * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = offs_k < in_features
    x = tl.load(x_row + offs_k, mask=k_mask, other=0.0)
    a = tl.load(
        a_base + offs_r[:, None] * stride_ar + offs_k[None, :],
        mask=(offs_r < rank)[:, None] & k_mask[None, :],
        other=0.0,
    )  # [BLOCK_R, BLOCK_K]
    return tl.sum(a.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)


@triton.jit
def shrink_unit(
    unit,
    x_ptr,
    a_ptr,
    part_ptr,
    ranks_ptr,
    slots_ptr,
    in_features,
    stride_xm,
    stride_as,
    stride_aslot,
    stride_ar,
    NUM_SLICES: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Shrink unit ``unit`` = (token, slice, K chunk): its partial ``x A^T`` row stored to
    ``part_ptr``. Returns whether the token has an adapter (a unit without one does nothing)."""
    g = unit // SPLIT
    j = unit % SPLIT
    t = g // NUM_SLICES
    s = g % NUM_SLICES
    slot = tl.load(slots_ptr + t)
    if slot >= 0:
        rank = tl.load(ranks_ptr + slot)
        part = chunk_partial(
            x_ptr + t.to(tl.int64) * stride_xm,
            a_ptr + s.to(tl.int64) * stride_as + slot.to(tl.int64) * stride_aslot,
            j,
            rank,
            in_features,
            stride_ar,
            BLOCK_R,
            BLOCK_K,
        )
        tl.store(part_ptr + (g * SPLIT + j) * BLOCK_R + tl.arange(0, BLOCK_R), part)
    return slot >= 0


@triton.jit
def slice_columns(s, off1, off2, off3, off4):
    """Column range ``[lo, hi)`` of slice ``s`` in y (offsets are kernel arguments: no metadata
    tensor)."""
    lo = tl.where(s == 0, 0, tl.where(s == 1, off1, tl.where(s == 2, off2, off3)))
    hi = tl.where(s == 0, off1, tl.where(s == 1, off2, tl.where(s == 2, off3, off4)))
    return lo, hi


@triton.jit
def load_b_chunk(
    b_base,
    offs_n,
    n_mask,
    rank,
    stride_bn,
    BLOCK_R: tl.constexpr,
    VEC: tl.constexpr,
):
    """One slot's B rows ``offs_n`` as ``[BLOCK_N, BLOCK_R // VEC, VEC]``, its rank columns in
    VEC-wide vectors: a mask that is constant across each vector keeps the loads vectorised
    while a low-rank slot still reads only its columns (rounded up to VEC; the table's columns
    past a slot's rank are zero, as is h)."""
    offs_v = tl.arange(0, BLOCK_R // VEC)
    r2 = offs_v[:, None] * VEC + tl.arange(0, VEC)[None, :]  # [BLOCK_R // VEC, VEC]
    return tl.load(
        b_base + offs_n[:, None, None] * stride_bn + r2[None, :, :],
        mask=n_mask[:, None, None] & (offs_v < tl.cdiv(rank, VEC))[None, :, None],
        other=0.0,
    )


@triton.jit
def add_delta(y_ptrs, y, b, h, scale, n_mask):
    """``y += scale * h B^T`` on one chunk, in fp32, rounded once to y's dtype: ``b``
    ``[BLOCK_N, BLOCK_R // VEC, VEC]`` from :func:`load_b_chunk`, ``h``
    ``[BLOCK_R // VEC, VEC]``."""
    delta = tl.sum(tl.sum(b.to(tl.float32) * h[None, :, :], axis=2), axis=1)
    tl.store(y_ptrs, (y.to(tl.float32) + scale * delta).to(y.dtype), mask=n_mask)


@triton.jit
def expand_unit(
    unit,
    b_ptr,
    y_ptr,
    part_ptr,
    arrive_ptr,
    done_ptr,
    ranks_ptr,
    scales_ptr,
    slots_ptr,
    off1,
    off2,
    off3,
    off4,
    stride_bs,
    stride_bslot,
    stride_bn,
    stride_ym,
    NUM_SLICES: tl.constexpr,
    SPLIT: tl.constexpr,
    N_CHUNKS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    VEC: tl.constexpr,
    WAIT: tl.constexpr,
):
    """Expand unit ``unit`` = (token, slice, N chunk): ``y += scale * h B^T`` on its chunk, ``h``
    the sum of the group's shrink partials in chunk order. ``WAIT``: the partials are written by
    this launch's shrink units, so first wait on the group's arrival counter (``arrive_ptr``,
    released by the shrink units; ``done_ptr`` counts the expand units that have passed, and the
    last one re-arms both); otherwise they are complete before the launch."""
    g = unit // N_CHUNKS
    j = unit % N_CHUNKS
    t = g // NUM_SLICES
    s = g % NUM_SLICES
    slot = tl.load(slots_ptr + t)
    if slot >= 0:
        lo, hi = slice_columns(s, off1, off2, off3, off4)
        rank = tl.load(ranks_ptr + slot)
        offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi - lo
        # B and y do not depend on h: load them before waiting, so their memory latency
        # overlaps the shrink units instead of following them. (Chunks past the slice's
        # width read nothing; a rank-0 slot reads its y chunk but leaves it alone.)
        b = load_b_chunk(
            b_ptr + s.to(tl.int64) * stride_bs + slot.to(tl.int64) * stride_bslot,
            offs_n,
            n_mask,
            rank,
            stride_bn,
            BLOCK_R,
            VEC,
        )  # [BLOCK_N, BLOCK_R // VEC, VEC]
        y_ptrs = y_ptr + t.to(tl.int64) * stride_ym + lo + offs_n
        y = tl.load(y_ptrs, mask=n_mask, other=0.0)
        scale = tl.load(scales_ptr + slot)
        if WAIT:
            # Spin on plain (volatile) reads, which do not contend with the arrivals as
            # read-modify-writes would, then one acquire that synchronises with every release.
            while tl.load(arrive_ptr + g, volatile=True) < SPLIT:
                pass
            tl.atomic_add(arrive_ptr + g, 0, sem="acquire")
            tl.debug_barrier()
        r2 = tl.arange(0, BLOCK_R // VEC)[:, None] * VEC + tl.arange(0, VEC)[None, :]
        h = tl.zeros((BLOCK_R // VEC, VEC), dtype=tl.float32)
        for i in range(SPLIT):  # fixed order: the same h in every expand unit
            # .cg: read from L2, where the other SMs' partials are, never a stale L1 line.
            h += tl.load(part_ptr + (g * SPLIT + i) * BLOCK_R + r2, cache_modifier=".cg")
        if (j * BLOCK_N < hi - lo) & (rank > 0):
            add_delta(y_ptrs, y, b, h, scale, n_mask)
        if WAIT:
            # The last expand unit of the group has passed its wait after every other one
            # did: nobody reads these counters again in this launch.
            if tl.atomic_add(done_ptr + g, 1) == N_CHUNKS - 1:
                tl.atomic_xchg(arrive_ptr + g, 0)
                tl.atomic_xchg(done_ptr + g, 0)


@dataclass(frozen=True)
class Chunking:
    """How a projection is cut into units: a function of the weight shapes only, so that a
    token's result never depends on the batch it is in."""

    block_r: int
    vec: int
    block_k: int
    block_n: int
    split: int
    n_chunks: int


def chunking(
    in_features: int, max_rank: int, slice_offsets: list[int], unit_elements: int
) -> Chunking:
    """The units of a projection with ``in_features`` inputs, slot tables of ``max_rank`` and the
    given slices, each unit reading about ``unit_elements`` elements of A or B."""
    max_width = max(hi - lo for lo, hi in itertools.pairwise(slice_offsets))
    return _chunking(in_features, max_rank, max_width, unit_elements)


@functools.cache
def _chunking(in_features: int, max_rank: int, max_width: int, unit_elements: int) -> Chunking:
    """:func:`chunking` for the widest slice, cached: every eager launch asks for it (sometimes
    twice: ``lora_apply_``'s routing, then the kernel), and Triton's integer helpers make it
    ~25 µs of host time (the 2-core VM)."""
    block_r = max(2, triton.next_power_of_2(max_rank))
    # Widest vector (<= 8 elements, 16 bytes of bf16) that never crosses the end of a B row.
    vec = min(8, max_rank & -max_rank, block_r)
    unit = max(32, unit_elements // block_r)
    block_k = min(unit, triton.next_power_of_2(in_features))
    block_n = min(unit, triton.next_power_of_2(max(max_width, 1)))
    split = triton.cdiv(in_features, block_k)
    n_chunks = triton.cdiv(max(max_width, 1), block_n)
    return Chunking(block_r, vec, block_k, block_n, split, n_chunks)


def padded_offsets(slice_offsets: list[int]) -> list[int]:
    """The slices' end columns as the kernels' four offset arguments."""
    return [*slice_offsets[1:], *[slice_offsets[-1]] * (MAX_SLICES + 1 - len(slice_offsets))]


def unit_stride_x(
    x: torch.Tensor, y: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor
) -> torch.Tensor:
    """``x`` with unit stride along its features (copied if not), once ``y`` and the tables are
    checked to have it: the one-launch kernels index all four by row strides only."""
    if y.stride(1) != 1 or lora_a.stride(3) != 1 or lora_b.stride(3) != 1:
        raise ValueError("y, lora_a and lora_b must be contiguous in their last dimension")
    return x if x.stride(1) == 1 else x.contiguous()


def check_slices(num_slices: int) -> None:
    """The kernels take the slices' offsets as four arguments: at most ``MAX_SLICES`` slices."""
    if num_slices > MAX_SLICES:
        raise ValueError(f"at most {MAX_SLICES} slices per projection, got {num_slices}")
