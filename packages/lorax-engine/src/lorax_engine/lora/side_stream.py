"""A projection plus its LoRA delta, the LoRA shrink on a side stream beside the base GEMM.

``y = x W^T`` and the shrink ``h = x A^T`` both need only ``x``; only the expand ``y += h B^T``
needs ``y``. For decode-sized batches in the captured decode graphs the shrink runs on a side
stream forked where ``x`` is ready and joined before the expand, so the shrink's adapter reads
and its chain of latencies overlap the base GEMM instead of following it; what is left after the
GEMM is the expand alone, one launch without any waiting between its programs. The result is
the fused kernel's, bit for bit (``lorax_kernels.lora_shrink_partials``). Inside the capture the
fork and join become graph edges, so the decode graphs replay both streams at no host cost.

Memory: the partials are allocated on the side stream and only used on the main stream after
the join; the side stream's next allocation is enqueued after its next fork, which waits for
the main stream, so the allocator never hands out their block while the expand still reads it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

import lorax_kernels
from lorax_engine.lora.slot_table import LoraSlotTable
from lorax_kernels import LoraBatchMeta

_enabled = True


def set_enabled(enabled: bool) -> None:
    """Overlap the shrink with the base GEMM from now on, or not (the benchmarks' A/B)."""
    global _enabled
    _enabled = enabled


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def _overlaps(x: torch.Tensor, table: LoraSlotTable) -> bool:
    # Only while a CUDA graph is captured: there the fork and join are graph edges, free at
    # replay. Run eagerly (prefill and mixed steps) each would cost event records, waits and
    # stream switches on the host, four projections a layer, in steps whose host time is on the
    # critical path; those keep the one fused launch.
    return (
        _enabled
        and x.is_cuda
        and torch.cuda.is_current_stream_capturing()
        and lorax_kernels.uses_fused_kernel(x.shape[0], table.max_rank)
    )


def project_with_lora(
    base: Callable[[], torch.Tensor],
    x: torch.Tensor,
    table: LoraSlotTable,
    meta: LoraBatchMeta,
) -> torch.Tensor:
    """``base() + LoRA(x)`` for every token's adapter slot: ``base`` computes ``x W^T (+ b)``
    into a new ``[rows, out]`` tensor, to which the delta is added in place."""
    if not _overlaps(x, table):
        y = base()
        lorax_kernels.lora_apply_(
            y,
            x,
            table.lora_a,
            table.lora_b,
            table.slot_ranks,
            table.slot_scales,
            table.slice_offsets,
            meta,
        )
        return y
    main = torch.cuda.current_stream(x.device)
    side = _side_stream(x.device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        partials = lorax_kernels.lora_shrink_partials(
            x, table.lora_a, table.slot_ranks, table.slice_offsets, meta
        )
    y = base()
    main.wait_stream(side)
    lorax_kernels.lora_expand_partials_(
        y,
        partials,
        table.lora_b,
        table.slot_ranks,
        table.slot_scales,
        table.slice_offsets,
        meta,
    )
    return y
