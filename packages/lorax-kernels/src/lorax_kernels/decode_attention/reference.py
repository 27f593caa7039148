"""Plain-PyTorch paged decode attention (one query token per sequence), fp32 math."""

from __future__ import annotations

import torch


def gather_kv(
    cache: torch.Tensor, block_table: torch.Tensor, length: int
) -> torch.Tensor:  # [length, num_kv_heads, head_dim]
    """Rows ``0 .. length-1`` of one sequence, read through its block table."""
    block_size = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    blocks = block_table[pos // block_size].long()
    return cache[blocks, pos % block_size]


def paged_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Attention of each sequence's single query over its whole cached context.

    q: ``[num_seqs, num_q_heads, head_dim]``; the query sits at position ``seq_len - 1`` and sees
    positions ``> seq_len - 1 - sliding_window`` when a window is given. ``seq_len == 0`` rows
    are padding and come out as zeros. The caches hold K / ``k_scale`` and V / ``v_scale`` (fp8
    caches; 1.0 otherwise). Returns ``[num_seqs, num_q_heads, head_dim]`` in q's dtype.
    """
    num_seqs, num_q_heads, _ = q.shape
    group = num_q_heads // k_cache.shape[2]
    out = torch.zeros_like(q)
    for i in range(num_seqs):
        length = int(seq_lens[i])
        if length == 0:
            continue
        start = 0 if sliding_window is None else max(0, length - sliding_window)
        k = gather_kv(k_cache, block_tables[i], length)[start:].float() * k_scale  # [n, kvh, d]
        v = gather_kv(v_cache, block_tables[i], length)[start:].float() * v_scale
        k = k.repeat_interleave(group, dim=1)  # [n, q_heads, d]
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[i].float(), k) * scale  # [q_heads, n]
        probs = torch.softmax(scores, dim=-1)
        out[i] = torch.einsum("hn,nhd->hd", probs, v).to(q.dtype)
    return out
