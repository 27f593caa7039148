"""Multi-LoRA for mid-sized decode batches on narrow projections: one program per (token, slice,
N chunk), with no dependency between programs.

The fused kernel (``sgmv.decode``) splits a token's shrink over several programs and makes its
expand programs wait for them: a chain of ticket, partial stores, release, acquire and partial
loads that costs ~6 µs a launch. Here each program forms its token's whole ``h`` itself, from
the same chunk partials summed in the same order as the shrink units (so, with 16-bit
activations, the same bits as the fused kernel and its split halves), and adds
``scale * h B^T`` to its chunk of ``y``. The price is that every N chunk of a token reads the
token's A (the second read mostly from L2), so it pays only where a token has few chunks:
:func:`lorax_kernels.sgmv.routing.uses_token_kernel`.

H200, run 12 (``run_all.py sgmv``), one 4096 -> 4096 projection, 64 tokens on 64 rank-16
adapters (reading them at copy bandwidth takes 4.0 µs): 8.8 µs a call against the fused kernel's
13.0; with PDL launches, where B and (up to ``WHOLE_A_CHUNKS``) A are loaded before the wait,
7.25 µs a call back to back (12.4).
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false
# pyright: reportGeneralTypeIssues=false

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from lorax_kernels.pdl import launch_options, pdl_entry
from lorax_kernels.sgmv.decode_units import (
    UNIT_ELEMENTS,
    Chunking,
    add_delta,
    check_slices,
    chunk_partial,
    chunking,
    load_b_chunk,
    padded_offsets,
    slice_columns,
    unit_stride_x,
)

# B elements one program adds from (2048 rows at rank 16): a 4096-wide projection is two
# programs a token. H200 sweep (run 11) at 64 tokens: 2048 rows 8.9 µs, 1024 rows 10.8, 4096 10.0.
TOKEN_B_ELEMENTS = 32768
# Shrink chunks in flight per program (the sweep: 3 stages of 8 warps fastest).
STAGES = 3
# Up to this many shrink chunks (a 4096-wide input at rank 16), a program loads all of its
# token's A at once, ahead of the PDL wait like B, instead of streaming it through the loop.
# H200, run 12, a 4096 -> 4096 projection on rank-16 adapters, µs with PDL against the loop:
# 1 / 16 / 32 / 64 / 96 tokens 3.4 / 3.6 / 4.1 / 7.2 / 10.8 vs 5.0 / 5.4 / 5.8 / 7.4 / 12.7
# (plain: 5.2 / 6.0 / 7.0 / 8.9 / 14.6 vs 6.4 / 7.2 / 7.9 / 9.2 / 15.2), the same bits.
WHOLE_A_CHUNKS = 4


@triton.jit
def _whole_a(
    a_base,
    rank,
    in_features,
    stride_ar,
    BLOCK_R: tl.constexpr,
    CHUNKS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """All of one slot's A as ``[BLOCK_R, CHUNKS, BLOCK_K]`` (``CHUNKS`` a power of two, at
    least the shrink's chunks), zero past ``rank`` and past ``in_features``."""
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = _whole_k(CHUNKS, BLOCK_K)
    k_mask = offs_k < in_features
    return tl.load(
        a_base + offs_r[:, None, None] * stride_ar + offs_k[None, :, :],
        mask=(offs_r < rank)[:, None, None] & k_mask[None, :, :],
        other=0.0,
    )


@triton.jit
def _whole_k(CHUNKS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Input positions of the chunks, ``[CHUNKS, BLOCK_K]``."""
    return tl.arange(0, CHUNKS)[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]


@triton.jit
def _whole_h(
    a, x_row, in_features, BLOCK_R: tl.constexpr, CHUNKS: tl.constexpr, BLOCK_K: tl.constexpr
):
    """``h`` from :func:`_whole_a`'s tile: each chunk's partial reduced as
    :func:`~lorax_kernels.sgmv.decode_units.chunk_partial` reduces it (the same bits, checked
    on the H200), then summed in chunk order. Chunks past ``in_features`` add exact zeros."""
    offs_k = _whole_k(CHUNKS, BLOCK_K)
    x = tl.load(x_row + offs_k, mask=offs_k < in_features, other=0.0)
    parts = tl.sum(a.to(tl.float32) * x.to(tl.float32)[None, :, :], axis=2)  # [BLOCK_R, CHUNKS]
    chunk = tl.arange(0, CHUNKS)
    h = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for c in tl.static_range(CHUNKS):
        # Chunk c's column, exactly: the other columns add zeros.
        h += tl.sum(tl.where(chunk[None, :] == c, parts, 0.0), axis=1)
    return h


@triton.jit
def _token_kernel(
    x_ptr,
    a_ptr,
    b_ptr,
    y_ptr,
    ranks_ptr,
    scales_ptr,
    slots_ptr,
    in_features,
    off1,
    off2,
    off3,
    off4,
    stride_xm,
    stride_as,
    stride_aslot,
    stride_ar,
    stride_bs,
    stride_bslot,
    stride_bn,
    stride_ym,
    NUM_SLICES: tl.constexpr,
    N_CHUNKS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    VEC: tl.constexpr,
    STAGES: tl.constexpr,
    WHOLE_CHUNKS: tl.constexpr,
    PDL: tl.constexpr,
):
    g = tl.program_id(0) // N_CHUNKS
    j = tl.program_id(0) % N_CHUNKS
    t = g // NUM_SLICES
    s = g % NUM_SLICES
    lo, hi = slice_columns(s, off1, off2, off3, off4)
    offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < hi - lo
    # Before the PDL wait only what no kernel in flight writes: the step's slots (written before
    # its first layer), the slot tables, and so this chunk of B, whose load then overlaps the
    # kernel ahead. A token without adapter has rank 0 here and loads nothing.
    slot = tl.load(slots_ptr + t)
    live = slot >= 0
    slot = tl.maximum(slot, 0).to(tl.int64)
    rank = tl.load(ranks_ptr + slot, mask=live, other=0)
    b = load_b_chunk(
        b_ptr + s.to(tl.int64) * stride_bs + slot * stride_bslot,
        offs_n,
        n_mask,
        rank,
        stride_bn,
        BLOCK_R,
        VEC,
    )  # [BLOCK_N, BLOCK_R // VEC, VEC]
    a_base = a_ptr + s.to(tl.int64) * stride_as + slot * stride_aslot
    if WHOLE_CHUNKS > 0:
        a = _whole_a(a_base, rank, in_features, stride_ar, BLOCK_R, WHOLE_CHUNKS, BLOCK_K)
    # Every program waits, even one with nothing to do: the kernel after this one relies on
    # this grid having waited for the kernel ahead.
    pdl_entry(PDL)
    if (rank > 0) & (j * BLOCK_N < hi - lo):
        y_ptrs = y_ptr + t.to(tl.int64) * stride_ym + lo + offs_n
        y = tl.load(y_ptrs, mask=n_mask, other=0.0)
        scale = tl.load(scales_ptr + slot)
        x_row = x_ptr + t.to(tl.int64) * stride_xm
        if WHOLE_CHUNKS > 0:
            h = _whole_h(a, x_row, in_features, BLOCK_R, WHOLE_CHUNKS, BLOCK_K)
        else:
            h = tl.zeros((BLOCK_R,), dtype=tl.float32)
            # Chunk order, as the shrink units. Pipelined through tl.range: the same loop as a
            # plain range with the launch's num_stages ran 1.0-1.2 µs slower at 64 tokens (H200,
            # run 11).
            for k0 in tl.range(0, in_features, BLOCK_K, num_stages=STAGES):
                chunk = k0 // BLOCK_K
                h += chunk_partial(
                    x_row, a_base, chunk, rank, in_features, stride_ar, BLOCK_R, BLOCK_K
                )
        add_delta(y_ptrs, y, b, tl.reshape(h, (BLOCK_R // VEC, VEC)), scale, n_mask)


def loads_a_whole(in_features: int, max_rank: int, slice_offsets: list[int]) -> bool:
    """Whether the kernel loads each token's A at once for these tables (at most
    ``WHOLE_A_CHUNKS`` shrink chunks) rather than streaming it through its loop."""
    return _whole_chunks(chunking(in_features, max_rank, slice_offsets, UNIT_ELEMENTS)) > 0


def _whole_chunks(c: Chunking) -> int:
    """The kernel's ``WHOLE_CHUNKS``: the shrink chunks rounded up to a power of two where A is
    loaded whole, else 0 (the loop)."""
    return triton.next_power_of_2(c.split) if c.split <= WHOLE_A_CHUNKS else 0


def decode_token_lora_(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
    *,
    num_warps: int = 8,
) -> None:
    """``y[t, slice s] += scale * (x[t] @ A[s, slot(t)]^T) @ B[s, slot(t)]^T``, one program per
    (token, slice, N chunk): :func:`lorax_kernels.sgmv.decode.decode_lora_`'s result, bit for bit
    with 16-bit activations (in fp32 the compiler may contract multiply-adds differently).

    Same tensors as ``decode_lora_`` without its counters: x ``[T, K]``; y ``[T, out_total]``;
    lora_a ``[S, slots, R, K]``; lora_b ``[S, slots, N, R]``; token_slots ``[>= T]`` int32
    (``-1`` = no adapter, row untouched).
    """
    num_slices, _, max_rank, in_features = lora_a.shape
    num_rows = x.shape[0]
    check_slices(num_slices)
    if num_rows == 0 or max_rank == 0:
        return
    x = unit_stride_x(x, y, lora_a, lora_b)
    # The K chunks of the shrink units: the same partials, so the same bits.
    c = chunking(in_features, max_rank, slice_offsets, UNIT_ELEMENTS)
    max_width = max(hi - lo for lo, hi in itertools.pairwise(slice_offsets))
    # Rows of B (columns of y) one program covers.
    block_n = min(TOKEN_B_ELEMENTS // c.block_r, triton.next_power_of_2(max(max_width, 1)))
    n_chunks = triton.cdiv(max(max_width, 1), block_n)
    pdl, launch = launch_options(x.device)
    _token_kernel[(num_rows * num_slices * n_chunks,)](
        x,
        lora_a,
        lora_b,
        y,
        slot_ranks,
        slot_scales,
        token_slots,
        in_features,
        *padded_offsets(slice_offsets),
        x.stride(0),
        lora_a.stride(0),
        lora_a.stride(1),
        lora_a.stride(2),
        lora_b.stride(0),
        lora_b.stride(1),
        lora_b.stride(2),
        y.stride(0),
        NUM_SLICES=num_slices,
        N_CHUNKS=n_chunks,
        BLOCK_R=c.block_r,
        BLOCK_K=c.block_k,
        BLOCK_N=block_n,
        VEC=c.vec,
        STAGES=STAGES,
        WHOLE_CHUNKS=_whole_chunks(c),
        PDL=pdl,
        num_warps=num_warps,
        **launch,
    )
