"""Fused multi-LoRA for decode-sized batches: shrink and expand of every token in ONE launch.

The tile kernels (``sgmv.triton``) share each adapter read across a tile of tokens, which pays off
for prefill runs but costs three dependent launches. A decode batch has about one token per
adapter, so here every token is handled on its own and the launch overhead is paid once (the
units are in ``sgmv.decode_units``; ``sgmv.decode_split`` runs the same units as two launches):

- *shrink units* ``(token, slice, j)``: partial ``x[t, K_j] @ A[slot, :r, K_j]^T`` over one chunk
  of ``in_features``, stored to a scratch row, then counted into the (token, slice) arrival
  counter (release).
- *expand units* ``(token, slice, j)``: wait until all shrink units of their (token, slice) have
  arrived (acquire), sum the partials in chunk order (so every expand unit gets the same ``h``,
  bit for bit), and add ``scale * h @ B[slot, N_j, :r]^T`` into one chunk of ``y``.

Each unit reads ~32 KB of adapter weights, so a 64-token batch has ~500 units in flight and the
adapter reads are spread over every SM instead of one long latency-bound chain per token.

Deadlock freedom: a unit's work is chosen by a *ticket* taken with an atomic at its start, not by
its program id, and every shrink ticket precedes every expand ticket. A waiting expand unit only
ever waits for units holding earlier tickets, which have therefore already started and never
wait themselves, whatever order the hardware schedules programs in and however few fit at once.
Triton's interpreter runs programs one after another in order, so there every wait is already
satisfied when reached: the same code path is tested on CPU.

Determinism: each output element is written by exactly one unit with a fixed reduction order, and
the chunking depends only on the weight shapes, so a token's result does not depend on the batch
it is in. Counters are reset by the last unit to use them, so every launch (and every CUDA-graph
replay) starts from zeros without a memset.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorax_kernels.pdl import launch_options, pdl_entry
from lorax_kernels.sgmv.decode_units import (
    UNIT_ELEMENTS,
    check_slices,
    chunking,
    expand_unit,
    padded_offsets,
    shrink_unit,
    unit_stride_x,
)
from lorax_kernels.sgmv.meta import sync_size


@triton.jit
def _decode_kernel(
    x_ptr,
    a_ptr,
    b_ptr,
    y_ptr,
    part_ptr,
    sync_ptr,
    ranks_ptr,
    scales_ptr,
    slots_ptr,
    num_rows,
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
    SPLIT: tl.constexpr,
    N_CHUNKS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    VEC: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_entry(PDL)  # before the ticket: tickets go to programs that run
    groups = num_rows * NUM_SLICES
    shrink_units = groups * SPLIT
    ticket = tl.atomic_add(sync_ptr, 1)
    if ticket == shrink_units + groups * N_CHUNKS - 1:
        # Every ticket of this launch is handed out: re-arm the counter for the next launch.
        tl.atomic_xchg(sync_ptr, 0)
    arrive_ptr = sync_ptr + 1  # [groups] shrink units done per (token, slice)
    done_ptr = arrive_ptr + groups  # [groups] expand units done per (token, slice)
    if ticket < shrink_units:
        live = shrink_unit(
            ticket,
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
            NUM_SLICES,
            SPLIT,
            BLOCK_R,
            BLOCK_K,
        )
        if live:
            # All threads' stores are issued before one thread's release publishes them.
            tl.debug_barrier()
            tl.atomic_add(arrive_ptr + ticket // SPLIT, 1, sem="release")
    else:
        expand_unit(
            ticket - shrink_units,
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
            NUM_SLICES,
            SPLIT,
            N_CHUNKS,
            BLOCK_R,
            BLOCK_N,
            VEC,
            True,
        )


def decode_lora_(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
    sync: torch.Tensor,
    *,
    unit_elements: int = UNIT_ELEMENTS,
    num_warps: int = 4,
) -> None:
    """``y[t, slice s] += scale * (x[t] @ A[s, slot(t)]^T) @ B[s, slot(t)]^T`` in one launch.

    x: ``[T, K]``; y: ``[T, out_total]``; lora_a: ``[S, slots, R, K]``; lora_b: ``[S, slots, N, R]``;
    token_slots: ``[>= T]`` int32 (``-1`` = no adapter, row untouched); sync: int32 zeros of at
    least ``sync_size(T)`` entries, left zero on return. ``unit_elements`` (A or B elements per
    program) and ``num_warps`` are tuning knobs (benchmarks).
    """
    num_slices, _, max_rank, in_features = lora_a.shape
    num_rows = x.shape[0]
    check_slices(num_slices)
    if sync.numel() < sync_size(num_rows):
        raise ValueError(f"sync has {sync.numel()} counters, {sync_size(num_rows)} needed")
    if num_rows == 0 or max_rank == 0:
        return
    x = unit_stride_x(x, y, lora_a, lora_b)
    c = chunking(in_features, max_rank, slice_offsets, unit_elements)
    groups = num_rows * num_slices
    # [groups, split, block_r] fp32 shrink partials; every row a live token uses is written.
    partials = torch.empty(groups * c.split * c.block_r, dtype=torch.float32, device=x.device)
    pdl, launch = launch_options(x.device)
    _decode_kernel[(groups * (c.split + c.n_chunks),)](
        x,
        lora_a,
        lora_b,
        y,
        partials,
        sync,
        slot_ranks,
        slot_scales,
        token_slots,
        num_rows,
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
        SPLIT=c.split,
        N_CHUNKS=c.n_chunks,
        BLOCK_R=c.block_r,
        BLOCK_K=c.block_k,
        BLOCK_N=c.block_n,
        VEC=c.vec,
        PDL=pdl,
        num_warps=num_warps,
        **launch,
    )
