"""Multi-LoRA shrink/expand (SGMV): one launch for a batch that mixes any adapters and ranks.

``lora_apply_`` (``y += LoRA(x)``) is the layer-level entry point: decode-sized batches go to the
fused one-launch kernel (``sgmv.decode``), larger ones to ``lora_shrink`` + ``lora_expand_`` over
the tile layout (``sgmv.triton``), which share each adapter read across a run of tokens. Every op
dispatches on the device of its inputs: Triton kernels on CUDA, registered as torch custom ops so
they can be captured in CUDA graphs; the fp32 reference (``sgmv.reference``) everywhere else.
"""

from __future__ import annotations

import itertools

import torch

from lorax_kernels.sgmv.meta import LoraBatchMeta
from lorax_kernels.sgmv.reference import lora_expand_ref_, lora_shrink_ref

__all__ = [
    "DECODE_MAX_ROWS",
    "LoraBatchMeta",
    "lora_apply_",
    "lora_expand_",
    "lora_shrink",
    "uses_fused_kernel",
]

# Up to this many rows ``lora_apply_`` may run the fused per-token kernel. It reads each token's
# adapter separately (repeats of one adapter come from L2), which beats the three tile launches
# until batches are prefill-sized, for small ranks.
DECODE_MAX_ROWS = 256
# Above this table rank the fused kernel only runs for a handful of rows. Measured on the H200
# (docs/benchmarks.md, one 4096x4096 projection): at rank 8 and 16 it is within 40% of the tiles
# or faster at every row count up to 256 (15.2 vs 16.4 us at 64 tokens on 64 adapters), but at
# rank 64 it is 1.8x slower than the tiles at 16 rows and 2-3.6x slower from 64 rows on.
FUSED_MAX_RANK = 16
FUSED_MAX_ROWS_HIGH_RANK = 4


def uses_fused_kernel(rows: int, table_rank: int) -> bool:
    """Whether ``lora_apply_`` runs the fused one-launch kernel for ``rows`` tokens over slot
    tables of max rank ``table_rank`` (else shrink then expand over the tiles)."""
    if rows > DECODE_MAX_ROWS:
        return False
    return table_rank <= FUSED_MAX_RANK or rows <= FUSED_MAX_ROWS_HIGH_RANK


@torch.library.custom_op("lorax_kernels::lora_decode_", mutates_args=("y", "sync"))
def _decode_op(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
    sync: torch.Tensor,
) -> None:
    slots = token_slots[: x.shape[0]]
    h = lora_shrink_ref(x, lora_a, slot_ranks, slots)
    lora_expand_ref_(y, h, lora_b, slot_ranks, slot_scales, slice_offsets, slots)


@_decode_op.register_kernel("cuda")
def _decode_cuda(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
    sync: torch.Tensor,
) -> None:
    from lorax_kernels.sgmv.decode import decode_lora_

    decode_lora_(y, x, lora_a, lora_b, slot_ranks, slot_scales, slice_offsets, token_slots, sync)


@_decode_op.register_fake
def _decode_fake(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
    sync: torch.Tensor,
) -> None:
    return None


@torch.library.custom_op("lorax_kernels::lora_shrink", mutates_args=())
def _shrink_op(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    slot_ranks: torch.Tensor,
    token_slots: torch.Tensor,
    sorted_ids: torch.Tensor,
    tile_slot: torch.Tensor,
    tile_start: torch.Tensor,
    tile_end: torch.Tensor,
    num_tiles: int,
    block_m: int,
) -> torch.Tensor:
    return lora_shrink_ref(x, lora_a, slot_ranks, token_slots[: x.shape[0]])


@_shrink_op.register_kernel("cuda")
def _shrink_cuda(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    slot_ranks: torch.Tensor,
    token_slots: torch.Tensor,
    sorted_ids: torch.Tensor,
    tile_slot: torch.Tensor,
    tile_start: torch.Tensor,
    tile_end: torch.Tensor,
    num_tiles: int,
    block_m: int,
) -> torch.Tensor:
    from lorax_kernels.sgmv.triton import shrink

    return shrink(
        x, lora_a, slot_ranks, sorted_ids, tile_slot, tile_start, tile_end, num_tiles, block_m
    )


@_shrink_op.register_fake
def _shrink_fake(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    slot_ranks: torch.Tensor,
    token_slots: torch.Tensor,
    sorted_ids: torch.Tensor,
    tile_slot: torch.Tensor,
    tile_start: torch.Tensor,
    tile_end: torch.Tensor,
    num_tiles: int,
    block_m: int,
) -> torch.Tensor:
    return x.new_empty((lora_a.shape[0], x.shape[0], lora_a.shape[2]), dtype=torch.float32)


@torch.library.custom_op("lorax_kernels::lora_expand_", mutates_args=("y",))
def _expand_op(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
    sorted_ids: torch.Tensor,
    tile_slot: torch.Tensor,
    tile_start: torch.Tensor,
    tile_end: torch.Tensor,
    num_tiles: int,
    block_m: int,
) -> None:
    lora_expand_ref_(
        y, h, lora_b, slot_ranks, slot_scales, slice_offsets, token_slots[: y.shape[0]]
    )


@_expand_op.register_kernel("cuda")
def _expand_cuda(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
    sorted_ids: torch.Tensor,
    tile_slot: torch.Tensor,
    tile_start: torch.Tensor,
    tile_end: torch.Tensor,
    num_tiles: int,
    block_m: int,
) -> None:
    from lorax_kernels.sgmv.triton import expand_

    expand_(
        y,
        h,
        lora_b,
        slot_ranks,
        slot_scales,
        slice_offsets,
        sorted_ids,
        tile_slot,
        tile_start,
        tile_end,
        num_tiles,
        block_m,
    )


@_expand_op.register_fake
def _expand_fake(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
    sorted_ids: torch.Tensor,
    tile_slot: torch.Tensor,
    tile_start: torch.Tensor,
    tile_end: torch.Tensor,
    num_tiles: int,
    block_m: int,
) -> None:
    return None


def _check_table_dtype(activation_dtype: torch.dtype, table: torch.Tensor) -> None:
    """Slot tables are in the activations' dtype, or fp8 (converted exactly after the load)."""
    if table.dtype not in (activation_dtype, torch.float8_e4m3fn):
        raise ValueError(
            f"LoRA tables must be {activation_dtype} or torch.float8_e4m3fn, got {table.dtype}"
        )


def _check_meta(num_rows: int, num_slots: int, meta: LoraBatchMeta) -> None:
    # More rows than tokens is allowed (padding rows of a CUDA-graph bucket, no adapter); fewer
    # would let tiles index rows that do not exist.
    if not meta.num_tokens <= num_rows <= meta.max_tokens:
        raise ValueError(
            f"batch has {num_rows} rows but meta was updated for {meta.num_tokens} tokens "
            f"(at most {meta.max_tokens} rows)"
        )
    if num_slots != meta.num_slots:
        raise ValueError(f"slot table has {num_slots} slots, meta expects {meta.num_slots}")


def _checked_offsets(
    y: torch.Tensor, lora_b: torch.Tensor, slice_offsets: tuple[int, ...] | list[int]
) -> list[int]:
    num_slices = lora_b.shape[0]
    offsets = [int(o) for o in slice_offsets]
    if len(offsets) != num_slices + 1 or offsets[0] != 0 or offsets[-1] != y.shape[1]:
        raise ValueError(f"slice_offsets {offsets} do not cut y's {y.shape[1]} columns")
    if any(hi - lo > lora_b.shape[2] or hi < lo for lo, hi in itertools.pairwise(offsets)):
        raise ValueError(f"a slice in {offsets} is wider than lora_b's {lora_b.shape[2]} rows")
    return offsets


def lora_apply_(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: tuple[int, ...] | list[int],
    meta: LoraBatchMeta,
) -> None:
    """Add every token's LoRA delta in place: ``y[t, slice s] += scale * (x[t] A^T) B^T``.

    Same tensors as :func:`lora_shrink` and :func:`lora_expand_` together (the tables in
    ``x``'s dtype or both in float8 e4m3). Decode-sized batches
    (:func:`uses_fused_kernel`) run the fused one-launch kernel, whose result for a token does
    not depend on the other tokens of the batch; others run shrink then expand over the tiles.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same rows")
    if lora_a.dim() != 4:
        raise ValueError(f"lora_a must be [layers, slots, rank, in], got {tuple(lora_a.shape)}")
    if not uses_fused_kernel(x.shape[0], lora_a.shape[2]):  # these check the tables' dtypes
        h = lora_shrink(x, lora_a, slot_ranks, meta)
        lora_expand_(y, h, lora_b, slot_ranks, slot_scales, slice_offsets, meta)
        return
    _check_table_dtype(x.dtype, lora_a)
    _check_table_dtype(x.dtype, lora_b)
    if x.shape[1] != lora_a.shape[3]:
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, lora_a {tuple(lora_a.shape)}")
    if (
        lora_b.dim() != 4
        or lora_b.shape[:2] != lora_a.shape[:2]
        or lora_b.shape[3] != lora_a.shape[2]
    ):
        raise ValueError(
            f"lora_b {tuple(lora_b.shape)} does not match lora_a {tuple(lora_a.shape)}"
        )
    offsets = _checked_offsets(y, lora_b, slice_offsets)
    _check_meta(x.shape[0], lora_a.shape[1], meta)
    _decode_op(y, x, lora_a, lora_b, slot_ranks, slot_scales, offsets, meta.token_slots, meta.sync)


def lora_shrink(
    x: torch.Tensor, lora_a: torch.Tensor, slot_ranks: torch.Tensor, meta: LoraBatchMeta
) -> torch.Tensor:
    """LoRA down-projection of every token with its own adapter slot.

    x: ``[num_tokens, in_features]``; lora_a: ``[num_slices, num_slots, max_rank, in_features]``
    in x's dtype or float8 e4m3 (read as its exact 16-bit value: a quantization scale is the
    caller's to fold into ``slot_scales``); slot_ranks: ``[num_slots]`` int32. Returns ``h``:
    ``[num_slices, num_tokens, max_rank]`` float32 with
    ``h[s, t, :r] = x[t] @ lora_a[s, slot(t), :r]^T`` and zeros past the slot's rank and for
    tokens without adapter. ``x`` may have more rows than the tokens given to
    ``meta.update_`` (a CUDA-graph bucket); those rows have no adapter and their ``h`` is
    unspecified on CUDA (``lora_expand_`` never reads it).
    """
    if x.dim() != 2 or lora_a.dim() != 4 or x.shape[1] != lora_a.shape[3]:
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, lora_a {tuple(lora_a.shape)}")
    _check_table_dtype(x.dtype, lora_a)
    _check_meta(x.shape[0], lora_a.shape[1], meta)
    return _shrink_op(
        x,
        lora_a,
        slot_ranks,
        meta.token_slots,
        meta.sorted_ids,
        meta.tile_slot,
        meta.tile_start,
        meta.tile_end,
        meta.tiles_for(x.shape[0]),
        meta.block_m,
    )


def lora_expand_(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: tuple[int, ...] | list[int],
    meta: LoraBatchMeta,
) -> None:
    """LoRA up-projection added in place: ``y[t, slice s] += scale * h[s, t, :r] @ B^T``.

    y: ``[num_tokens, out_total]``; h: ``[num_slices, num_tokens, max_rank]`` (from
    :func:`lora_shrink`); lora_b: ``[num_slices, num_slots, max_out_features, max_rank]`` in
    y's dtype or float8 e4m3;
    slot_scales: ``[num_slots]`` float32; slice_offsets: ``num_slices + 1`` column offsets of the
    slices in ``y``. Tokens without adapter are left untouched.
    """
    num_slices = lora_b.shape[0]
    _check_table_dtype(y.dtype, lora_b)
    offsets = _checked_offsets(y, lora_b, slice_offsets)
    if h.shape != (num_slices, y.shape[0], lora_b.shape[3]):
        raise ValueError(f"h has shape {tuple(h.shape)}, lora_b {tuple(lora_b.shape)}")
    _check_meta(y.shape[0], lora_b.shape[1], meta)
    _expand_op(
        y,
        h,
        lora_b,
        slot_ranks,
        slot_scales,
        offsets,
        meta.token_slots,
        meta.sorted_ids,
        meta.tile_slot,
        meta.tile_start,
        meta.tile_end,
        meta.tiles_for(y.shape[0]),
        meta.block_m,
    )
