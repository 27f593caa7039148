"""Plain-PyTorch write of new K/V rows into the paged cache."""

from __future__ import annotations

import torch


def reshape_and_cache_ref_(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write ``k[t], v[t]`` (``[num_kv_heads, head_dim]``) to cache slot ``slot_mapping[t]``.

    The caches are ``[num_blocks, block_size, num_kv_heads, head_dim]`` and a slot is
    ``block * block_size + offset``; slot ``-1`` skips the row.
    """
    keep = slot_mapping >= 0  # [num_tokens]
    slots = slot_mapping[keep].long()
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)
