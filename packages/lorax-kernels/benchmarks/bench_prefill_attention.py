"""Paged prefill attention at Llama-3-8B shapes, bf16: TFLOP/s against the measured matmul rate.

FLOPs counted: 4 · heads · head_dim per visible (query, key) pair (QKᵀ and PV), causal.
For scale, the same problem through PyTorch's scaled_dot_product_attention on contiguous tensors.
Then the engine's mixed step (decodes beside a new prompt, one launch): its K/V bytes read once
per KV head, against the measured copy bandwidth.
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


# The mixed step: 128 one-token decode runs over 512 cached tokens beside one 256-token prompt.
MIXED_DECODES, MIXED_CONTEXT, MIXED_PROMPT = 128, 512, 256
# Smaller tiles waste fewer rows on one-token runs (and cost whole prompts 2-3x: run 10).
MIXED_KNOB_SETS: list[dict[str, Any]] = [
    {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3},
    {"block_m": 32, "block_n": 64, "num_warps": 4, "num_stages": 3},
    {"block_m": 16, "block_n": 64, "num_warps": 4, "num_stages": 3},
    {"block_m": 32, "block_n": 128, "num_warps": 4, "num_stages": 3},
]


def measure_mixed(copy_gbps: float) -> list[list[object]]:
    """Rows for the mixed step: µs a call and its K/V bytes (each read once) per µs."""
    runs = [(1, MIXED_CONTEXT - 1)] * MIXED_DECODES + [(MIXED_PROMPT, 0)]  # (q_len, prefix)
    blocks_per_seq = -(-max(q + p for q, p in runs) // PAGE)
    blocks = len(runs) * blocks_per_seq
    k_cache = torch.randn(blocks, PAGE, KV_HEADS, HEAD_DIM, device="cuda", dtype=DT)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(blocks, device="cuda").view(len(runs), -1).int()
    q_lens = torch.tensor([q for q, _ in runs], dtype=torch.int32)
    qsl = torch.cat([torch.zeros(1, dtype=torch.int32), q_lens.cumsum(0)]).int().cuda()
    lens = torch.tensor([q + p for q, p in runs], device="cuda", dtype=torch.int32)
    q = torch.randn(int(q_lens.sum()), Q_HEADS, HEAD_DIM, device="cuda", dtype=DT)
    kv_bytes = 2 * int(lens.sum()) * KV_HEADS * HEAD_DIM * k_cache.element_size()
    rows: list[list[object]] = []
    for knobs in MIXED_KNOB_SETS:

        def call(kn: dict[str, Any] = knobs) -> torch.Tensor:
            return prefill_triton.paged_prefill_attention(
                q, k_cache, v_cache, tables, qsl, lens, HEAD_DIM**-0.5, **kn
            )

        us = time_graph_us([call] * 5)
        gbps = kv_bytes / us / 1e3
        rows.append([str(knobs), us, gbps, 100 * gbps / copy_gbps])
    return rows


def run(matmul_tflops: float, copy_gbps: float) -> str:
    """Shapes around 4k tokens: whole prompts, extends over a prefix, several sequences."""
    rows: list[list[object]] = []
    for num_seqs, q_len, prefix in [(1, 4096, 0), (4, 1024, 0), (1, 1024, 3072), (16, 256, 0)]:
        rows += measure(num_seqs, q_len, prefix, matmul_tflops)
        torch.cuda.empty_cache()
    out = "### Paged prefill attention (bf16, 32 q / 8 kv heads, d 128, block 16, causal)\n\n"
    out += markdown_table(
        ["seqs", "q_len", "prefix", "config", "µs/call", "TFLOP/s", "% of matmul"], rows
    )
    out += (
        f"\n\n### Mixed step: {MIXED_DECODES} one-token runs over {MIXED_CONTEXT} tokens "
        f"+ one {MIXED_PROMPT}-token prompt\n\n"
    )
    return out + markdown_table(
        ["config", "µs/call", "K/V GB/s", "% of copy BW"], measure_mixed(copy_gbps)
    )
