"""Decode-sized multi-LoRA in two launches, so the shrink can run beside the base projection.

``lora_apply_`` adds the LoRA delta after the base projection has written ``y``: the fused
kernel's whole chain (shrink, arrival counters, expand) follows the base GEMM. Only the expand
needs ``y``; the shrink reads nothing but ``x`` and the A tables. :func:`lora_shrink_partials`
is the fused kernel's shrink units as a launch of their own, which a caller may put on a side
stream that forks where ``x`` is ready; :func:`lora_expand_partials_` is its expand units, run
after both the base projection and the shrink. Together they give ``lora_apply_``'s result bit
for bit (same units, same fixed summation order), for the batches ``uses_fused_kernel`` accepts.
"""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.sgmv.checks import check_expand_inputs, check_shrink_inputs
from lorax_kernels.sgmv.meta import LoraBatchMeta
from lorax_kernels.sgmv.reference import lora_expand_ref_, lora_shrink_ref
from lorax_kernels.sgmv.routing import uses_fused_kernel


def _partials_shape(
    num_rows: int, lora_a: torch.Tensor, slice_offsets: list[int]
) -> tuple[int, int, int]:
    from lorax_kernels.sgmv.decode_split import decode_partials_shape

    return decode_partials_shape(num_rows, lora_a, slice_offsets)


@torch.library.custom_op("lorax_kernels::lora_shrink_partials", mutates_args=())
def _shrink_op(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    slot_ranks: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
) -> torch.Tensor:
    # The reference puts each whole h in the first K chunk: the expand sums over the chunks.
    num_rows, (num_slices, _, max_rank, _) = x.shape[0], lora_a.shape
    partials = torch.zeros(_partials_shape(num_rows, lora_a, slice_offsets), device=x.device)
    h = lora_shrink_ref(x, lora_a, slot_ranks, token_slots[:num_rows])  # [S, T, R]
    partials[:, 0, :max_rank] = h.transpose(0, 1).reshape(num_rows * num_slices, max_rank)
    return partials


@_shrink_op.register_kernel("cuda")
def _shrink_cuda(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    slot_ranks: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
) -> torch.Tensor:
    from lorax_kernels.sgmv.decode_split import decode_shrink_

    partials = torch.empty(
        _partials_shape(x.shape[0], lora_a, slice_offsets), dtype=torch.float32, device=x.device
    )
    decode_shrink_(partials, x, lora_a, slot_ranks, slice_offsets, token_slots)
    return partials


@_shrink_op.register_fake
def _shrink_fake(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    slot_ranks: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
) -> torch.Tensor:
    shape = _partials_shape(x.shape[0], lora_a, slice_offsets)
    return x.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("lorax_kernels::lora_expand_partials_", mutates_args=("y",))
def _expand_op(
    y: torch.Tensor,
    partials: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
) -> None:
    num_rows, (num_slices, _, _, max_rank) = y.shape[0], lora_b.shape
    h = partials.sum(1)[:, :max_rank].reshape(num_rows, num_slices, max_rank).transpose(0, 1)
    lora_expand_ref_(y, h, lora_b, slot_ranks, slot_scales, slice_offsets, token_slots[:num_rows])


@_expand_op.register_kernel("cuda")
def _expand_cuda(
    y: torch.Tensor,
    partials: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
) -> None:
    from lorax_kernels.sgmv.decode_split import decode_expand_

    decode_expand_(y, partials, lora_b, slot_ranks, slot_scales, slice_offsets, token_slots)


@_expand_op.register_fake
def _expand_fake(
    y: torch.Tensor,
    partials: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: list[int],
    token_slots: torch.Tensor,
) -> None:
    return None


def lora_shrink_partials(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    slot_ranks: torch.Tensor,
    slice_offsets: tuple[int, ...] | list[int],
    meta: LoraBatchMeta,
) -> torch.Tensor:
    """The shrink half of ``lora_apply_`` for a decode-sized batch: reads ``x`` and the A
    tables only. Returns the fp32 partials :func:`lora_expand_partials_` consumes
    (``[rows * slices, K chunks, block_r]``; rows of tokens without adapter unspecified)."""
    check_shrink_inputs(x, lora_a, meta)
    if not uses_fused_kernel(x.shape[0], lora_a.shape[2]):
        raise ValueError(
            f"{x.shape[0]} rows at table rank {lora_a.shape[2]} are not a decode-sized batch"
        )
    return dispatch.call(
        _shrink_op,
        _shrink_cuda,
        x,
        lora_a,
        slot_ranks,
        [int(o) for o in slice_offsets],
        meta.token_slots,
    )


def lora_expand_partials_(
    y: torch.Tensor,
    partials: torch.Tensor,
    lora_b: torch.Tensor,
    slot_ranks: torch.Tensor,
    slot_scales: torch.Tensor,
    slice_offsets: tuple[int, ...] | list[int],
    meta: LoraBatchMeta,
) -> None:
    """The expand half: ``y[t, slice s] += scale * h B^T`` with ``h`` summed from
    :func:`lora_shrink_partials`'s output; with it, ``lora_apply_``'s result bit for bit."""
    offsets = check_expand_inputs(y, lora_b, slice_offsets, meta)
    dispatch.call(
        _expand_op,
        _expand_cuda,
        y,
        partials,
        lora_b,
        slot_ranks,
        slot_scales,
        offsets,
        meta.token_slots,
    )
