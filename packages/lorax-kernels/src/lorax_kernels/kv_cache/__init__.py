"""Write new K/V rows into the paged KV cache (Triton on CUDA, reference elsewhere).

A cache is 16-bit, fp32, or fp8 e4m3 (``FP8_KV_DTYPE``) with one fp32 scale for K and one for V:
an fp8 cache stores ``clamp(x / scale, ±448)`` and the attention kernels read ``cached * scale``.
"""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.kv_cache.reference import FP8_KV_DTYPE, FP8_MAX, reshape_and_cache_ref_

__all__ = ["FP8_KV_DTYPE", "FP8_MAX", "check_kv_scales", "reshape_and_cache_"]


def check_kv_scales(k_cache: torch.Tensor, k_scale: float, v_scale: float) -> None:
    """Raise ``ValueError`` unless the scales suit the cache: positive, and 1.0 unless fp8.

    Only fp8 caches are scaled; a scale on a 16-bit cache would be a silent no-op.
    """
    if not (k_scale > 0 and v_scale > 0):
        raise ValueError(f"KV scales must be positive, got {k_scale}, {v_scale}")
    if k_cache.dtype != FP8_KV_DTYPE and (k_scale != 1.0 or v_scale != 1.0):
        raise ValueError(f"KV scales apply to fp8 caches only, not {k_cache.dtype}")


@torch.library.custom_op("lorax_kernels::reshape_and_cache_", mutates_args=("k_cache", "v_cache"))
def _cache_op(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: float,
    v_scale: float,
) -> None:
    reshape_and_cache_ref_(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)


@_cache_op.register_kernel("cuda")
def _cache_cuda(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: float,
    v_scale: float,
) -> None:
    from lorax_kernels.kv_cache.triton import reshape_and_cache_

    reshape_and_cache_(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)


@_cache_op.register_fake
def _cache_fake(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: float,
    v_scale: float,
) -> None:
    return None


def reshape_and_cache_(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Store ``k, v``: ``[num_tokens, num_kv_heads, head_dim]`` into the caches in place.

    Caches: ``[num_blocks, block_size, num_kv_heads, head_dim]``; slot_mapping: ``[num_tokens]``
    int64, ``block * block_size + offset``, ``-1`` = skip (padding rows of a CUDA graph). An fp8
    cache gets ``clamp(k / k_scale, ±448)`` (and likewise V); other caches take scales of 1.0.
    """
    if k.shape != v.shape or k.shape[1:] != k_cache.shape[2:] or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"shape mismatch: k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"
        )
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"slot_mapping {tuple(slot_mapping.shape)} for {k.shape[0]} tokens")
    check_kv_scales(k_cache, k_scale, v_scale)
    dispatch.call(
        _cache_op, _cache_cuda, k, v, k_cache, v_cache, slot_mapping, float(k_scale), float(v_scale)
    )
