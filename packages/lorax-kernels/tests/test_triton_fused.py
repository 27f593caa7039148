"""Triton fused elementwise ops (RMS norm with residual add, SiLU-and-mul, rotary) against their
references.

Runs on CUDA at real shapes, or on CPU under ``TRITON_INTERPRET=1`` at small, irregular shapes
(started by test_interpreter.py in a subprocess, since the variable must be set before Triton is
imported). The kernels mirror the eager form's roundings, so on the GPU the norm and SiLU results
match the reference to the last bit but for the float32 exp/rsqrt; rotary is within two ulps of
the inputs' scale (some fp16/bf16 values differ from PyTorch's eager result on the H200). The interpreter
rounds float32 to bf16 by truncation (not to nearest), so its bf16 results may be off by an ulp
or two.
"""

from __future__ import annotations

import pytest
import torch
from triton_env import CUDA, DEVICE, INTERPRET, NEEDS_TRITON

from lorax_kernels.activation.reference import silu_and_mul_ref
from lorax_kernels.norm.reference import fused_add_rms_norm_ref, rms_norm_ref
from lorax_kernels.rotary.reference import rotary_embedding_ref_

pytestmark = NEEDS_TRITON
BF16_ULPS = 2 if INTERPRET else 1
# (atol, rtol) against the reference on the same inputs: an ulp or two of each dtype (one fp16
# value in 16.8M differed by two ulps on the H200: the GPU's rsqrt is not PyTorch's).
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (BF16_ULPS * 1e-2, BF16_ULPS * 8e-3),
}
DTYPES = list(TOL)


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(*shape, generator=gen, device=DEVICE).to(dtype)


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Within about an ulp, and (where rounding is to nearest) almost always bit-identical: a
    kernel that skipped one of the eager form's roundings would differ in a quarter of the values."""
    assert out.dtype == ref.dtype
    assert out.shape == ref.shape
    atol, rtol = TOL[out.dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    if out.dtype == torch.float16 or (CUDA and out.dtype == torch.bfloat16):
        differ = (out != ref).float().mean().item()
        assert differ <= 0.01, f"{differ:.1%} of the values are not bit-identical"


def _close_rotary(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Within two ulps of the largest value. On the H200 some fp16/bf16 values differ from
    PyTorch's eager result (measured): where ``x1 cos - x2 sin`` cancels, a different rounding of
    the two products moves the small result by many of its own ulps but not by more than the
    products' rounding, so the bound is absolute, at the scale of the inputs."""
    assert out.dtype == ref.dtype
    atol = 2 * torch.finfo(out.dtype).eps * ref.float().abs().max().item()
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=0)


def _check_norm(rows: int, hidden: int, dtype: torch.dtype, row_stride: int) -> None:
    from lorax_kernels.norm.triton import fused_add_rms_norm, rms_norm

    # Rows of a wider buffer: the kernels read through a row stride.
    x = _randn(rows, row_stride, dtype=dtype, seed=rows + hidden)[:, :hidden]
    residual = _randn(rows, hidden, dtype=dtype, seed=rows + hidden + 1) * 4
    weight = (torch.rand(hidden, generator=torch.Generator().manual_seed(hidden)) + 0.5).to(
        DEVICE, dtype
    )
    eps = 1e-5
    _close(rms_norm(x, weight, eps), rms_norm_ref(x, weight, eps))
    out, new_residual = fused_add_rms_norm(x, residual, weight, eps)
    ref, ref_residual = fused_add_rms_norm_ref(x, residual, weight, eps)
    _close(out, ref)
    if INTERPRET and dtype == torch.bfloat16:
        _close(new_residual, ref_residual)
    else:  # one rounding of an exact float32 sum: bit-identical to the eager add
        assert torch.equal(new_residual, ref_residual)


def _check_silu(rows: int, half: int, dtype: torch.dtype, block: int) -> None:
    from lorax_kernels.activation.triton import silu_and_mul

    wide = _randn(rows, 2 * half + 3, dtype=dtype, seed=rows * half) * 3
    gate_up = wide[:, : 2 * half]  # [rows, 2 * half], strided rows
    _close(silu_and_mul(gate_up, block=block), silu_and_mul_ref(gate_up))


def _check_rotary(
    tokens: int, q_heads: int, kv_heads: int, head_dim: int, max_pos: int, dtype: torch.dtype
) -> None:
    from lorax_kernels.rotary.triton import rotary_embedding_

    gen = torch.Generator().manual_seed(tokens + q_heads + head_dim)
    q_size, kv_size = q_heads * head_dim, kv_heads * head_dim
    qkv = _randn(tokens, q_size + 2 * kv_size, dtype=dtype, seed=tokens + head_dim) * 2
    # A real table (any rope variant only changes the frequencies): [cos | sin] per position.
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(max_pos).float(), inv_freq)
    cos_sin = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(DEVICE)  # [max_pos, head_dim]
    positions = torch.randint(0, max_pos, (tokens,), generator=gen)
    positions[0] = max_pos - 1
    positions = positions.to(DEVICE)
    before = qkv.clone()
    ref = before[:, : q_size + kv_size].reshape(tokens, -1, head_dim).clone()
    rotary_embedding_ref_(ref, positions, cos_sin)
    qk = qkv[:, : q_size + kv_size].view(tokens, -1, head_dim)  # [T, Hq + Hkv, D], strided
    rotary_embedding_(qk, positions, cos_sin)
    _close_rotary(qk, ref)
    assert torch.equal(qkv[:, q_size + kv_size :], before[:, q_size + kv_size :])  # v untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("rows", "hidden", "row_stride"), [(1, 64, 64), (7, 96, 100), (3, 130, 130)]
)
def test_norm_small(rows, hidden, row_stride, dtype) -> None:
    _check_norm(rows, hidden, dtype, row_stride)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("rows", "half", "block"), [(1, 70, 32), (5, 256, 64), (2, 33, 1024)])
def test_silu_and_mul_small(rows, half, block, dtype) -> None:
    _check_silu(rows, half, dtype, block)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("tokens", "q_heads", "kv_heads", "head_dim"),
    [(1, 4, 2, 16), (6, 3, 1, 40), (9, 70, 10, 8)],  # head_dim 40: half 20 padded to 32
)
def test_rotary_small(tokens, q_heads, kv_heads, head_dim, dtype) -> None:
    _check_rotary(tokens, q_heads, kv_heads, head_dim, 50, dtype)


def test_empty_batches() -> None:
    """A step with no tokens launches nothing and returns empty results."""
    from lorax_kernels.activation.triton import silu_and_mul
    from lorax_kernels.norm.triton import fused_add_rms_norm
    from lorax_kernels.rotary.triton import rotary_embedding_

    x = torch.zeros(0, 32, device=DEVICE)
    out, residual = fused_add_rms_norm(x, x, torch.ones(32, device=DEVICE), 1e-6)
    assert out.shape == residual.shape == (0, 32)
    assert silu_and_mul(x).shape == (0, 16)
    rotary_embedding_(
        x.view(0, 2, 16),
        torch.zeros(0, dtype=torch.long, device=DEVICE),
        torch.zeros(4, 16, device=DEVICE),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 64, 4099])
def test_real_shapes(rows, dtype) -> None:
    """Llama-3-8B (hidden 4096, MLP 14336, 32 + 8 heads of 128) and a 70B-wide norm (8192)."""
    _check_norm(rows, 4096, dtype, 4096)
    _check_norm(rows, 8192, dtype, 8192)
    _check_silu(rows, 14336, dtype, 1024)
    _check_rotary(rows, 32, 8, 128, 131072, dtype)


@pytest.mark.gpu
def test_public_ops_in_a_cuda_graph() -> None:
    """The public ops dispatch to Triton on CUDA, capture into a graph (no host sync, no
    data-dependent allocation) and replay correctly on new inputs and positions."""
    import lorax_kernels
    from lorax_kernels.norm import triton as norm_triton

    dt, tokens, hidden, inter, heads, head_dim = torch.bfloat16, 8, 256, 512, 6, 64
    x = torch.zeros(tokens, hidden, device=DEVICE, dtype=dt)
    residual = torch.zeros_like(x)
    weight = torch.rand(hidden, device=DEVICE).to(dt) + 0.5
    gate_up = torch.zeros(tokens, 2 * inter, device=DEVICE, dtype=dt)
    qkv = torch.zeros(tokens, (heads + 1) * head_dim, device=DEVICE, dtype=dt)
    positions = torch.zeros(tokens, dtype=torch.long, device=DEVICE)
    cos_sin = torch.rand(1000, head_dim, device=DEVICE) * 2 - 1

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        normed, new_residual = lorax_kernels.fused_add_rms_norm(x, residual, weight, 1e-6)
        lorax_kernels.rotary_embedding_(
            qkv[:, : heads * head_dim].view(tokens, heads, head_dim), positions, cos_sin
        )
        return normed, new_residual, lorax_kernels.silu_and_mul(gate_up)

    calls: list[int] = []
    original = norm_triton.fused_add_rms_norm

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    norm_triton.fused_add_rms_norm = spy
    try:
        step()  # compiles the kernels outside the capture
    finally:
        norm_triton.fused_add_rms_norm = original
    assert calls == [1]
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        normed, new_residual, act = step()
    for seed in (1, 2):
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        for t in (x, residual, gate_up, qkv):
            t.normal_(generator=gen)
        positions.copy_(torch.randint(0, 1000, (tokens,), device=DEVICE, generator=gen))
        qk_ref = qkv[:, : heads * head_dim].reshape(tokens, heads, head_dim).clone()
        rotary_embedding_ref_(qk_ref, positions, cos_sin)
        graph.replay()
        torch.cuda.synchronize()
        ref, ref_residual = fused_add_rms_norm_ref(x, residual, weight, 1e-6)
        _close(normed, ref)
        assert torch.equal(new_residual, ref_residual)
        _close(act, silu_and_mul_ref(gate_up))
        _close_rotary(qkv[:, : heads * head_dim].view(tokens, heads, head_dim), qk_ref)
