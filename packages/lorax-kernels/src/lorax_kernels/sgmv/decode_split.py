"""The fused decode kernel's two halves as launches of their own (``sgmv.split`` wraps them as
custom ops): the shrink units, which read only ``x`` and the A tables, and the expand units over
the complete partials, which need no counters and never wait. Same units and sums as
``sgmv.decode``, so the same result bit for bit."""

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
)


@triton.jit
def _shrink_kernel(
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
    PDL: tl.constexpr,
):
    pdl_entry(PDL)
    shrink_unit(
        tl.program_id(0),
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


@triton.jit
def _expand_kernel(
    b_ptr,
    y_ptr,
    part_ptr,
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
    PDL: tl.constexpr,
):
    pdl_entry(PDL)
    expand_unit(
        tl.program_id(0),
        b_ptr,
        y_ptr,
        part_ptr,
        part_ptr,  # no counters: the partials are complete before this launch
        part_ptr,
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
        False,
    )


def decode_partials_shape(
    num_rows: int, lora_a: torch.Tensor, slice_offsets: list[int]
) -> tuple[int, int, int]:
    """Shape of :func:`decode_shrink_`'s fp32 partials: ``[rows * slices, K chunks, block_r]``."""
    num_slices, _, max_rank, in_features = lora_a.shape
    c = chunking(in_features, max_rank, slice_offsets, UNIT_ELEMENTS)
    return (num_rows * num_slices, c.split, c.block_r)


def decode_shrink_(
    partials: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    slot_ranks: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
    *,
    num_warps: int = 4,
) -> None:
    """The fused kernel's shrink units as a launch of their own: ``partials[t * S + s, j]`` =
    ``x[t, K_j] @ A[s, slot(t), :, K_j]^T`` (rows of tokens without adapter left unwritten).

    With :func:`decode_expand_` after it, the same result as :func:`decode_lora_`, bit for bit,
    in two launches that need no counters: the shrink reads only ``x`` and the A tables, so it
    may run on a side stream beside the base projection that writes ``y``. partials:
    fp32 of :func:`decode_partials_shape`.
    """
    num_slices, _, max_rank, in_features = lora_a.shape
    num_rows = x.shape[0]
    check_slices(num_slices)
    c = chunking(in_features, max_rank, slice_offsets, UNIT_ELEMENTS)
    expected = decode_partials_shape(num_rows, lora_a, slice_offsets)
    if partials.shape != expected or not partials.is_contiguous():
        raise ValueError(f"partials {tuple(partials.shape)}: contiguous {expected} needed")
    if partials.dtype != torch.float32:
        raise ValueError(f"partials must be float32, got {partials.dtype}")
    if num_rows == 0 or max_rank == 0:
        return
    if x.stride(1) != 1:
        x = x.contiguous()
    if lora_a.stride(3) != 1:
        raise ValueError("lora_a must be contiguous in its last dimension")
    pdl, launch = launch_options(x.device)
    _shrink_kernel[(num_rows * num_slices * c.split,)](
        x,
        lora_a,
        partials,
        slot_ranks,
        token_slots,
        in_features,
        x.stride(0),
        lora_a.stride(0),
        lora_a.stride(1),
        lora_a.stride(2),
        NUM_SLICES=num_slices,
        SPLIT=c.split,
        BLOCK_R=c.block_r,
        BLOCK_K=c.block_k,
        PDL=pdl,
        num_warps=num_warps,
        **launch,
    )


def decode_expand_(
    y: torch.Tensor,
    partials: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
    *,
    num_warps: int = 4,
) -> None:
    """The fused kernel's expand units as a launch of their own, over complete ``partials``
    from :func:`decode_shrink_`: ``y[t, slice s] += scale * (sum_j partials[t * S + s, j]) B^T``,
    the partials summed in chunk order as the fused kernel does."""
    num_slices, _, _, max_rank = lora_b.shape
    num_rows = y.shape[0]
    check_slices(num_slices)
    if partials.dim() != 3 or partials.shape[0] != num_rows * num_slices:
        raise ValueError(f"partials {tuple(partials.shape)} do not match {num_rows} rows")
    # The N chunking does not depend on in_features (1 here).
    c = chunking(1, max_rank, slice_offsets, UNIT_ELEMENTS)
    if partials.shape[2] != c.block_r:
        raise ValueError(f"partials {tuple(partials.shape)} do not match rank {max_rank}")
    if num_rows == 0 or max_rank == 0:
        return
    if y.stride(1) != 1 or lora_b.stride(3) != 1:
        raise ValueError("y and lora_b must be contiguous in their last dimension")
    pdl, launch = launch_options(y.device)
    _expand_kernel[(num_rows * num_slices * c.n_chunks,)](
        lora_b,
        y,
        partials,
        slot_ranks,
        slot_scales,
        token_slots,
        *padded_offsets(slice_offsets),
        lora_b.stride(0),
        lora_b.stride(1),
        lora_b.stride(2),
        y.stride(0),
        NUM_SLICES=num_slices,
        SPLIT=partials.shape[1],
        N_CHUNKS=c.n_chunks,
        BLOCK_R=c.block_r,
        BLOCK_N=c.block_n,
        VEC=c.vec,
        PDL=pdl,
        num_warps=num_warps,
        **launch,
    )
