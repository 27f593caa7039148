"""Write new K/V rows into the paged KV cache (Triton on CUDA, reference elsewhere)."""

from __future__ import annotations

import torch

from lorax_kernels.kv_cache.reference import reshape_and_cache_ref_

__all__ = ["reshape_and_cache_"]


@torch.library.custom_op("lorax_kernels::reshape_and_cache_", mutates_args=("k_cache", "v_cache"))
def _cache_op(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    reshape_and_cache_ref_(k, v, k_cache, v_cache, slot_mapping)


@_cache_op.register_kernel("cuda")
def _cache_cuda(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    from lorax_kernels.kv_cache.triton import reshape_and_cache_

    reshape_and_cache_(k, v, k_cache, v_cache, slot_mapping)


@_cache_op.register_fake
def _cache_fake(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    return None


def reshape_and_cache_(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store ``k, v``: ``[num_tokens, num_kv_heads, head_dim]`` into the caches in place.

    Caches: ``[num_blocks, block_size, num_kv_heads, head_dim]``; slot_mapping: ``[num_tokens]``
    int64, ``block * block_size + offset``, ``-1`` = skip (padding rows of a CUDA graph).
    """
    if k.shape != v.shape or k.shape[1:] != k_cache.shape[2:] or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"shape mismatch: k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"
        )
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"slot_mapping {tuple(slot_mapping.shape)} for {k.shape[0]} tokens")
    _cache_op(k, v, k_cache, v_cache, slot_mapping)
