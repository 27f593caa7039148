"""Rotary position embedding applied in place to the q and k heads (Triton on CUDA, reference
elsewhere). Every rope variant (default, linear, Llama-3 scaling) differs only in the cos/sin
table the caller passes; the rotation is HF's half-split one.
"""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.rotary.reference import rotary_embedding_ref_

__all__ = ["rotary_embedding_"]


@torch.library.custom_op("lorax_kernels::rotary_embedding_", mutates_args=("qk",))
def _rotary_op(qk: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    rotary_embedding_ref_(qk, positions, cos_sin)


@_rotary_op.register_kernel("cuda")
def _rotary_cuda(qk: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    from lorax_kernels.rotary.triton import rotary_embedding_

    rotary_embedding_(qk, positions, cos_sin)


@_rotary_op.register_fake
def _rotary_fake(qk: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    return None


def rotary_embedding_(qk: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """Rotate ``qk: [num_tokens, num_heads, head_dim]`` in place by each token's position.

    ``qk`` is typically a view of the fused qkv output covering the q and k heads (its last
    dimension contiguous). ``positions: [num_tokens]`` int64, each below ``max_positions``;
    ``cos_sin: [max_positions, head_dim]`` float32, ``[cos | sin]`` of the ``head_dim / 2``
    frequencies per position. Computed in qk's dtype with HF's rounding.
    """
    if qk.dim() != 3 or qk.shape[-1] % 2:
        raise ValueError(f"qk must be [tokens, heads, even head_dim], got {tuple(qk.shape)}")
    if positions.shape != (qk.shape[0],):
        raise ValueError(f"positions {tuple(positions.shape)} for {qk.shape[0]} tokens")
    if cos_sin.dim() != 2 or cos_sin.shape[1] != qk.shape[-1] or cos_sin.dtype != torch.float32:
        raise ValueError(
            f"cos_sin must be float32 [max_positions, {qk.shape[-1]}], got "
            f"{cos_sin.dtype} {tuple(cos_sin.shape)}"
        )
    dispatch.call(_rotary_op, _rotary_cuda, qk, positions, cos_sin)
