"""Paged decode attention: one query token per sequence over its paged KV (GQA, sliding window).

Triton on CUDA (split-K "flash-decoding" for long contexts, merged in the same launch; registered
as a torch custom op so it can be captured in a CUDA graph), the fp32 reference elsewhere. The
caches may be fp8 e4m3 with a K and a V scale (see ``lorax_kernels.kv_cache``).
"""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.decode_attention.reference import paged_decode_attention_ref
from lorax_kernels.kv_cache import check_kv_scales

__all__ = ["paged_decode_attention"]


@torch.library.custom_op("lorax_kernels::paged_decode_attention", mutates_args=())
def _decode_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    k_scale: float,
    v_scale: float,
) -> torch.Tensor:
    return paged_decode_attention_ref(
        q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, k_scale, v_scale
    )


@_decode_op.register_kernel("cuda")
def _decode_cuda(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    k_scale: float,
    v_scale: float,
) -> torch.Tensor:
    from lorax_kernels.decode_attention.triton import paged_decode_attention

    return paged_decode_attention(
        q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, k_scale, v_scale
    )


@_decode_op.register_fake
def _decode_fake(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    k_scale: float,
    v_scale: float,
) -> torch.Tensor:
    return torch.empty_like(q)


def check_attention_shapes(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor
) -> None:
    """Raise ``ValueError`` unless q, the caches and the block tables fit together."""
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"bad shapes: q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, "
            f"v_cache {tuple(v_cache.shape)}"
        )
    if q.shape[2] != k_cache.shape[3] or q.shape[1] % k_cache.shape[2]:
        raise ValueError(
            f"q {tuple(q.shape)} does not fit the cache's {k_cache.shape[2]} kv heads of "
            f"dim {k_cache.shape[3]}"
        )
    if block_tables.dim() != 2:
        raise ValueError(f"block_tables must be 2-D, got {tuple(block_tables.shape)}")


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Attention of one new query token per sequence over its whole paged context.

    q: ``[num_seqs, num_q_heads, head_dim]``; caches: ``[num_blocks, block_size, num_kv_heads,
    head_dim]``; block_tables: ``[num_seqs, max_blocks]`` int32; seq_lens: ``[num_seqs]`` int32,
    the KV length including the new token (``0`` = padding row, output zeros). With
    ``sliding_window`` the query sees only the last ``sliding_window`` positions. fp8 caches
    (``lorax_kernels.kv_cache.FP8_KV_DTYPE``) are read as ``cached * k_scale`` (and ``v_scale``);
    other caches take scales of 1.0. Returns ``[num_seqs, num_q_heads, head_dim]`` in q's dtype.
    """
    check_attention_shapes(q, k_cache, v_cache, block_tables)
    if seq_lens.shape != (q.shape[0],) or block_tables.shape[0] != q.shape[0]:
        raise ValueError(
            f"seq_lens {tuple(seq_lens.shape)} / block_tables {tuple(block_tables.shape)} "
            f"for {q.shape[0]} sequences"
        )
    if sliding_window is not None and sliding_window <= 0:
        raise ValueError(f"sliding_window must be positive, got {sliding_window}")
    check_kv_scales(k_cache, k_scale, v_scale)
    return dispatch.call(
        _decode_op,
        _decode_cuda,
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        float(scale),
        sliding_window,
        float(k_scale),
        float(v_scale),
    )
