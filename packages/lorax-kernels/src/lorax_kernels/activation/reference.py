"""Plain-PyTorch SwiGLU gate: SiLU of the first half of the gate_up projection times the second."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` along the last dimension, in its dtype.

    As in HF's MLP, the SiLU is rounded to the activation dtype before the product.
    """
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
