"""Fused multi-LoRA for decode-sized batches: shrink and expand of every token in ONE launch.

The tile kernels (``sgmv.triton``) share each adapter read across a tile of tokens, which pays off
for prefill runs but costs three dependent launches. A decode batch has about one token per
adapter, so here every token is handled on its own and the launch overhead is paid once:

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

import itertools

import torch
import triton
import triton.language as tl

from lorax_kernels.pdl import launch_options, pdl_entry
from lorax_kernels.sgmv.meta import MAX_SLICES, sync_size

# Elements of A or B one unit reads (32 KB in bf16): large enough to amortise the unit's fixed
# chain of dependent latencies, small enough that a small batch still spreads over many SMs.
# H200 sweep (bench_sgmv.py, one 4096->4096 projection, 4 warps): 64 tokens on 64 rank-16
# adapters take 15.1 / 12.9-13.1 / 11.8 µs with 16 / 32 / 64 KB units, one token 5.7 / 5.9-6.2 /
# 6.5 µs; 64 tokens at rank 64: 34.5 / 30.1 / 29.3. One size for every batch: the chunking, and so
# a token's result, must not depend on the batch the token is in.
UNIT_ELEMENTS = 16384


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
    offs_r = tl.arange(0, BLOCK_R)
    if ticket < shrink_units:
        g = ticket // SPLIT
        j = ticket % SPLIT
        t = g // NUM_SLICES
        s = g % NUM_SLICES
        slot = tl.load(slots_ptr + t)
        if slot >= 0:
            rank = tl.load(ranks_ptr + slot)
            offs_k = j * BLOCK_K + tl.arange(0, BLOCK_K)
            k_mask = offs_k < in_features
            x = tl.load(x_ptr + t.to(tl.int64) * stride_xm + offs_k, mask=k_mask, other=0.0)
            a = tl.load(
                a_ptr
                + s.to(tl.int64) * stride_as
                + slot.to(tl.int64) * stride_aslot
                + offs_r[:, None] * stride_ar
                + offs_k[None, :],
                mask=(offs_r < rank)[:, None] & k_mask[None, :],
                other=0.0,
            )  # [BLOCK_R, BLOCK_K]
            part = tl.sum(a.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)  # [BLOCK_R]
            tl.store(part_ptr + (g * SPLIT + j) * BLOCK_R + offs_r, part)
            # All threads' stores are issued before one thread's release publishes them.
            tl.debug_barrier()
            tl.atomic_add(arrive_ptr + g, 1, sem="release")
    else:
        e = ticket - shrink_units
        g = e // N_CHUNKS
        j = e % N_CHUNKS
        t = g // NUM_SLICES
        s = g % NUM_SLICES
        slot = tl.load(slots_ptr + t)
        if slot >= 0:
            # Column range of slice s in y (offsets are kernel arguments: no metadata tensor).
            lo = tl.where(s == 0, 0, tl.where(s == 1, off1, tl.where(s == 2, off2, off3)))
            hi = tl.where(s == 0, off1, tl.where(s == 1, off2, tl.where(s == 2, off3, off4)))
            rank = tl.load(ranks_ptr + slot)
            offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
            n_mask = offs_n < hi - lo
            # B and y do not depend on h: load them before waiting, so their memory latency
            # overlaps the shrink units instead of following them. (Chunks past the slice's
            # width read nothing; a rank-0 slot reads its y chunk but leaves it alone.)
            # B's rank columns in VEC-wide vectors: a mask that is constant across each vector
            # keeps the loads vectorised while a low-rank slot still reads only its columns
            # (rounded up to VEC; the table's columns past a slot's rank are zero, as is h).
            offs_v = tl.arange(0, BLOCK_R // VEC)
            r2 = offs_v[:, None] * VEC + tl.arange(0, VEC)[None, :]  # [BLOCK_R // VEC, VEC]
            b = tl.load(
                b_ptr
                + s.to(tl.int64) * stride_bs
                + slot.to(tl.int64) * stride_bslot
                + offs_n[:, None, None] * stride_bn
                + r2[None, :, :],
                mask=n_mask[:, None, None] & (offs_v < tl.cdiv(rank, VEC))[None, :, None],
                other=0.0,
            )  # [BLOCK_N, BLOCK_R // VEC, VEC]
            y_ptrs = y_ptr + t.to(tl.int64) * stride_ym + lo + offs_n
            y = tl.load(y_ptrs, mask=n_mask, other=0.0)
            scale = tl.load(scales_ptr + slot)
            # Spin on plain (volatile) reads, which do not contend with the arrivals as
            # read-modify-writes would, then one acquire that synchronises with every release.
            while tl.load(arrive_ptr + g, volatile=True) < SPLIT:
                pass
            tl.atomic_add(arrive_ptr + g, 0, sem="acquire")
            tl.debug_barrier()
            h = tl.zeros((BLOCK_R // VEC, VEC), dtype=tl.float32)
            for i in range(SPLIT):  # fixed order: the same h in every expand unit
                # .cg: read from L2, where the other SMs' partials are, never a stale L1 line.
                h += tl.load(part_ptr + (g * SPLIT + i) * BLOCK_R + r2, cache_modifier=".cg")
            if (j * BLOCK_N < hi - lo) & (rank > 0):
                delta = tl.sum(tl.sum(b.to(tl.float32) * h[None, :, :], axis=2), axis=1)
                tl.store(y_ptrs, (y.to(tl.float32) + scale * delta).to(y.dtype), mask=n_mask)
            # The last expand unit of the group has passed its wait after every other one did:
            # nobody reads these counters again in this launch.
            if tl.atomic_add(done_ptr + g, 1) == N_CHUNKS - 1:
                tl.atomic_xchg(arrive_ptr + g, 0)
                tl.atomic_xchg(done_ptr + g, 0)


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
    if num_slices > MAX_SLICES:
        raise ValueError(f"at most {MAX_SLICES} slices per projection, got {num_slices}")
    if sync.numel() < sync_size(num_rows):
        raise ValueError(f"sync has {sync.numel()} counters, {sync_size(num_rows)} needed")
    if num_rows == 0 or max_rank == 0:
        return
    if x.stride(1) != 1:
        x = x.contiguous()
    if y.stride(1) != 1 or lora_a.stride(3) != 1 or lora_b.stride(3) != 1:
        raise ValueError("y, lora_a and lora_b must be contiguous in their last dimension")
    max_width = max(hi - lo for lo, hi in itertools.pairwise(slice_offsets))
    block_r = max(2, triton.next_power_of_2(max_rank))
    # Widest vector (<= 8 elements, 16 bytes of bf16) that never crosses the end of a B row.
    vec = min(8, max_rank & -max_rank, block_r)
    unit = max(32, unit_elements // block_r)
    block_k = min(unit, triton.next_power_of_2(in_features))
    block_n = min(unit, triton.next_power_of_2(max(max_width, 1)))
    split = triton.cdiv(in_features, block_k)
    n_chunks = triton.cdiv(max(max_width, 1), block_n)
    groups = num_rows * num_slices
    # [groups, split, block_r] fp32 shrink partials; every row a live token uses is written.
    partials = torch.empty(groups * split * block_r, dtype=torch.float32, device=x.device)
    offs = [*slice_offsets[1:], *[slice_offsets[-1]] * (MAX_SLICES + 1 - len(slice_offsets))]
    pdl, launch = launch_options(x.device)
    _decode_kernel[(groups * (split + n_chunks),)](
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
        *offs,
        x.stride(0),
        lora_a.stride(0),
        lora_a.stride(1),
        lora_a.stride(2),
        lora_b.stride(0),
        lora_b.stride(1),
        lora_b.stride(2),
        y.stride(0),
        NUM_SLICES=num_slices,
        SPLIT=split,
        N_CHUNKS=n_chunks,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        BLOCK_N=block_n,
        VEC=vec,
        PDL=pdl,
        num_warps=num_warps,
        **launch,
    )
