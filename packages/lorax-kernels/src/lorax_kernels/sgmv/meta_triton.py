"""``LoraBatchMeta.update_`` as one Triton launch (the PyTorch version takes ~20 small kernels).

A single program does a stable counting sort of the tokens by slot and cuts the runs into tiles,
in passes separated by barriers (each pass reads what the previous one wrote to global memory):

1. copy the slots in (``-1`` past the step), zero the scratch counters;
2. count tokens per key (key = slot + 1, 0 = no adapter) with integer atomics (order-free);
3. scan the keys in chunks: each key's first sorted position and first tile; mark every
   non-empty key's first tile with the key;
4. place tokens in chunks, in token order: position = the key's cursor + the number of earlier
   tokens of the same key in the chunk (what makes the sort stable);
5. scan the tile marks with a running max: every tile learns its key, then its token range.

Loads of what this program wrote (or updated with atomics, which act in L2) use ``.cg`` so they
never hit a stale L1 line.

It writes exactly what the PyTorch version writes, so either can serve as the other's oracle.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false
# pyright: reportOperatorIssue=false

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorax_kernels.sgmv.meta import scratch_size

CHUNK = 128  # tokens per placement step: a [CHUNK, CHUNK] comparison finds in-chunk order
SCAN = 1024  # keys or tiles per scan step


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _update_kernel(
    src_ptr,
    slots_ptr,
    sorted_ptr,
    tile_slot_ptr,
    tile_start_ptr,
    tile_end_ptr,
    scratch_ptr,
    num_tokens,
    max_tokens,
    num_keys,
    capacity,
    BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr,
    SCAN: tl.constexpr,
):
    counts_ptr = scratch_ptr  # [num_keys] tokens per key
    cursor_ptr = counts_ptr + num_keys  # [num_keys] next sorted position of each key
    first_ptr = cursor_ptr + num_keys  # [num_keys] first tile of each key
    mark_ptr = first_ptr + num_keys  # [capacity] key starting at each tile, else 0

    # 1. slots in, scratch zeroed.
    for t0 in range(0, max_tokens, SCAN):
        offs = t0 + tl.arange(0, SCAN)
        src = tl.load(src_ptr + offs, mask=offs < num_tokens, other=-1)
        tl.store(slots_ptr + offs, src, mask=offs < max_tokens)
    for k0 in range(0, num_keys, SCAN):
        offs = k0 + tl.arange(0, SCAN)
        tl.store(counts_ptr + offs, tl.zeros((SCAN,), tl.int32), mask=offs < num_keys)
    for i0 in range(0, capacity, SCAN):
        offs = i0 + tl.arange(0, SCAN)
        tl.store(mark_ptr + offs, tl.zeros((SCAN,), tl.int32), mask=offs < capacity)
    tl.debug_barrier()

    # 2. tokens per key.
    for t0 in range(0, num_tokens, SCAN):
        offs = t0 + tl.arange(0, SCAN)
        valid = offs < num_tokens
        key = tl.load(slots_ptr + offs, mask=valid, other=-1, cache_modifier=".cg") + 1
        tl.atomic_add(counts_ptr + key, tl.full((SCAN,), 1, tl.int32), mask=valid)
    tl.debug_barrier()

    # 3. exclusive scans over keys: first position and first tile; mark first tiles.
    pos_carry = 0
    tile_carry = 0
    for k0 in range(0, num_keys, SCAN):
        offs = k0 + tl.arange(0, SCAN)
        valid = offs < num_keys
        count = tl.load(counts_ptr + offs, mask=valid, other=0, cache_modifier=".cg")
        tiles = (count + BLOCK_M - 1) // BLOCK_M
        start = pos_carry + tl.cumsum(count, 0) - count
        first = tile_carry + tl.cumsum(tiles, 0) - tiles
        tl.store(cursor_ptr + offs, start, mask=valid)
        tl.store(first_ptr + offs, first, mask=valid)
        tl.store(mark_ptr + first, offs, mask=valid & (count > 0))
        pos_carry += tl.sum(count, 0)
        tile_carry += tl.sum(tiles, 0)
    total_tiles = tile_carry
    tl.debug_barrier()

    # 4. stable placement, one chunk of tokens at a time.
    rows = tl.arange(0, CHUNK)
    for t0 in range(0, num_tokens, CHUNK):
        offs = t0 + rows
        valid = offs < num_tokens
        key = tl.load(slots_ptr + offs, mask=valid, other=-1, cache_modifier=".cg") + 1
        same = (key[:, None] == key[None, :]) & (rows[None, :] < rows[:, None])
        before = tl.sum(same.to(tl.int32), 1)  # [CHUNK] earlier tokens of my key in the chunk
        pos = tl.load(cursor_ptr + key, mask=valid, other=0, cache_modifier=".cg") + before
        tl.store(sorted_ptr + pos, offs, mask=valid)
        tl.debug_barrier()  # every cursor read before any is advanced
        tl.atomic_add(cursor_ptr + key, tl.full((CHUNK,), 1, tl.int32), mask=valid)
        tl.debug_barrier()

    # 5. tiles: key by running max over the marks, then the tile's range of sorted positions.
    key_carry = 0
    for i0 in range(0, capacity, SCAN):
        offs = i0 + tl.arange(0, SCAN)
        valid = offs < capacity
        mark = tl.load(mark_ptr + offs, mask=valid, other=0, cache_modifier=".cg")
        seg = tl.maximum(tl.associative_scan(mark, 0, _max), key_carry)
        key_carry = tl.max(seg, 0)
        used = offs < total_tiles
        count = tl.load(counts_ptr + seg, cache_modifier=".cg")
        # cursor ended one run past the key's first position
        seg_end = tl.load(cursor_ptr + seg, cache_modifier=".cg")
        start = seg_end - count + (offs - tl.load(first_ptr + seg, cache_modifier=".cg")) * BLOCK_M
        end = tl.minimum(start + BLOCK_M, seg_end)
        # Unused tiles: the PyTorch version's clamped search gives the last slot, range 0..0.
        tl.store(tile_slot_ptr + offs, tl.where(used, seg - 1, num_keys - 2), mask=valid)
        tl.store(tile_start_ptr + offs, tl.where(used, start, 0), mask=valid)
        tl.store(tile_end_ptr + offs, tl.where(used, end, 0), mask=valid)


def update_meta_(
    src: torch.Tensor,
    token_slots: torch.Tensor,
    sorted_ids: torch.Tensor,
    tile_slot: torch.Tensor,
    tile_start: torch.Tensor,
    tile_end: torch.Tensor,
    scratch: torch.Tensor,
    num_slots: int,
    block_m: int,
) -> None:
    """Fill the meta buffers from ``src`` (``[num_tokens]`` int32 slots, ``num_tokens >= 1``)."""
    capacity = tile_slot.shape[0]
    if scratch.numel() < scratch_size(num_slots, capacity):
        raise ValueError("scratch is too small for this slot table")
    _update_kernel[(1,)](
        src,
        token_slots,
        sorted_ids,
        tile_slot,
        tile_start,
        tile_end,
        scratch,
        src.shape[0],
        token_slots.shape[0],
        num_slots + 1,
        capacity,
        BLOCK_M=block_m,
        CHUNK=CHUNK,
        SCAN=SCAN,
        num_warps=8,
    )
