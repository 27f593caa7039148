"""Every Triton kernel, in the variants its launchers choose, compiles for Hopper (sm_90) without a
GPU, within a block's shared memory: CI catches a kernel that the interpreter runs but the GPU
refuses, before any GPU time is spent. The launchers run on CPU tensors at Llama-3-8B shapes;
nothing is computed."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from sm90_compile import HOPPER_MAX_SHARED, captured_launches, compile_sm90

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter replaces the JIT functions"
)

BF16, FP8 = torch.bfloat16, torch.float8_e4m3fn


def _decode_attention() -> None:
    from lorax_kernels.decode_attention.triton import paged_decode_attention

    for q_dtype, kv_dtype in ((BF16, BF16), (BF16, FP8), (torch.float16, torch.float16)):
        # Batch 4: split (merged in the launch or by a second one); batch 64: one partition.
        for batch in (4, 64):
            q = torch.empty(batch, 32, 128, dtype=q_dtype)
            cache = torch.empty(64, 16, 8, 128, dtype=kv_dtype)
            tables = torch.zeros(batch, 16, dtype=torch.int32)
            lens = torch.full((batch,), 200, dtype=torch.int32)
            for merge_in_launch in (True, False):
                paged_decode_attention(
                    q, cache, cache, tables, lens, 0.1, merge_in_launch=merge_in_launch
                )


def _prefill_attention_and_cache_write() -> None:
    from lorax_kernels.kv_cache.triton import reshape_and_cache_
    from lorax_kernels.prefill_attention.triton import paged_prefill_attention

    for kv_dtype in (BF16, FP8):
        q = torch.empty(64, 32, 128, dtype=BF16)
        cache = torch.empty(64, 16, 8, 128, dtype=kv_dtype)
        tables = torch.zeros(2, 16, dtype=torch.int32)
        starts = torch.tensor([0, 40, 64], dtype=torch.int32)
        lens = torch.tensor([100, 24], dtype=torch.int32)
        paged_prefill_attention(q, cache, cache, tables, starts, lens, 0.1, sliding_window=50)
        k = torch.empty(64, 8, 128, dtype=BF16)
        reshape_and_cache_(k, k, cache, cache, torch.zeros(64, dtype=torch.int64), 0.5, 0.25)


def _elementwise() -> None:
    from lorax_kernels.activation.triton import silu_and_mul
    from lorax_kernels.norm.triton import fused_add_rms_norm, rms_norm
    from lorax_kernels.rotary.triton import rotary_embedding_

    x = torch.empty(4, 4096, dtype=BF16)
    weight = torch.empty(4096, dtype=BF16)
    rms_norm(x, weight, 1e-5)
    fused_add_rms_norm(x, x, weight, 1e-5)
    silu_and_mul(torch.empty(4, 2 * 14336, dtype=BF16))
    qk = torch.empty(4, 40, 128, dtype=BF16)
    rotary_embedding_(qk, torch.zeros(4, dtype=torch.int64), torch.empty(8192, 128))


def _greedy() -> None:
    from lorax_kernels.greedy.triton import greedy_logprob

    greedy_logprob(torch.empty(4, 128256))  # each row split in chunks, merged in the launch
    greedy_logprob(torch.empty(512, 128256))  # one program per row


def _fp8_matmuls() -> None:
    from lorax_kernels.fp8_gemv import quantize_rows
    from lorax_kernels.fp8_gemv.triton import fp8_gemv

    weight = torch.empty(6144, 4096, dtype=FP8)
    scale = torch.empty(6144)
    for rows in (1, 4, 16):  # CUDA-core rows, then tensor-core tiles
        fp8_gemv(torch.empty(rows, 4096, dtype=BF16), weight, scale, None)
    fp8_gemv(torch.empty(1, 4096, dtype=BF16), weight, scale, torch.empty(6144, dtype=BF16))
    for rows in (1, 2, 4):  # 16-bit weights (dense_gemv): the dense one-row tiling, then tiles
        fp8_gemv(torch.empty(rows, 4096, dtype=BF16), weight.to(BF16), None, None)
    quantize_rows(torch.empty(64, 4096, dtype=BF16))


def _w4a16() -> None:
    from lorax_kernels.w4a16.triton import w4a16_matmul

    qweight = torch.empty(4096 // 8, 4096, dtype=torch.int32)
    scales = torch.empty(32, 4096, dtype=BF16)
    perm = torch.arange(4096, dtype=torch.int32)
    for rows in (1, 4, 48, 96):  # few-rows mma kernel (one row, more), split tl.dot, prefill
        for act_order in (None, perm):
            w4a16_matmul(
                torch.empty(rows, 4096, dtype=BF16), qweight, scales, scales, act_order, 128
            )
    half_scales = torch.empty(32, 4096, dtype=torch.float16)  # the few-rows kernel's fp16 PTX
    for rows in (1, 4):
        w4a16_matmul(
            torch.empty(rows, 4096, dtype=torch.float16),
            qweight,
            half_scales,
            half_scales,
            None,
            128,
        )
    # Group 24 (one row too: the tl.dot tiling): no power-of-two step fits in a group; one scale
    # and zero per word row.
    scales_24 = torch.empty(-(-4096 // 24), 4096, dtype=BF16)
    w4a16_matmul(torch.empty(1, 4096, dtype=BF16), qweight, scales_24, scales_24, None, 24)


def _multi_lora() -> None:
    from lorax_kernels import LoraBatchMeta
    from lorax_kernels.sgmv.decode import decode_lora_
    from lorax_kernels.sgmv.decode_split import (
        decode_expand_,
        decode_partials_shape,
        decode_shrink_,
    )
    from lorax_kernels.sgmv.decode_token import decode_token_lora_
    from lorax_kernels.sgmv.meta import sync_size
    from lorax_kernels.sgmv.triton import expand_, shrink

    rows, slots, rank, widths = 64, 32, 16, (4096, 1024, 1024)
    offsets = [0, 4096, 5120, 6144]
    x = torch.empty(rows, 4096, dtype=BF16)
    y = torch.empty(rows, 6144, dtype=BF16)
    ranks = torch.full((slots,), rank, dtype=torch.int32)
    scales = torch.ones(slots)
    token_slots = torch.zeros(rows, dtype=torch.int32)
    sync = torch.zeros(sync_size(rows), dtype=torch.int32)
    meta = LoraBatchMeta.allocate(rows, slots, "cpu")
    meta.update_triton_(token_slots)
    tiles = (meta.sorted_ids, meta.tile_slot, meta.tile_start, meta.tile_end)
    for table_dtype in (BF16, torch.float8_e4m3fn):  # the model's dtype, --lora-dtype fp8
        a = torch.empty(3, slots, rank, 4096, dtype=table_dtype)
        b = torch.empty(3, slots, max(widths), rank, dtype=table_dtype)
        decode_lora_(y, x, a, b, ranks, scales, offsets, token_slots, sync)
        decode_token_lora_(y[:, :4096], x, a[:1], b[:1], ranks, scales, [0, 4096], token_slots)
        # A wider input (down_proj's): A streamed through the loop instead of loaded whole.
        a_down = torch.empty(1, slots, rank, 14336, dtype=table_dtype)
        x_down = torch.empty(rows, 14336, dtype=BF16)
        decode_token_lora_(
            y[:, :4096], x_down, a_down, b[:1], ranks, scales, [0, 4096], token_slots
        )
        partials = torch.empty(decode_partials_shape(rows, a, offsets))
        decode_shrink_(partials, x, a, ranks, offsets, token_slots)
        decode_expand_(y, partials, b, ranks, scales, offsets, token_slots)
        h = shrink(x, a, ranks, *tiles, meta.num_tiles, meta.block_m)
        expand_(y, h, b, ranks, scales, offsets, *tiles, meta.num_tiles, meta.block_m)


LAUNCHERS: dict[str, Callable[[], None]] = {
    "decode_attention": _decode_attention,
    "prefill_attention_and_cache_write": _prefill_attention_and_cache_write,
    "elementwise": _elementwise,
    "greedy": _greedy,
    "fp8_matmuls": _fp8_matmuls,
    "w4a16": _w4a16,
    "multi_lora": _multi_lora,
}


# Every launcher has kernels of the decode step, which are launched with PDL on Hopper.
@pytest.mark.parametrize(
    ("name", "pdl"),
    [(n, False) for n in LAUNCHERS] + [(n, True) for n in LAUNCHERS],
    ids=[*LAUNCHERS, *(f"{n}-pdl" for n in LAUNCHERS)],
)
def test_kernels_compile_for_sm90(name: str, pdl: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each launcher's kernels without PDL, and (``pdl``) with it, as on a Hopper GPU, where
    PDL is on by default (here on CPU tensors, which have no PDL, as though on one)."""
    from lorax_kernels import pdl as pdl_module

    monkeypatch.setattr(pdl_module, "pdl_supported", lambda device: True)
    monkeypatch.setattr(pdl_module, "_enabled", pdl)
    with captured_launches() as launches:
        LAUNCHERS[name]()
    assert launches, f"{name} launched no Triton kernel"
    if pdl:
        assert any(launch.kwargs.get("launch_pdl") for launch in launches), name
    for launch in launches:
        shared = compile_sm90(launch)
        assert shared <= HOPPER_MAX_SHARED, f"{launch.kernel} needs {shared} B of shared memory"
