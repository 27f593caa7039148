"""Paged prefill/extend attention: query runs attend causally to their paged prefix and themselves.

Triton on CUDA (registered as a torch custom op), the fp32 reference elsewhere. The caches may be
fp8 e4m3 with a K and a V scale (see ``lorax_kernels.kv_cache``).
"""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.decode_attention import check_attention_shapes
from lorax_kernels.kv_cache import check_kv_scales
from lorax_kernels.prefill_attention.reference import paged_prefill_attention_ref

__all__ = ["paged_prefill_attention"]


@torch.library.custom_op("lorax_kernels::paged_prefill_attention", mutates_args=())
def _prefill_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    k_scale: float,
    v_scale: float,
) -> torch.Tensor:
    return paged_prefill_attention_ref(
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        scale,
        sliding_window,
        k_scale,
        v_scale,
    )


@_prefill_op.register_kernel("cuda")
def _prefill_cuda(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    k_scale: float,
    v_scale: float,
) -> torch.Tensor:
    from lorax_kernels.prefill_attention.triton import paged_prefill_attention

    return paged_prefill_attention(
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        scale,
        sliding_window,
        k_scale,
        v_scale,
    )


@_prefill_op.register_fake
def _prefill_fake(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    k_scale: float,
    v_scale: float,
) -> torch.Tensor:
    return torch.empty_like(q)


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Causal attention of variable-length query runs over their paged KV (prefix + the run).

    q: ``[num_tokens, num_q_heads, head_dim]``; query_start_loc: ``[num_seqs + 1]`` int32 row
    offsets of each sequence's run in q; seq_lens: ``[num_seqs]`` int32 whole KV length (prefix
    + run), the run's K/V already in the cache. Query ``i`` of sequence ``s`` sits at position
    ``seq_lens[s] - q_len + i`` and sees positions ``<=`` its own (and ``>`` its own minus
    ``sliding_window``). fp8 caches are read as ``cached * k_scale`` (and ``v_scale``); other
    caches take scales of 1.0. Returns ``[num_tokens, num_q_heads, head_dim]`` in q's dtype.
    """
    check_attention_shapes(q, k_cache, v_cache, block_tables)
    num_seqs = seq_lens.shape[0]
    if query_start_loc.shape != (num_seqs + 1,) or block_tables.shape[0] != num_seqs:
        raise ValueError(
            f"query_start_loc {tuple(query_start_loc.shape)} / block_tables "
            f"{tuple(block_tables.shape)} for {num_seqs} sequences"
        )
    if sliding_window is not None and sliding_window <= 0:
        raise ValueError(f"sliding_window must be positive, got {sliding_window}")
    check_kv_scales(k_cache, k_scale, v_scale)
    return dispatch.call(
        _prefill_op,
        _prefill_cuda,
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        float(scale),
        sliding_window,
        float(k_scale),
        float(v_scale),
    )
