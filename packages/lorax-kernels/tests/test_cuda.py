"""GPU-only: public dispatch goes to Triton, and the ops replay correctly inside a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from lorax_kernels import (
    LoraBatchMeta,
    lora_apply_,
    lora_expand_,
    lora_shrink,
    paged_decode_attention,
    reshape_and_cache_,
)
from lorax_kernels.decode_attention.reference import paged_decode_attention_ref
from lorax_kernels.sgmv.reference import lora_expand_ref_, lora_shrink_ref

pytestmark = pytest.mark.gpu
DEV = "cuda"


def test_cuda_graph_capture_and_replay_with_new_inputs() -> None:
    """One decode step (meta update, KV write, attention, shrink+expand) captured, then replayed
    with new slots, queries, K/V and context lengths; every replay matches the references."""
    gen = torch.Generator(device=DEV).manual_seed(0)
    dt = torch.bfloat16
    batch, num_slots, rank, hidden, widths = 8, 6, 16, 256, [256, 64, 64]
    kv_heads, q_heads, head_dim, page, max_blocks = 2, 8, 64, 16, 12
    a = torch.randn(3, num_slots, rank, hidden, device=DEV, dtype=dt, generator=gen) / 16
    b = torch.randn(3, num_slots, max(widths), rank, device=DEV, dtype=dt, generator=gen) / 4
    ranks = torch.tensor([16, 8, 1, 16, 0, 4], device=DEV, dtype=torch.int32)
    for slot, r in enumerate(ranks.tolist()):
        a[:, slot, r:] = 0
        b[:, slot, :, r:] = 0
    scales = torch.rand(num_slots, device=DEV, generator=gen) + 0.5
    offsets = [0, 256, 320, 384]
    num_blocks = batch * max_blocks
    k_cache = torch.randn(num_blocks, page, kv_heads, head_dim, device=DEV, dtype=dt, generator=gen)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks, device=DEV, generator=gen).view(batch, max_blocks).int()

    # Static inputs of the graph.
    slots = torch.zeros(batch, dtype=torch.int32, device=DEV)
    x = torch.zeros(batch, hidden, device=DEV, dtype=dt)
    y_in = torch.zeros(batch, 384, device=DEV, dtype=dt)
    q = torch.zeros(batch, q_heads, head_dim, device=DEV, dtype=dt)
    k_new = torch.zeros(batch, kv_heads, head_dim, device=DEV, dtype=dt)
    v_new = torch.zeros_like(k_new)
    seq_lens = torch.ones(batch, dtype=torch.int32, device=DEV)
    slot_mapping = torch.zeros(batch, dtype=torch.long, device=DEV)
    meta = LoraBatchMeta.allocate(64, num_slots, DEV)

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        meta.update_(slots)
        reshape_and_cache_(k_new, v_new, k_cache, v_cache, slot_mapping)
        attn = paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, head_dim**-0.5)
        y = y_in.clone()
        lora_expand_(y, lora_shrink(x, a, ranks, meta), b, ranks, scales, offsets, meta)
        y_fused = y_in.clone()  # the fused decode kernel, twice: its counters re-arm in-graph
        lora_apply_(y_fused, x, a, b, ranks, scales, offsets, meta)
        lora_apply_(y_fused, x, a, b, ranks, scales, offsets, meta)
        return attn, y, y_fused

    def fill(seed: int) -> None:
        g = torch.Generator(device=DEV).manual_seed(seed)
        slots.copy_(torch.randint(-1, num_slots, (batch,), device=DEV, generator=g))
        x.normal_(generator=g)
        y_in.normal_(generator=g)
        q.normal_(generator=g)
        k_new.normal_(generator=g)
        v_new.normal_(generator=g)
        lens = torch.randint(0, max_blocks * page + 1, (batch,), device=DEV, generator=g)
        seq_lens.copy_(lens)
        pos = (lens - 1).clamp(min=0)
        mapping = tables.gather(1, (pos // page)[:, None].long())[:, 0] * page + pos % page
        slot_mapping.copy_(torch.where(lens > 0, mapping, -1))

    fill(1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles the kernels) off the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attn_out, y_out, y_fused = step()

    for seed in (2, 3, 4):
        fill(seed)
        graph.replay()
        torch.cuda.synchronize()
        ref_attn = paged_decode_attention_ref(
            q.float(), k_cache.float(), v_cache.float(), tables, seq_lens, head_dim**-0.5
        )
        torch.testing.assert_close(attn_out.float(), ref_attn, atol=3e-2, rtol=3e-2)
        h = lora_shrink_ref(x.float(), a.float(), ranks, slots)
        y_ref = y_in.float().clone()
        lora_expand_ref_(y_ref, h, b.float(), ranks, scales, offsets, slots)
        torch.testing.assert_close(y_out.float(), y_ref, atol=3e-2, rtol=3e-2)
        assert torch.equal(y_out[slots < 0], y_in[slots < 0])
        y_twice = y_in.float().clone()
        lora_expand_ref_(y_twice, 2 * h, b.float(), ranks, scales, offsets, slots)
        torch.testing.assert_close(y_fused.float(), y_twice, atol=5e-2, rtol=5e-2)
        assert torch.equal(y_fused[slots < 0], y_in[slots < 0])
        assert not meta.sync.any()


def test_public_functions_dispatch_to_triton_on_cuda() -> None:
    """The CUDA kernel registered for each op is the Triton one (not the reference fallback)."""
    from lorax_kernels.sgmv import triton as sgmv_triton

    calls: list[str] = []
    original = sgmv_triton.shrink

    def spy(*args, **kwargs):
        calls.append("shrink")
        return original(*args, **kwargs)

    sgmv_triton.shrink = spy
    try:
        meta = LoraBatchMeta.allocate(4, 2, DEV)
        meta.update_(torch.tensor([0, 1, -1], dtype=torch.int32, device=DEV))
        a = torch.randn(1, 2, 16, 32, device=DEV)
        lora_shrink(
            torch.randn(3, 32, device=DEV), a, torch.tensor([16, 16], device=DEV).int(), meta
        )
    finally:
        sgmv_triton.shrink = original
    assert calls == ["shrink"]


def test_lora_apply_routes_decode_batches_to_the_fused_kernel() -> None:
    """Up to DECODE_MAX_ROWS rows: one fused launch; more: the tile shrink + expand."""
    from lorax_kernels.sgmv import DECODE_MAX_ROWS
    from lorax_kernels.sgmv import decode as sgmv_decode
    from lorax_kernels.sgmv import triton as sgmv_triton

    calls: list[str] = []
    originals = (sgmv_decode.decode_lora_, sgmv_triton.shrink, sgmv_triton.expand_)

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapped

    sgmv_decode.decode_lora_ = spy("fused", originals[0])
    sgmv_triton.shrink = spy("shrink", originals[1])
    sgmv_triton.expand_ = spy("expand", originals[2])
    try:
        a = torch.randn(1, 2, 16, 32, device=DEV)
        b = torch.randn(1, 2, 48, 16, device=DEV)
        ranks = torch.tensor([16, 4], device=DEV).int()
        scales = torch.ones(2, device=DEV)
        for rows in (DECODE_MAX_ROWS, DECODE_MAX_ROWS + 1):
            meta = LoraBatchMeta.allocate(rows, 2, DEV)
            meta.update_(torch.randint(-1, 2, (rows,), device=DEV, dtype=torch.int32))
            x = torch.randn(rows, 32, device=DEV)
            y = torch.zeros(rows, 48, device=DEV)
            lora_apply_(y, x, a, b, ranks, scales, [0, 48], meta)
            y_ref = torch.zeros_like(y)
            slots = meta.token_slots[:rows]
            h = lora_shrink_ref(x, a, ranks, slots)
            lora_expand_ref_(y_ref, h, b, ranks, scales, [0, 48], slots)
            torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    finally:
        sgmv_decode.decode_lora_, sgmv_triton.shrink, sgmv_triton.expand_ = originals
    assert calls == ["fused", "shrink", "expand"]
