"""Triton paged attention and KV-cache write against the fp32 references.

Runs on CUDA at real shapes, or on CPU under ``TRITON_INTERPRET=1`` at small shapes (started by
test_interpreter.py in a subprocess, since the variable must be set before Triton is imported).
"""

from __future__ import annotations

import pytest
import torch
from triton_env import DEVICE, INTERPRET, NEEDS_TRITON

from lorax_kernels.decode_attention.reference import paged_decode_attention_ref
from lorax_kernels.device import split_counters
from lorax_kernels.kv_cache.reference import FP8_KV_DTYPE, reshape_and_cache_ref_, to_cache_dtype
from lorax_kernels.prefill_attention.reference import paged_prefill_attention_ref

pytestmark = NEEDS_TRITON
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}
DTYPES = list(TOL)
# Triton's interpreter (3.9) computes tl.dot on bf16 operands wrongly (numpy has no bf16), so bf16
# attention is covered on the GPU only.
DOT_DTYPES = [d for d in DTYPES if not (INTERPRET and d == torch.bfloat16)]


# fp8 caches are tested with scales that are not 1 (K and V differ) so a scale applied to the wrong
# tensor, or not at all, shows.
FP8_SCALES = (0.25, 1.5)


def _paged_cache(lens, kv_heads, head_dim, page, dtype, gen, scales=(1.0, 1.0)):
    """Caches with every sequence's blocks scattered at random, plus a block table for each.

    fp8 caches hold standard normal K/V divided by ``scales``.
    """
    per_seq = max(1, -(-max(lens) // page))
    num_blocks = len(lens) * per_seq + 7
    shape = (num_blocks, page, kv_heads, head_dim)
    k_cache = to_cache_dtype(torch.randn(shape, generator=gen), dtype, scales[0]).to(DEVICE)
    v_cache = to_cache_dtype(torch.randn(shape, generator=gen), dtype, scales[1]).to(DEVICE)
    perm = torch.randperm(num_blocks, generator=gen)[: len(lens) * per_seq]
    tables = perm.view(len(lens), per_seq).to(DEVICE, torch.int32)
    return k_cache, v_cache, tables


def _check_decode(
    lens, q_heads, kv_heads, head_dim, page, window, dtype, cache_dtype=None, **knobs
) -> None:
    """Triton against the reference; ``cache_dtype`` (default: ``dtype``) may be fp8."""
    from lorax_kernels.decode_attention.triton import paged_decode_attention

    cache_dtype = cache_dtype or dtype
    scales = FP8_SCALES if cache_dtype == FP8_KV_DTYPE else (1.0, 1.0)
    gen = torch.Generator().manual_seed(sum(lens) + q_heads + kv_heads)
    k_cache, v_cache, tables = _paged_cache(
        lens, kv_heads, head_dim, page, cache_dtype, gen, scales
    )
    q = torch.randn(len(lens), q_heads, head_dim, generator=gen).to(DEVICE, dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5
    out = paged_decode_attention(
        q, k_cache, v_cache, tables, seq_lens, scale, window, *scales, **knobs
    )
    ref = paged_decode_attention_ref(
        q.float(), k_cache, v_cache, tables, seq_lens, scale, window, *scales
    )
    atol, rtol = TOL[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)


def _check_prefill(
    q_lens,
    lens,
    q_heads,
    kv_heads,
    head_dim,
    page,
    window,
    dtype,
    cache_dtype=None,
    *,
    pad=0,
    **knobs,
):
    """Triton against the reference; ``cache_dtype`` (default: ``dtype``) may be fp8. ``pad``
    query rows past the last run belong to no sequence (a CUDA graph's padding): not compared."""
    from lorax_kernels.prefill_attention.triton import paged_prefill_attention

    cache_dtype = cache_dtype or dtype
    scales = FP8_SCALES if cache_dtype == FP8_KV_DTYPE else (1.0, 1.0)
    gen = torch.Generator().manual_seed(sum(lens) + sum(q_lens) + kv_heads)
    k_cache, v_cache, tables = _paged_cache(
        lens, kv_heads, head_dim, page, cache_dtype, gen, scales
    )
    q = torch.randn(sum(q_lens) + pad, q_heads, head_dim, generator=gen).to(DEVICE, dtype)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    qsl = qsl.to(DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5
    out = paged_prefill_attention(
        q, k_cache, v_cache, tables, qsl, seq_lens, scale, window, *scales, **knobs
    )
    ref = paged_prefill_attention_ref(
        q.float(), k_cache, v_cache, tables, qsl, seq_lens, scale, window, *scales
    )
    atol, rtol = TOL[dtype]
    real = sum(q_lens)
    torch.testing.assert_close(out[:real].float(), ref[:real], atol=atol, rtol=rtol)


# (q heads, kv heads): ratios 1, 3 (not a power of two, like Qwen2-7B's 7), 4, 8.
GQA = [(4, 4), (6, 2), (8, 2), (8, 1)]


@pytest.mark.parametrize("dtype", DOT_DTYPES, ids=str)
@pytest.mark.parametrize(("q_heads", "kv_heads"), GQA)
@pytest.mark.parametrize("window", [None, 7])
def test_decode_small(q_heads, kv_heads, window, dtype) -> None:
    lens = [1, 15, 16, 17, 70, 0]
    _check_decode(lens, q_heads, kv_heads, 32, 4, window, dtype, block_n=16)
    # Forced split-K: 16-token partitions, merged by the last partition of each sequence.
    _check_decode(lens, q_heads, kv_heads, 32, 4, window, dtype, block_n=16, partition=16)
    # The same partials merged by a second launch instead.
    knobs = {"block_n": 16, "partition": 16, "merge_in_launch": False}
    _check_decode(lens, q_heads, kv_heads, 32, 4, window, dtype, **knobs)


@pytest.mark.parametrize("dtype", DOT_DTYPES, ids=str)
@pytest.mark.parametrize("window", [None, 100])
def test_decode_splits_each_sequence_by_its_own_length(window, dtype) -> None:
    """The automatic split in one batch: short sequences whole, long ones in partitions sized
    from their own length (300 tokens: 5 of 64; 700: 11 of 64), merged in the same launch."""
    from lorax_kernels.decode_attention.triton import choose_split, partition_of

    lens = [1, 300, 17, 700, 0]
    plan = choose_split(len(lens), 2, 700, 16, 132)
    assert [partition_of(n, plan) for n in lens] == [1, 64, 17, 64, 1]
    _check_decode(lens, 4, 2, 32, 4, window, dtype, block_n=16)
    _check_decode(lens, 4, 2, 32, 4, window, dtype, block_n=16, merge_in_launch=False)


def test_split_choice_follows_the_h200_partition_sweep() -> None:
    """The partitions run 7's sweep found fastest (Llama-3-8B: 8 kv heads, 132 SMs), or within
    1.3 µs of it (batch 1 at 4k; batch 16 at 512 and 4k)."""
    from lorax_kernels.decode_attention.triton import choose_split, partition_of

    def pick(batch: int, ctx: int, bound: int) -> int:
        return partition_of(ctx, choose_split(batch, 8, bound, 64, 132))

    # Batch 1: unsplit at 128 tokens, 64-token partitions at 512-1k, 32 partitions beyond.
    assert [pick(1, n, n) for n in (128, 512, 1024, 4096, 16384)] == [128, 64, 64, 128, 512]
    # Batch 16: unsplit up to 512, then 4-5 partitions of at least 256 tokens.
    assert [pick(16, n, n) for n in (512, 1024, 4096, 16384)] == [512, 256, 1024, 4096]
    # A graph captured for 8k tokens splits a short sequence by its own length.
    assert pick(1, 576, 8192) == 64
    assert choose_split(64, 8, 1024, 64, 132).num_parts == 1  # 512 programs: no split


@pytest.mark.parametrize("dtype", DOT_DTYPES, ids=str)
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(4, 4), (8, 2)])
@pytest.mark.parametrize("window", [None, 7])
def test_decode_fp8_cache(q_heads, kv_heads, window, dtype) -> None:
    lens = [1, 17, 70, 0]
    fp8 = FP8_KV_DTYPE
    _check_decode(lens, q_heads, kv_heads, 32, 4, window, dtype, fp8, block_n=16)
    _check_decode(lens, q_heads, kv_heads, 32, 4, window, dtype, fp8, block_n=16, partition=16)


def test_split_decode_is_repeatable_and_rearms_its_counters() -> None:
    """Two calls give the same bits (the merge order does not depend on arrival order), and
    every arrival counter is back at zero afterwards (what the next launch, or a CUDA graph
    replay, relies on)."""
    from lorax_kernels.decode_attention import triton as decode_triton

    gen = torch.Generator().manual_seed(3)
    lens = [70, 33, 5, 64]
    k_cache, v_cache, tables = _paged_cache(lens, 2, 32, 4, torch.float32, gen)
    q = torch.randn(len(lens), 8, 32, generator=gen).to(DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    args = (q, k_cache, v_cache, tables, seq_lens, 0.3)
    first = decode_triton.paged_decode_attention(*args, block_n=16, partition=16)
    second = decode_triton.paged_decode_attention(*args, block_n=16, partition=16)
    assert torch.equal(first, second)
    assert not split_counters(q.device).any()


@pytest.mark.parametrize("dtype", DOT_DTYPES, ids=str)
@pytest.mark.parametrize(("q_heads", "kv_heads"), GQA)
@pytest.mark.parametrize("window", [None, 9])
def test_prefill_small(q_heads, kv_heads, window, dtype) -> None:
    # Whole prompts, an extend over a prefix, a single-token chunk, an empty run.
    q_lens, lens = [19, 5, 1, 0, 40], [19, 37, 8, 3, 40]
    _check_prefill(q_lens, lens, q_heads, kv_heads, 32, 4, window, dtype, block_m=16, block_n=16)


# A mixed step's runs: one-token decodes around a prompt and an extend; empty runs (q_len 0, and
# seq_len 0) at the end, with padding rows past the last run, as a CUDA graph replays them.
MIXED_Q_LENS, MIXED_LENS = [1, 23, 1, 5, 1, 0, 0], [9, 23, 30, 12, 1, 0, 6]


@pytest.mark.parametrize("dtype", DOT_DTYPES, ids=str)
# Groups of 1 (MHA), 4, 7 (Qwen2-7B's 28 / 4, and on a single kv head) and 20 (past BLOCK_M).
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(4, 4), (8, 2), (7, 1), (28, 4), (20, 1)])
@pytest.mark.parametrize("window", [None, 5])
def test_prefill_packs_query_heads(q_heads, kv_heads, window, dtype) -> None:
    """A tile's 16 rows are query heads of consecutive tokens: with a group of 4 a 23-token run
    spans 92 rows (6 tiles, ending mid-tile), with 7 a 5-token run spans 35 (3 tiles) and a tile
    starts mid-token; with 20 every token's group spans two tiles; a decode's group fills part of
    one tile."""
    knobs = {"block_m": 16, "block_n": 16}
    args = (q_heads, kv_heads, 32, 4, window, dtype)
    _check_prefill(MIXED_Q_LENS, MIXED_LENS, *args, pad=5, **knobs)


@pytest.mark.parametrize("dtype", DOT_DTYPES, ids=str)
@pytest.mark.parametrize("window", [None, 9])
def test_prefill_fp8_cache(window, dtype) -> None:
    q_lens, lens = [19, 5, 0, 40], [19, 37, 3, 40]
    knobs = {"block_m": 16, "block_n": 16}
    _check_prefill(q_lens, lens, 8, 2, 32, 4, window, dtype, FP8_KV_DTYPE, **knobs)
    args = (MIXED_Q_LENS, MIXED_LENS, 28, 4, 32, 4, window, dtype, FP8_KV_DTYPE)
    _check_prefill(*args, pad=3, **knobs)


def test_head_dim_not_a_power_of_two() -> None:
    """head_dim 40 (padded to 64 inside the kernels), fp16, both attention kernels."""
    lens = [3, 21, 40]
    _check_decode(lens, 4, 2, 40, 8, None, torch.float16, block_n=16, partition=16)
    _check_prefill([3, 7, 40], lens, 4, 2, 40, 8, 11, torch.float16, block_m=16, block_n=16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reshape_and_cache(dtype) -> None:
    from lorax_kernels.kv_cache.triton import reshape_and_cache_

    gen = torch.Generator().manual_seed(0)
    k_cache = torch.randn(6, 4, 2, 24, generator=gen).to(DEVICE, dtype)
    v_cache = torch.randn(6, 4, 2, 24, generator=gen).to(DEVICE, dtype)
    k = torch.randn(9, 2, 24, generator=gen).to(DEVICE, dtype)
    v = torch.randn(9, 2, 24, generator=gen).to(DEVICE, dtype)
    slots = torch.tensor([3, 4, -1, 23, 0, 9, -1, 17, 5], device=DEVICE)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reshape_and_cache_ref_(k, v, k_ref, v_ref, slots)
    reshape_and_cache_(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_ref)
    assert torch.equal(v_cache, v_ref)


def test_reshape_and_cache_fp8() -> None:
    """fp8 caches get ``clamp(x / scale, ±448)`` rounded to e4m3, bit for bit as the reference.

    Under the interpreter the rows are fp8 values times a power-of-two scale, so dividing is
    exact (its software rounding of fp32 to e4m3 misses the carry into the next power of two),
    plus out-of-range values that must clamp; on the GPU they are any normal values.
    """
    from lorax_kernels.kv_cache.triton import reshape_and_cache_

    gen = torch.Generator().manual_seed(1)
    k_scale, v_scale = (0.25 if INTERPRET else 0.37), 2.0
    k = torch.randn(9, 2, 24, generator=gen) * 100
    v = torch.randn(9, 2, 24, generator=gen) * 100
    if INTERPRET:
        k = to_cache_dtype(k, FP8_KV_DTYPE, 1.0).float() * k_scale
        v = to_cache_dtype(v, FP8_KV_DTYPE, 1.0).float() * v_scale
    k[0, 0, :4] = torch.tensor([1e4, -1e4, 448 * k_scale * 1.5, -448 * k_scale * 1.01])
    k, v = k.to(DEVICE), v.to(DEVICE)
    k_cache = torch.zeros(6, 4, 2, 24, dtype=FP8_KV_DTYPE, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([3, 4, -1, 23, 0, 9, -1, 17, 5], device=DEVICE)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reshape_and_cache_ref_(k, v, k_ref, v_ref, slots, k_scale, v_scale)
    reshape_and_cache_(k, v, k_cache, v_cache, slots, k_scale, v_scale)
    assert torch.equal(k_cache.view(torch.uint8), k_ref.view(torch.uint8))
    assert torch.equal(v_cache.view(torch.uint8), v_ref.view(torch.uint8))
    assert k_cache.view(-1, 2, 24)[3, 0, :4].float().tolist() == [448, -448, 448, -448]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(32, 32), (32, 8), (32, 4)])
@pytest.mark.parametrize("window", [None, 1000])
def test_decode_real_shapes(q_heads, kv_heads, window, dtype) -> None:
    lens = [1, 16, 17, 1023, 4097, 0, 300, 16384]
    _check_decode(lens, q_heads, kv_heads, 128, 16, window, dtype)
    _check_decode(lens[:4], q_heads, kv_heads, 128, 16, window, dtype, partition=256)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("window", [None, 1000])
def test_attention_fp8_cache_real_shapes(window, dtype) -> None:
    lens = [1, 16, 17, 1023, 4097, 0, 300, 16384]
    fp8 = FP8_KV_DTYPE
    _check_decode(lens, 32, 8, 128, 16, window, dtype, fp8)
    _check_decode(lens[:4], 32, 8, 128, 16, window, dtype, fp8, partition=128)
    q_lens, p_lens = [1000, 129, 1, 2048, 0], [1000, 1500, 77, 2048, 16]
    _check_prefill(q_lens, p_lens, 32, 8, 128, 16, window, dtype, fp8)


@pytest.mark.gpu
@pytest.mark.parametrize("partition", [64, 128, 256, 512, 1024])
def test_decode_partition_sweep_values(partition) -> None:
    """Every partition the benchmark sweeps at batch 1 is a correct choice, merged either way."""
    lens = [640, 1, 4097]
    _check_decode(lens, 32, 8, 128, 16, None, torch.bfloat16, partition=partition)
    knobs = {"partition": partition, "merge_in_launch": False}
    _check_decode(lens, 32, 8, 128, 16, None, torch.bfloat16, **knobs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(32, 32), (32, 8), (32, 4)])
@pytest.mark.parametrize("window", [None, 500])
def test_prefill_real_shapes(q_heads, kv_heads, window, dtype) -> None:
    q_lens, lens = [1000, 129, 1, 2048, 0], [1000, 1500, 77, 2048, 16]
    _check_prefill(q_lens, lens, q_heads, kv_heads, 128, 16, window, dtype)
    # The former default (larger tiles, 8 warps) stays a valid choice of the tuning knobs.
    knobs = {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2}
    _check_prefill(q_lens, lens, q_heads, kv_heads, 128, 16, window, dtype, **knobs)
