"""Multi-LoRA shrink/expand (SGMV): one launch for a batch that mixes any adapters and ranks.

``lora_apply_`` (``y += LoRA(x)``) is the layer-level entry point: decode-sized batches go to the
fused one-launch kernel (``sgmv.decode``, or where it is faster its dependency-free per-token
form ``sgmv.decode_token``, the same bits in 16-bit: ``routing.uses_token_kernel``), larger ones to
``lora_shrink`` + ``lora_expand_`` over the tile layout (``sgmv.triton``), which share each
adapter read across a run of tokens. Every op dispatches on the device of its inputs: Triton
kernels on CUDA, registered as torch custom ops so they can be captured in CUDA graphs; the fp32
reference (``sgmv.reference``) everywhere else.
"""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.sgmv.checks import (
    check_decode_shapes,
    check_expand_inputs,
    check_same_rows,
    check_shrink_inputs,
)
from lorax_kernels.sgmv.meta import LoraBatchMeta
from lorax_kernels.sgmv.reference import lora_expand_ref_, lora_shrink_ref
from lorax_kernels.sgmv.routing import DECODE_MAX_ROWS, uses_fused_kernel, uses_token_kernel
from lorax_kernels.sgmv.split import lora_expand_partials_, lora_shrink_partials

__all__ = [
    "DECODE_MAX_ROWS",
    "LoraBatchMeta",
    "lora_apply_",
    "lora_expand_",
    "lora_expand_partials_",
    "lora_shrink",
    "lora_shrink_partials",
    "uses_fused_kernel",
]


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
    tables = (lora_a, lora_b, slot_ranks, slot_scales, slice_offsets, token_slots)
    from lorax_kernels.sgmv.decode_token import decode_token_lora_, loads_a_whole

    _, _, table_rank, in_features = lora_a.shape
    whole = loads_a_whole(in_features, table_rank, slice_offsets)
    if uses_token_kernel(x.shape[0], table_rank, slice_offsets, whole):
        decode_token_lora_(y, x, *tables)
        return
    from lorax_kernels.sgmv.decode import decode_lora_

    decode_lora_(y, x, *tables, sync)


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
    (:func:`uses_fused_kernel`) run the fused one-launch kernel (or its per-token form where
    :func:`~lorax_kernels.sgmv.routing.uses_token_kernel`: the same bits in 16-bit), whose
    result for a token does not depend on the other tokens of the batch; others run shrink then
    expand over the tiles.
    """
    check_same_rows(x, y)
    if lora_a.dim() == 4 and not uses_fused_kernel(x.shape[0], lora_a.shape[2]):
        h = lora_shrink(x, lora_a, slot_ranks, meta)  # these check the tables' dtypes
        lora_expand_(y, h, lora_b, slot_ranks, slot_scales, slice_offsets, meta)
        return
    offsets = check_decode_shapes(x, y, lora_a, lora_b, slice_offsets, meta)
    dispatch.call(
        _decode_op,
        _decode_cuda,
        y,
        x,
        lora_a,
        lora_b,
        slot_ranks,
        slot_scales,
        offsets,
        meta.token_slots,
        meta.sync,
    )


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
    check_shrink_inputs(x, lora_a, meta)
    return dispatch.call(
        _shrink_op,
        _shrink_cuda,
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
    offsets = check_expand_inputs(y, lora_b, slice_offsets, meta)
    if h.shape != (lora_b.shape[0], y.shape[0], lora_b.shape[3]):
        raise ValueError(f"h has shape {tuple(h.shape)}, lora_b {tuple(lora_b.shape)}")
    dispatch.call(
        _expand_op,
        _expand_cuda,
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
