"""Fused elementwise ops against the eager chains they replace, Llama-3-8B shapes, bf16.

A decode step is a CUDA graph, where each small kernel costs a few µs whatever its size: these
rows show what one layer's norm, SwiGLU gate and rotary cost fused and eager, per call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import markdown_table, time_graph_us

from lorax_kernels import fused_add_rms_norm, rotary_embedding_, silu_and_mul

HIDDEN, INTER, Q_HEADS, KV_HEADS, HEAD_DIM, DT = 4096, 14336, 32, 8, 128, torch.bfloat16
SETS = 8  # rotating input sets, so consecutive calls do not find their data in L2


def _eager_add_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor):
    s = x + residual
    return weight * F.rms_norm(s.float(), weight.shape, None, 1e-5).to(s.dtype), s


def _eager_silu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _eager_rotary(qk: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    cos, sin = cos_sin.index_select(0, positions).to(qk.dtype).chunk(2, dim=-1)
    cos = torch.cat([cos, cos], -1).unsqueeze(1)
    sin = torch.cat([sin, sin], -1).unsqueeze(1)
    half = HEAD_DIM // 2
    qk.copy_(qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin)


def _cases(tokens: int) -> dict[str, tuple[Callable[[int], object], Callable[[int], object], int]]:
    """For each op: (fused call, eager call) on input set ``i``, and the bytes the fused call
    must move (read + write, in the activation dtype)."""
    dev = "cuda"
    x = torch.randn(SETS, tokens, HIDDEN, device=dev, dtype=DT)
    residual = torch.randn_like(x)
    weight = torch.rand(HIDDEN, device=dev, dtype=DT) + 0.5
    gate_up = torch.randn(SETS, tokens, 2 * INTER, device=dev, dtype=DT)
    heads = Q_HEADS + KV_HEADS
    qkv = torch.randn(SETS, tokens, (heads + KV_HEADS) * HEAD_DIM, device=dev, dtype=DT)
    qk = [qkv[i, :, : heads * HEAD_DIM].view(tokens, heads, HEAD_DIM) for i in range(SETS)]
    positions = torch.randint(0, 8192, (tokens,), device=dev)
    freqs = torch.rand(HEAD_DIM // 2, device=dev)
    angles = torch.outer(torch.arange(8192, device=dev).float(), freqs)
    cos_sin = torch.cat([angles.cos(), angles.sin()], dim=-1)  # [8192, HEAD_DIM] float32
    return {
        "residual add + RMS norm": (
            lambda i: fused_add_rms_norm(x[i], residual[i], weight, 1e-5),
            lambda i: _eager_add_norm(x[i], residual[i], weight),
            4 * tokens * HIDDEN * 2,
        ),
        "silu(gate) * up": (
            lambda i: silu_and_mul(gate_up[i]),
            lambda i: _eager_silu(gate_up[i]),
            3 * tokens * INTER * 2,
        ),
        "rotary (q and k)": (
            lambda i: rotary_embedding_(qk[i], positions, cos_sin),
            lambda i: _eager_rotary(qk[i], positions, cos_sin),
            2 * tokens * heads * HEAD_DIM * 2 + tokens * HEAD_DIM * 4,
        ),
    }


def run(copy_gbs: float) -> str:
    """µs per call of each op, fused and eager, at decode and prefill token counts; the fused
    kernel's bandwidth as a share of the measured copy bandwidth."""
    rows = []
    for tokens in (1, 64, 4096):
        for name, (fused, eager, nbytes) in _cases(tokens).items():
            fused_us = time_graph_us([lambda i=i, f=fused: f(i) for i in range(SETS)])
            eager_us = time_graph_us([lambda i=i, f=eager: f(i) for i in range(SETS)])
            pct = 100 * nbytes / fused_us / 1e3 / copy_gbs
            rows.append([name, tokens, fused_us, eager_us, eager_us / fused_us, pct])
    out = "### Fused elementwise ops (bf16, Llama-3-8B shapes, in a CUDA graph)\n\n"
    header = ["op", "tokens", "fused µs", "eager µs", "eager / fused", "fused % of copy BW"]
    return out + markdown_table(header, rows)
