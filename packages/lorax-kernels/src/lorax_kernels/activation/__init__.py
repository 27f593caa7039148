"""The SwiGLU gate of the MLP, ``silu(gate) * up`` (Triton on CUDA, reference elsewhere)."""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.activation.reference import silu_and_mul_ref

__all__ = ["silu_and_mul"]


@torch.library.custom_op("lorax_kernels::silu_and_mul", mutates_args=())
def _silu_and_mul_op(gate_up: torch.Tensor) -> torch.Tensor:
    return silu_and_mul_ref(gate_up)


@_silu_and_mul_op.register_kernel("cuda")
def _silu_and_mul_cuda(gate_up: torch.Tensor) -> torch.Tensor:
    from lorax_kernels.activation.triton import silu_and_mul

    return silu_and_mul(gate_up)


@_silu_and_mul_op.register_fake
def _silu_and_mul_fake(gate_up: torch.Tensor) -> torch.Tensor:
    return gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``gate_up: [..., 2 * width]`` laid out ``[gate | up]``.

    Returns a new ``[..., width]`` tensor in gate_up's dtype; the SiLU is computed in float32 and
    rounded to that dtype before the product, as HF's MLP computes it.
    """
    if gate_up.dim() == 0 or gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up's last dimension must be even, got {tuple(gate_up.shape)}")
    return dispatch.call(_silu_and_mul_op, _silu_and_mul_cuda, gate_up)
