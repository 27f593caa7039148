"""Argument checks shared by the multi-LoRA entry points: clear errors before any launch."""

from __future__ import annotations

import itertools

import torch

from lorax_kernels.sgmv.meta import LoraBatchMeta


def check_table_dtype(activation_dtype: torch.dtype, table: torch.Tensor) -> None:
    """Slot tables are in the activations' dtype, or fp8 (converted exactly after the load)."""
    if table.dtype not in (activation_dtype, torch.float8_e4m3fn):
        raise ValueError(
            f"LoRA tables must be {activation_dtype} or torch.float8_e4m3fn, got {table.dtype}"
        )


def check_meta(num_rows: int, num_slots: int, meta: LoraBatchMeta) -> None:
    # More rows than tokens is allowed (padding rows of a CUDA-graph bucket, no adapter); fewer
    # would let tiles index rows that do not exist.
    if not meta.num_tokens <= num_rows <= meta.max_tokens:
        raise ValueError(
            f"batch has {num_rows} rows but meta was updated for {meta.num_tokens} tokens "
            f"(at most {meta.max_tokens} rows)"
        )
    if num_slots != meta.num_slots:
        raise ValueError(f"slot table has {num_slots} slots, meta expects {meta.num_slots}")


def checked_offsets(
    y: torch.Tensor, lora_b: torch.Tensor, slice_offsets: tuple[int, ...] | list[int]
) -> list[int]:
    num_slices = lora_b.shape[0]
    offsets = [int(o) for o in slice_offsets]
    if len(offsets) != num_slices + 1 or offsets[0] != 0 or offsets[-1] != y.shape[1]:
        raise ValueError(f"slice_offsets {offsets} do not cut y's {y.shape[1]} columns")
    if any(hi - lo > lora_b.shape[2] or hi < lo for lo, hi in itertools.pairwise(offsets)):
        raise ValueError(f"a slice in {offsets} is wider than lora_b's {lora_b.shape[2]} rows")
    return offsets


def check_same_rows(x: torch.Tensor, y: torch.Tensor) -> None:
    """``x`` and ``y`` are 2-D with one row per token each."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same rows")


def check_shrink_inputs(x: torch.Tensor, lora_a: torch.Tensor, meta: LoraBatchMeta) -> None:
    """``x`` ``[rows, in]`` against ``lora_a`` ``[slices, slots, rank, in]`` and the meta."""
    if x.dim() != 2:
        raise ValueError(f"x must be [rows, in_features], got {tuple(x.shape)}")
    if lora_a.dim() != 4:
        raise ValueError(f"lora_a must be [layers, slots, rank, in], got {tuple(lora_a.shape)}")
    check_table_dtype(x.dtype, lora_a)
    if x.shape[1] != lora_a.shape[3]:
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, lora_a {tuple(lora_a.shape)}")
    check_meta(x.shape[0], lora_a.shape[1], meta)


def check_expand_inputs(
    y: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: tuple[int, ...] | list[int],
    meta: LoraBatchMeta,
) -> list[int]:
    """``y`` ``[rows, out]`` against ``lora_b`` ``[slices, slots, width, rank]``, the slices and
    the meta; returns the slice offsets as ints."""
    if y.dim() != 2:
        raise ValueError(f"y must be [rows, out_features], got {tuple(y.shape)}")
    if lora_b.dim() != 4:
        raise ValueError(f"lora_b must be [layers, slots, out, rank], got {tuple(lora_b.shape)}")
    check_table_dtype(y.dtype, lora_b)
    offsets = checked_offsets(y, lora_b, slice_offsets)
    check_meta(y.shape[0], lora_b.shape[1], meta)
    return offsets


def check_decode_shapes(
    x: torch.Tensor,
    y: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: tuple[int, ...] | list[int],
    meta: LoraBatchMeta,
) -> list[int]:
    """Everything else the fused decode kernel needs of its arguments, once the caller has
    checked :func:`check_same_rows`; returns the slice offsets."""
    check_shrink_inputs(x, lora_a, meta)
    if lora_b.dim() == 4 and (
        lora_b.shape[:2] != lora_a.shape[:2] or lora_b.shape[3] != lora_a.shape[2]
    ):
        raise ValueError(
            f"lora_b {tuple(lora_b.shape)} does not match lora_a {tuple(lora_a.shape)}"
        )
    return check_expand_inputs(y, lora_b, slice_offsets, meta)
