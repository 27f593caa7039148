"""Paged prefill attention at Llama-3-8B shapes, bf16: TFLOP/s against the measured matmul rate.

FLOPs counted: 4 · heads · head_dim per visible (query, key) pair (QKᵀ and PV), causal.
For scale, the same problem through PyTorch's scaled_dot_product_attention on contiguous tensors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from common import markdown_table, time_graph_us

from lorax_kernels.prefill_attention import triton as prefill_triton

Q_HEADS, KV_HEADS, HEAD_DIM, PAGE = 32, 8, 128, 16
DT = torch.bfloat16
KNOB_SETS: list[dict[str, Any]] = [
    {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2},
    {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3},
    {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2},
    {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3},
    {"block_m": 64, "block_n": 128, "num_warps": 4, "num_stages": 2},
]


def measure(num_seqs: int, q_len: int, prefix: int, matmul_tflops: float) -> list[list[object]]:
    """Rows for one shape: every knob set, and SDPA for whole prompts."""
    ctx = prefix + q_len
    blocks = num_seqs * (-(-ctx // PAGE))
    k_cache = torch.randn(blocks, PAGE, KV_HEADS, HEAD_DIM, device="cuda", dtype=DT)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(blocks, device="cuda").view(num_seqs, -1).int()
    q = torch.randn(num_seqs * q_len, Q_HEADS, HEAD_DIM, device="cuda", dtype=DT)
    qsl = torch.arange(0, num_seqs + 1, device="cuda", dtype=torch.int32) * q_len
    lens = torch.full((num_seqs,), ctx, device="cuda", dtype=torch.int32)
    pairs = num_seqs * sum(min(ctx, prefix + i + 1) for i in range(q_len))
    flops = 4 * Q_HEADS * HEAD_DIM * pairs
    rows: list[list[object]] = []
    for knobs in KNOB_SETS:

        def call(kn: dict[str, Any] = knobs) -> torch.Tensor:
            return prefill_triton.paged_prefill_attention(
                q, k_cache, v_cache, tables, qsl, lens, HEAD_DIM**-0.5, **kn
            )

        try:
            us = time_graph_us([call] * 5)
        except Exception as exc:  # e.g. a config out of shared memory: report it, go on
            rows.append([num_seqs, q_len, prefix, str(knobs), f"failed: {exc!r}"[:60], "", ""])
            continue
        tflops = flops / us / 1e6
        rows.append([num_seqs, q_len, prefix, str(knobs), us, tflops, 100 * tflops / matmul_tflops])
    if prefix == 0:  # contiguous SDPA reference point, same FLOPs
        qq = q.view(num_seqs, q_len, Q_HEADS, HEAD_DIM).transpose(1, 2)
        kk = torch.randn(num_seqs, KV_HEADS, q_len, HEAD_DIM, device="cuda", dtype=DT)
        vv = torch.randn_like(kk)

        def sdpa() -> torch.Tensor:
            return F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)

        us = time_graph_us([sdpa] * 5)
        tflops = flops / us / 1e6
        rows.append(
            [
                num_seqs,
                q_len,
                prefix,
                "torch SDPA, contiguous KV",
                us,
                tflops,
                100 * tflops / matmul_tflops,
            ]
        )
    return rows


def run(matmul_tflops: float) -> str:
    """Shapes around 4k tokens: whole prompts, extends over a prefix, several sequences."""
    rows: list[list[object]] = []
    for num_seqs, q_len, prefix in [(1, 4096, 0), (4, 1024, 0), (1, 1024, 3072), (16, 256, 0)]:
        rows += measure(num_seqs, q_len, prefix, matmul_tflops)
        torch.cuda.empty_cache()
    out = "### Paged prefill attention (bf16, 32 q / 8 kv heads, d 128, block 16, causal)\n\n"
    return out + markdown_table(
        ["seqs", "q_len", "prefix", "config", "µs/call", "TFLOP/s", "% of matmul"], rows
    )
