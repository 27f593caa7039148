"""Plain-PyTorch write of new K/V rows into the paged cache (16-bit, fp32 or fp8 e4m3)."""

from __future__ import annotations

import torch

# The KV cache's 8-bit format and its largest finite value: rows are clamped to it before the
# conversion, since an out-of-range value would otherwise become NaN.
FP8_KV_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_KV_DTYPE).max)  # 448


def to_cache_dtype(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """``x`` as stored in a cache of ``dtype``: fp8 caches hold ``clamp(x / scale)``.

    The division is a product with the fp32 reciprocal, as in the Triton kernel, so both round
    alike for any scale.
    """
    if dtype == FP8_KV_DTYPE:
        inverse = torch.tensor(1.0 / scale, dtype=torch.float32)
        return (x.float() * inverse).clamp(-FP8_MAX, FP8_MAX).to(dtype)
    return x.to(dtype)


def reshape_and_cache_ref_(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Write ``k[t], v[t]`` (``[num_kv_heads, head_dim]``) to cache slot ``slot_mapping[t]``.

    The caches are ``[num_blocks, block_size, num_kv_heads, head_dim]`` and a slot is
    ``block * block_size + offset``; slot ``-1`` skips the row. fp8 caches store the rows
    divided by their scale (``k_scale``, ``v_scale``), clamped to ``±FP8_MAX``.
    """
    keep = slot_mapping >= 0  # [num_tokens]
    slots = slot_mapping[keep].long()
    k_cache.view(-1, *k_cache.shape[2:])[slots] = to_cache_dtype(k[keep], k_cache.dtype, k_scale)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = to_cache_dtype(v[keep], v_cache.dtype, v_scale)
