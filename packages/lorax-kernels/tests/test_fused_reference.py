"""The fused elementwise ops' references (the CPU path) against independent formulations, their
argument checks, and ``torch.library.opcheck`` of their custom ops."""

from __future__ import annotations

import pytest
import torch

from lorax_kernels import fused_add_rms_norm, rms_norm, rotary_embedding_, silu_and_mul


def _hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm.forward, written out."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_norms_follow_hf(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 48, generator=gen).to(dtype)
    residual = torch.randn(5, 3, 48, generator=gen).to(dtype)
    weight = (torch.rand(48, generator=gen) + 0.5).to(dtype)
    out = rms_norm(x, weight, 1e-5)
    assert out.dtype == dtype
    torch.testing.assert_close(out, _hf_rms_norm(x, weight, 1e-5))
    normed, new_residual = fused_add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(new_residual, residual + x)  # HF: residual + sublayer output
    torch.testing.assert_close(normed, _hf_rms_norm(residual + x, weight, 1e-5))


def test_silu_and_mul_is_swiglu() -> None:
    gate_up = torch.randn(4, 2, 30, generator=torch.Generator().manual_seed(1))
    gate, up = gate_up[..., :15], gate_up[..., 15:]
    torch.testing.assert_close(silu_and_mul(gate_up), gate * torch.sigmoid(gate) * up)


def test_rotary_rotates_each_pair_by_position_times_frequency() -> None:
    """Pair ``(x[i], x[i + D/2])`` as a complex number, multiply by ``exp(i * pos * freq[i])``."""
    gen = torch.Generator().manual_seed(2)
    tokens, heads, head_dim, max_pos = 6, 5, 12, 40
    inv_freq = torch.rand(head_dim // 2, generator=gen)
    positions = torch.randint(0, max_pos, (tokens,), generator=gen)
    angles = torch.outer(torch.arange(max_pos).float(), inv_freq)
    cos_sin = torch.cat([angles.cos(), angles.sin()], dim=-1)  # [max_pos, head_dim]
    qkv = torch.randn(tokens, heads + 2, head_dim, generator=gen)
    before = qkv.clone()
    rotary_embedding_(qkv[:, :heads], positions, cos_sin)  # a strided view, rotated in place
    half = head_dim // 2
    pairs = torch.complex(before[:, :heads, :half], before[:, :heads, half:])
    turned = pairs * torch.polar(torch.ones(()), angles[positions])[:, None, :]
    torch.testing.assert_close(qkv[:, :heads, :half], turned.real)
    torch.testing.assert_close(qkv[:, :heads, half:], turned.imag)
    assert torch.equal(qkv[:, heads:], before[:, heads:])


def test_arguments_are_checked() -> None:
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="does not fit"):
        rms_norm(x, torch.ones(6), 1e-6)
    with pytest.raises(ValueError, match="must match"):
        rms_norm(x, torch.ones(8, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        fused_add_rms_norm(x, torch.randn(2, 8), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(torch.randn(3, 7))
    with pytest.raises(ValueError, match="positions"):
        rotary_embedding_(torch.randn(3, 2, 8), torch.zeros(2, dtype=torch.long), torch.ones(4, 8))
    with pytest.raises(ValueError, match="cos_sin"):
        rotary_embedding_(torch.randn(3, 2, 8), torch.zeros(3, dtype=torch.long), torch.ones(4, 6))


def test_custom_ops_pass_opcheck() -> None:
    """Schemas, fake implementations and aliasing are consistent (what torch.compile relies on)."""
    x, residual, weight = torch.randn(4, 16), torch.randn(4, 16), torch.rand(16) + 0.5
    torch.library.opcheck(torch.ops.lorax_kernels.rms_norm, (x, weight, 1e-6))
    torch.library.opcheck(torch.ops.lorax_kernels.fused_add_rms_norm, (x, residual, weight, 1e-6))
    torch.library.opcheck(torch.ops.lorax_kernels.silu_and_mul, (x,))
    angles = torch.outer(torch.arange(10).float(), torch.rand(4))
    cos_sin = torch.cat([angles.cos(), angles.sin()], dim=-1)
    positions = torch.tensor([0, 9, 3, 3])
    torch.library.opcheck(
        torch.ops.lorax_kernels.rotary_embedding_, (x.view(4, 2, 8), positions, cos_sin)
    )
