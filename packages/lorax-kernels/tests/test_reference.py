"""The plain-PyTorch references (the CPU path) against independent dense formulations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lorax_kernels import (
    LoraBatchMeta,
    lora_apply_,
    lora_expand_,
    lora_shrink,
    paged_decode_attention,
    paged_prefill_attention,
    reshape_and_cache_,
)
from lorax_kernels.kv_cache import FP8_KV_DTYPE


def _lora_case(num_tokens: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    num_slots, max_rank, k, widths = 4, 8, 24, (12, 5, 5)
    ranks = torch.tensor([8, 1, 0, 3], dtype=torch.int32)
    a = torch.randn(len(widths), num_slots, max_rank, k, generator=gen)
    b = torch.randn(len(widths), num_slots, max(widths), max_rank, generator=gen)
    for slot, r in enumerate(ranks.tolist()):  # rows past the rank are zero (the contract)
        a[:, slot, r:] = 0
        b[:, slot, :, r:] = 0
    scales = torch.tensor([0.5, 2.0, 1.0, 0.25])
    slots = torch.randint(-1, num_slots, (num_tokens,), generator=gen, dtype=torch.int32)
    x = torch.randn(num_tokens, k, generator=gen)
    return x, a, b, ranks, scales, slots, widths


@pytest.mark.parametrize("num_tokens", [1, 9, 40])
def test_shrink_expand_match_dense_per_token(num_tokens: int) -> None:
    x, a, b, ranks, scales, slots, widths = _lora_case(num_tokens, num_tokens)
    offsets = [0, *torch.tensor(widths).cumsum(0).tolist()]
    meta = LoraBatchMeta.allocate(64, a.shape[1], "cpu")
    meta.update_(slots)
    h = lora_shrink(x, a, ranks, meta)
    y0 = torch.randn(num_tokens, offsets[-1])
    y = y0.clone()
    lora_expand_(y, h, b, ranks, scales, offsets, meta)
    for t in range(num_tokens):
        slot = int(slots[t])
        if slot < 0:
            assert torch.equal(h[:, t], torch.zeros_like(h[:, t]))
            assert torch.equal(y[t], y0[t])
            continue
        for s, (lo, hi) in enumerate(itertools.pairwise(offsets)):
            expect_h = a[s, slot] @ x[t]
            torch.testing.assert_close(h[s, t], expect_h)
            expect_y = y0[t, lo:hi] + scales[slot] * (b[s, slot, : hi - lo] @ expect_h)
            torch.testing.assert_close(y[t, lo:hi], expect_y)


def test_shrink_keeps_dtype_contract_in_bf16() -> None:
    x, a, _, ranks, _, slots, _ = _lora_case(5, 1)
    meta = LoraBatchMeta.allocate(8, a.shape[1], "cpu")
    meta.update_(slots)
    h = lora_shrink(x.bfloat16(), a.bfloat16(), ranks, meta)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, lora_shrink(x, a, ranks, meta), atol=0.2, rtol=0.05)


@pytest.mark.parametrize("num_tokens", [9, 600])
def test_apply_equals_shrink_then_expand(num_tokens: int) -> None:
    """Both routes of ``lora_apply_`` (fused decode size and tiled) give shrink + expand."""
    x, a, b, ranks, scales, slots, widths = _lora_case(num_tokens, 7)
    offsets = [0, *torch.tensor(widths).cumsum(0).tolist()]
    meta = LoraBatchMeta.allocate(1024, a.shape[1], "cpu")
    meta.update_(slots)
    y0 = torch.randn(num_tokens, offsets[-1])
    expect = y0.clone()
    lora_expand_(expect, lora_shrink(x, a, ranks, meta), b, ranks, scales, offsets, meta)
    y = y0.clone()
    lora_apply_(y, x, a, b, ranks, scales, offsets, meta)
    assert torch.equal(y, expect)
    with pytest.raises(ValueError, match="same rows"):
        lora_apply_(y[1:], x, a, b, ranks, scales, offsets, meta)
    with pytest.raises(ValueError, match="slice_offsets"):
        lora_apply_(y, x, a, b, ranks, scales, [0, 12, 17, 21], meta)


def test_expand_validates_slices() -> None:
    x, a, b, ranks, scales, slots, _ = _lora_case(3, 2)
    meta = LoraBatchMeta.allocate(8, a.shape[1], "cpu")
    meta.update_(slots)
    h = lora_shrink(x, a, ranks, meta)
    with pytest.raises(ValueError, match="slice_offsets"):
        lora_expand_(torch.zeros(3, 22), h, b, ranks, scales, [0, 12, 17, 21], meta)
    with pytest.raises(ValueError, match="updated for"):
        lora_shrink(x[:2], a, ranks, meta)


def _paged(kv: torch.Tensor, block_size: int, gen: torch.Generator):
    """Scatter contiguous per-sequence KV ``[num_seqs, max_len, H, D]`` into shuffled blocks."""
    num_seqs, max_len, heads, dim = kv.shape
    per_seq = -(-max_len // block_size)
    perm = torch.randperm(num_seqs * per_seq + 3, generator=gen)[: num_seqs * per_seq]
    tables = perm.view(num_seqs, per_seq).int()
    cache = torch.randn(num_seqs * per_seq + 3, block_size, heads, dim, generator=gen)
    for s in range(num_seqs):
        for p in range(max_len):
            cache[tables[s, p // block_size], p % block_size] = kv[s, p]
    return cache, tables


@pytest.mark.parametrize(("q_heads", "kv_heads", "window"), [(4, 4, None), (8, 2, None), (8, 1, 5)])
def test_decode_matches_sdpa(q_heads: int, kv_heads: int, window: int | None) -> None:
    gen = torch.Generator().manual_seed(q_heads + kv_heads)
    lens = [1, 17, 33, 0]
    k = torch.randn(len(lens), 40, kv_heads, 16, generator=gen)
    v = torch.randn(len(lens), 40, kv_heads, 16, generator=gen)
    k_cache, tables = _paged(k, 8, gen)
    v_cache = k_cache.clone()
    for s in range(len(lens)):  # same block tables for V
        for p in range(40):
            v_cache[tables[s, p // 8], p % 8] = v[s, p]
    q = torch.randn(len(lens), q_heads, 16, generator=gen)
    out = paged_decode_attention(
        q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32), 0.3, window
    )
    for s, length in enumerate(lens):
        if length == 0:
            assert torch.equal(out[s], torch.zeros_like(out[s]))
            continue
        lo = 0 if window is None else max(0, length - window)
        kk = k[s, lo:length].repeat_interleave(q_heads // kv_heads, 1).transpose(0, 1)
        vv = v[s, lo:length].repeat_interleave(q_heads // kv_heads, 1).transpose(0, 1)
        expect = F.scaled_dot_product_attention(q[s][:, None], kk, vv, scale=0.3)[:, 0]
        torch.testing.assert_close(out[s], expect, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 6])
def test_prefill_matches_sdpa_with_prefix(window: int | None) -> None:
    gen = torch.Generator().manual_seed(7)
    q_lens, lens, heads, kv_heads, dim = [5, 1, 12], [5, 20, 30], 4, 2, 8
    k = torch.randn(3, 32, kv_heads, dim, generator=gen)
    v = torch.randn(3, 32, kv_heads, dim, generator=gen)
    k_cache, tables = _paged(k, 4, gen)
    v_cache = torch.empty_like(k_cache)
    flat = torch.cat([tables[s, p // 4] * 4 + p % 4 for s in range(3) for p in [torch.arange(32)]])
    reshape_and_cache_(k.flatten(0, 1), v.flatten(0, 1), k_cache, v_cache, flat.long())
    q = torch.randn(sum(q_lens), heads, dim, generator=gen)
    qsl = torch.tensor([0, 5, 6, 18], dtype=torch.int32)
    out = paged_prefill_attention(
        q, k_cache, v_cache, tables, qsl, torch.tensor(lens, dtype=torch.int32), 0.5, window
    )
    for s in range(3):
        length, n = lens[s], q_lens[s]
        pos = torch.arange(length - n, length)
        kpos = torch.arange(length)
        mask = kpos[None] <= pos[:, None]
        if window is not None:
            mask &= kpos[None] > pos[:, None] - window
        kk = k[s, :length].repeat_interleave(2, 1).transpose(0, 1)
        vv = v[s, :length].repeat_interleave(2, 1).transpose(0, 1)
        qq = q[int(qsl[s]) : int(qsl[s + 1])].transpose(0, 1)
        expect = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=0.5)
        torch.testing.assert_close(
            out[int(qsl[s]) : int(qsl[s + 1])], expect.transpose(0, 1), atol=1e-5, rtol=1e-5
        )


def test_reshape_and_cache_skips_padding() -> None:
    k_cache = torch.zeros(3, 4, 2, 8)
    v_cache = torch.zeros(3, 4, 2, 8)
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    reshape_and_cache_(k, v, k_cache, v_cache, torch.tensor([9, -1, 0]))
    assert torch.equal(k_cache[2, 1], k[0])
    assert torch.equal(v_cache[0, 0], v[2])
    assert int((k_cache != 0).any(-1).any(-1).sum()) == 2


def test_custom_ops_pass_opcheck() -> None:
    """Schemas, fake implementations and aliasing are consistent (what torch.compile relies on)."""
    x, a, b, ranks, scales, slots, widths = _lora_case(6, 3)
    meta = LoraBatchMeta.allocate(8, a.shape[1], "cpu")
    meta.update_(slots)
    fields = (meta.token_slots, meta.sorted_ids, meta.tile_slot, meta.tile_start, meta.tile_end)
    tiles = (meta.num_tiles, meta.block_m)
    torch.library.opcheck(torch.ops.lorax_kernels.lora_shrink, (x, a, ranks, *fields, *tiles))
    h = lora_shrink(x, a, ranks, meta)
    y = torch.randn(6, sum(widths))
    offsets = [0, 12, 17, 22]
    torch.library.opcheck(
        torch.ops.lorax_kernels.lora_expand_, (y, h, b, ranks, scales, offsets, *fields, *tiles)
    )
    torch.library.opcheck(
        torch.ops.lorax_kernels.lora_decode_,
        (y, x, a, b, ranks, scales, offsets, meta.token_slots, meta.sync),
    )
    kv = torch.randn(3, 1, 8)
    tables = torch.tensor([[1, 0]], dtype=torch.int32)
    lens = torch.tensor([6], dtype=torch.int32)
    q = torch.randn(1, 2, 8)
    # fp32 caches only: opcheck's schema test multiplies tensors, which CPU torch cannot in fp8.
    kv_scales = (1.0, 1.0)
    cache = torch.zeros(2, 4, 1, 8)
    torch.library.opcheck(
        torch.ops.lorax_kernels.reshape_and_cache_,
        (kv, kv, cache, cache.clone(), torch.tensor([0, -1, 5]), *kv_scales),
    )
    torch.library.opcheck(
        torch.ops.lorax_kernels.paged_decode_attention,
        (q, cache, cache, tables, lens, 1 / math.sqrt(8), None, *kv_scales),
    )
    torch.library.opcheck(
        torch.ops.lorax_kernels.paged_prefill_attention,
        (
            q.expand(3, 2, 8).contiguous(),
            cache,
            cache,
            tables,
            torch.tensor([0, 3], dtype=torch.int32),
            lens,
            0.3,
            4,
            *kv_scales,
        ),
    )


def test_rows_past_the_step_have_no_adapter() -> None:
    """The CPU path over a padded bucket after a larger step: padding rows stay untouched."""
    x, a, b, ranks, scales, _, widths = _lora_case(12, 4)
    meta = LoraBatchMeta.allocate(16, a.shape[1], "cpu")
    meta.update_((torch.arange(12) % 5 - 1).int())  # a larger step, tiles at indices 0..4
    meta.update_(torch.tensor([0, 1, 3], dtype=torch.int32))
    h = lora_shrink(x, a, ranks, meta)
    assert torch.equal(h[:, 3:], torch.zeros_like(h[:, 3:]))
    y0 = torch.randn(12, sum(widths))
    y = y0.clone()
    lora_expand_(y, h, b, ranks, scales, [0, 12, 17, 22], meta)
    assert torch.equal(y[3:], y0[3:])
    assert not torch.equal(y[:2], y0[:2])
    assert int(meta.tile_end.count_nonzero()) <= 3  # no tile left over from the larger step


def test_fp8_kv_cache_round_trip() -> None:
    """Writing K/V to an fp8 cache and attending over it stays within e4m3's precision of the
    fp32 cache (3 mantissa bits: ~6% per value, far less after the softmax's averaging), and
    values past the range clamp to 448 * scale instead of becoming NaN."""
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(40, 2, 16, generator=gen)
    v = torch.randn(40, 2, 16, generator=gen)
    q = torch.randn(1, 4, 16, generator=gen)
    slots = torch.arange(40)
    tables = torch.arange(10, dtype=torch.int32)[None]
    lens = torch.tensor([40], dtype=torch.int32)
    caches = {}
    for dtype, scales in [(torch.float32, (1.0, 1.0)), (FP8_KV_DTYPE, (0.05, 0.02))]:
        kc = torch.zeros(10, 4, 2, 16, dtype=dtype)
        vc = torch.zeros_like(kc)
        reshape_and_cache_(k, v, kc, vc, slots, k_scale=scales[0], v_scale=scales[1])
        caches[dtype] = (kc, vc, scales)
    kc8, _, (k_scale, _) = caches[FP8_KV_DTYPE]
    stored = kc8.float().view(40, 2, 16) * k_scale
    assert (stored - k).abs().max() <= 0.0625 * k.abs().max()
    outs = [
        paged_decode_attention(q, kc, vc, tables, lens, 0.25, k_scale=ks, v_scale=vs)
        for kc, vc, (ks, vs) in caches.values()
    ]
    torch.testing.assert_close(outs[1], outs[0], atol=0.05, rtol=0.05)
    big = torch.full((1, 2, 16), 1e6)
    kc, vc, _ = caches[FP8_KV_DTYPE]
    reshape_and_cache_(big, -big, kc, vc, torch.tensor([0]), k_scale=0.5, v_scale=1.0)
    assert kc[0, 0].float().unique().tolist() == [448.0]
    assert vc[0, 0].float().unique().tolist() == [-448.0]


def test_kv_scales_apply_to_fp8_caches_only() -> None:
    cache = torch.zeros(2, 4, 1, 8)
    kv = torch.randn(1, 1, 8)
    with pytest.raises(ValueError, match="fp8 caches only"):
        reshape_and_cache_(kv, kv, cache, cache, torch.tensor([0]), k_scale=0.5)
    with pytest.raises(ValueError, match="positive"):
        reshape_and_cache_(
            kv, kv, cache.to(FP8_KV_DTYPE), cache.to(FP8_KV_DTYPE), torch.tensor([0]), v_scale=0.0
        )
