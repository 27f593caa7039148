"""Plain-PyTorch paged prefill/extend attention (causal over prefix + chunk), fp32 math."""

from __future__ import annotations

import torch

from lorax_kernels.decode_attention.reference import gather_kv


def paged_prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Causal attention of each sequence's query run over its paged KV.

    q: ``[num_tokens, num_q_heads, head_dim]``; sequence ``s`` owns rows
    ``query_start_loc[s] : query_start_loc[s + 1]``, and its query ``i`` sits at position
    ``seq_lens[s] - q_len + i``; it sees positions ``<=`` its own (and ``>`` its own minus
    ``sliding_window``). The caches hold K / ``k_scale`` and V / ``v_scale`` (fp8 caches; 1.0
    otherwise). Returns ``[num_tokens, num_q_heads, head_dim]`` in q's dtype.
    """
    num_q_heads = q.shape[1]
    group = num_q_heads // k_cache.shape[2]
    out = torch.zeros_like(q)
    for s in range(seq_lens.shape[0]):
        lo, hi = int(query_start_loc[s]), int(query_start_loc[s + 1])
        length = int(seq_lens[s])
        if hi == lo:
            continue
        k = gather_kv(k_cache, block_tables[s], length).float() * k_scale  # [length, kvh, d]
        v = gather_kv(v_cache, block_tables[s], length).float() * v_scale
        k = k.repeat_interleave(group, dim=1)  # [length, q_heads, d]
        v = v.repeat_interleave(group, dim=1)
        q_pos = torch.arange(length - (hi - lo), length, device=q.device)  # [q_len]
        k_pos = torch.arange(length, device=q.device)  # [length]
        visible = k_pos[None, :] <= q_pos[:, None]  # [q_len, length]
        if sliding_window is not None:
            visible &= k_pos[None, :] > q_pos[:, None] - sliding_window
        scores = torch.einsum("qhd,khd->hqk", q[lo:hi].float(), k) * scale  # [h, q_len, length]
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[lo:hi] = torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)
    return out
