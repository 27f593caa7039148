"""Triton paged prefill/extend attention (causal, GQA, optional sliding window).

One program handles one KV head and packs the ``GROUP`` query heads that share it into its tile's
rows, so each K/V block it streams serves all of them: flat row ``f`` of a sequence's run is query
token ``f // GROUP`` of query head ``kv_head * GROUP + f % GROUP``, and a tile is ``BLOCK_M``
consecutive flat rows of one sequence. A one-token decode run thus fills ``GROUP`` rows of a tile
rather than one row of ``GROUP`` tiles that each read its K/V again.

The grid is ``(num_tokens * GROUP // BLOCK_M + num_seqs, num_kv_heads)``: an upper bound on the
tiles of all sequences that depends only on static shapes (CUDA graphs replay it with the data
changing). Each program finds its sequence by binary search over
``query_start_loc[s] * GROUP // BLOCK_M + s`` (the first tile of sequence ``s``), loads its rows'
queries and streams the sequence's K/V pages from its first query's window start up to its last
query's position, gathered through the block table, with an online softmax; each row is masked at
its own query's position. fp8 caches are upcast after the load, their K scale folded into the
softmax scale and their V scale into the final normalisation.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false
# pyright: reportInvalidTypeForm=false

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorax_kernels.paged_attention_steps import load_kv_block, online_softmax_step, scores

LOG2E = 1.4426950408889634


# Not specialised: the batch's sequence count and its block table's width (its row stride) change
# with every prefill step, and Triton compiles one variant per class of each (equal to 1, divisible
# by 16, other): nine variants, compiled on first use, seconds each, while every request in the
# step waits. Only a binary search bound and one scalar address use them.
@triton.jit(do_not_specialize=["num_seqs", "stride_bt"])
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    query_start_ptr,
    seq_lens_ptr,
    out_ptr,
    qk_scale,  # softmax scale * K scale * log2(e)
    v_scale,
    window,  # 0 = no sliding window
    num_seqs,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_bt,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
    FP16_OPERANDS: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    # Largest s with query_start[s] * GROUP // BLOCK_M + s <= tile.
    lo: tl.int32 = 0
    hi: tl.int32 = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first = tl.load(query_start_ptr + mid) * GROUP // BLOCK_M + mid
        lo = tl.where(first <= tile, mid, lo)
        hi = tl.where(first <= tile, hi, mid - 1)
    seq = lo
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    m0 = (tile - (q_start * GROUP // BLOCK_M + seq)) * BLOCK_M  # the tile's first flat row
    # Empty runs (and tiles past a run, up to the grid's bound) have nothing to compute.
    if m0 >= q_len * GROUP:
        return
    length = tl.load(seq_lens_ptr + seq)
    prefix = length - q_len

    offs_m = m0 + tl.arange(0, BLOCK_M)  # [BLOCK_M] flat rows
    # Rows past the run belong to the next sequence's tiles, or to none (padding rows): untouched.
    m_mask = offs_m < q_len * GROUP
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    token = offs_m // GROUP  # [BLOCK_M] each row's query within the run
    q_head = kv_head * GROUP + offs_m % GROUP  # [BLOCK_M]
    rows_q = (q_start + token).to(tl.int64)
    q = tl.load(
        q_ptr + (rows_q * stride_qt + q_head * stride_qh)[:, None] + offs_d[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_D]
    if FP16_OPERANDS:
        # fp8 caches: e4m3 -> fp16 is one conversion instruction (-> bf16 takes several), and
        # bf16 queries are exact in fp16 at attention magnitudes; tl.dot then runs in fp16.
        q = q.to(tl.float16)
    pos = prefix + token  # [BLOCK_M] absolute query positions

    # Past the tile's last query (the run's last, for a tile that ends past the run).
    kv_hi = tl.minimum(prefix + (m0 + BLOCK_M - 1) // GROUP + 1, length)
    kv_lo = tl.where(window > 0, tl.maximum(prefix + m0 // GROUP - window + 1, 0), 0)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for n0 in range((kv_lo // BLOCK_N) * BLOCK_N, kv_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < kv_hi
        k, v = load_kv_block(
            k_cache_ptr,
            v_cache_ptr,
            table,
            offs_n,
            n_mask,
            offs_d,
            d_mask,
            kv_head * stride_kh,
            stride_kb,
            stride_kt,
            q.dtype,
            PAGE,
        )  # [BLOCK_N, BLOCK_D] each
        s = scores(q, k, IEEE)
        visible = (offs_n[None, :] <= pos[:, None]) & n_mask[None, :]
        visible &= (window <= 0) | (offs_n[None, :] > pos[:, None] - window)
        s = tl.where(visible, s * qk_scale, float("-inf"))  # [BLOCK_M, BLOCK_N]
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, IEEE)

    out = acc * v_scale / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + (rows_q * stride_ot + q_head * stride_oh)[:, None] + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )


def paged_prefill_attention(
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
    *,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """Triton version of ``reference.paged_prefill_attention_ref`` (same arguments).

    ``block_m``, ``block_n``, ``num_warps`` and ``num_stages`` are tuning knobs (benchmarks);
    ``block_m`` counts a tile's rows, each one query token of one head (``block_m // GROUP``
    tokens of all the group's heads). The defaults measured fastest on every benchmarked prompt
    shape on the H200 (docs/benchmarks.md).
    """
    num_tokens, num_q_heads, head_dim = q.shape
    _, page, num_kv_heads, _ = k_cache.shape
    num_seqs = seq_lens.shape[0]
    out = torch.empty_like(q)
    if num_tokens == 0 or num_seqs == 0:
        return out
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or k_cache.stride() != v_cache.stride():
        raise ValueError("q and the caches must be contiguous in head_dim, caches alike")
    group = num_q_heads // num_kv_heads
    grid = (num_tokens * group // block_m + num_seqs, num_kv_heads)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        out,
        scale * k_scale * LOG2E,
        v_scale,
        sliding_window or 0,
        num_seqs,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=group,
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
        PAGE=page,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        IEEE=q.dtype == torch.float32,
        FP16_OPERANDS=q.dtype == torch.bfloat16 and k_cache.element_size() == 1,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
