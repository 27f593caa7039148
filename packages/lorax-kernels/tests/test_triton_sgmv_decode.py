"""The fused one-launch decode LoRA kernel against the fp32 reference, and its two other forms
against it bit for bit (the split launches always, the per-token kernel with 16-bit activations).

Runs on CUDA at real shapes, or on CPU under ``TRITON_INTERPRET=1`` at small shapes (started by
test_interpreter.py in a subprocess). The interpreter runs programs one at a time in order, which
exercises the ticket order: every expand unit must find its shrink units already arrived.
"""

from __future__ import annotations

import pytest
import torch
from lora_tables import random_lora_tables
from triton_env import CUDA, DEVICE, NEEDS_TRITON

from lorax_kernels.sgmv.meta import sync_size
from lorax_kernels.sgmv.reference import lora_expand_ref_, lora_shrink_ref

pytestmark = NEEDS_TRITON
# Fixed per-dtype tolerances (atol, rtol) against the fp32 reference on the same inputs.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}


def _tables(in_features: int, widths: tuple[int, ...], ranks: list[int], dtype, seed: int):
    """A, B (in ``dtype``), ranks, scales and slice offsets."""
    gen = torch.Generator().manual_seed(seed)
    num_slots = len(ranks)
    a, b = random_lora_tables(in_features, widths, ranks, gen)
    ranks_t = torch.tensor(ranks, dtype=torch.int32, device=DEVICE)
    scales = (torch.rand(num_slots, generator=gen) + 0.5).to(DEVICE)
    offsets = [0, *torch.tensor(widths).cumsum(0).tolist()]
    return a.to(DEVICE, dtype), b.to(DEVICE, dtype), ranks_t, scales, offsets


def _inputs(num_rows: int, in_features: int, out: int, num_slots: int, dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    slots = torch.randint(-1, num_slots, (num_rows,), generator=gen, dtype=torch.int32)
    x = torch.randn(num_rows, in_features, generator=gen)
    y = torch.randn(num_rows, out, generator=gen)
    return slots.to(DEVICE), x.to(DEVICE, dtype), y.to(DEVICE, dtype)


def _run(y, x, a, b, ranks, scales, offsets, slots, sync=None) -> torch.Tensor:
    from lorax_kernels.sgmv.decode import decode_lora_

    sync = (
        torch.zeros(sync_size(x.shape[0]), dtype=torch.int32, device=DEVICE)
        if sync is None
        else sync
    )
    out = y.clone()
    decode_lora_(out, x, a, b, ranks, scales, offsets, slots, sync)
    assert not sync.any(), "the kernel must leave its counters zero for the next launch"
    return out


def _reference(y, x, a, b, ranks, scales, offsets, slots) -> torch.Tensor:
    h = lora_shrink_ref(x.float(), a.float(), ranks, slots)
    y_ref = y.float().clone()
    lora_expand_ref_(y_ref, h, b.float(), ranks, scales, offsets, slots)
    return y_ref


SMALL = [
    # (rows, in_features, slice widths, slot ranks)
    (1, 32, (24,), [4]),
    (37, 40, (24, 8, 8), [1, 8, 0, 5, 16]),
    (13, 600, (48, 20), [128, 3, 64, 1]),  # several shrink and expand chunks per token
    (9, 96, (0, 700, 5, 64), [16, 2]),  # four slices, one empty, one of several chunks
    (6, 64, (40,), [12, 7, 3]),  # table rank 12: B read in 4-wide vectors
    (5, 48, (16, 8), [7, 1]),  # table rank 7: element by element
]
LARGE = [
    (1, 4096, (4096,), [16] * 8),
    (64, 4096, (4096,), [16] * 64),
    (64, 4096, (4096, 1024, 1024), [1, 8, 16, 64, 128, 0, 32, 7]),
    (255, 4096, (14336, 14336), [16, 64, 8, 128]),
    (33, 14336, (4096,), [16, 16, 32, 1]),
]


def _check(
    rows: int, k: int, widths: tuple[int, ...], ranks: list[int], dtype, table_dtype=None
) -> None:
    a, b, ranks_t, scales, offsets = _tables(k, widths, ranks, table_dtype or dtype, rows)
    slots, x, y = _inputs(rows, k, sum(widths), len(ranks), dtype, rows + 1)
    out = _run(y, x, a, b, ranks_t, scales, offsets, slots)
    atol, rtol = TOL[dtype]
    y_ref = _reference(y, x, a, b, ranks_t, scales, offsets, slots)
    torch.testing.assert_close(out.float(), y_ref, atol=atol, rtol=rtol)
    assert torch.equal(out[slots < 0], y[slots < 0])  # untouched, bit for bit


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize(("rows", "k", "widths", "ranks"), SMALL)
def test_fused_lora_small(rows, k, widths, ranks, dtype) -> None:
    _check(rows, k, widths, ranks, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize(("rows", "k", "widths", "ranks"), LARGE)
def test_fused_lora_real_shapes(rows, k, widths, ranks, dtype) -> None:
    _check(rows, k, widths, ranks, dtype)


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize(("rows", "k", "widths", "ranks"), SMALL[1:5])
def test_fused_lora_fp8_tables_small(rows, k, widths, ranks, dtype) -> None:
    """float8 e4m3 tables (``--lora-dtype fp8``): the reference on the tables' exact values."""
    _check(rows, k, widths, ranks, dtype, torch.float8_e4m3fn)


@pytest.mark.gpu
@pytest.mark.parametrize(("rows", "k", "widths", "ranks"), LARGE)
def test_fused_lora_fp8_tables_real_shapes(rows, k, widths, ranks) -> None:
    _check(rows, k, widths, ranks, torch.bfloat16, torch.float8_e4m3fn)


def _run_split(y, x, a, b, ranks, scales, offsets, slots) -> torch.Tensor:
    from lorax_kernels.sgmv.decode_split import (
        decode_expand_,
        decode_partials_shape,
        decode_shrink_,
    )

    partials = torch.full(
        decode_partials_shape(x.shape[0], a, offsets), float("nan"), device=DEVICE
    )
    out = y.clone()
    decode_shrink_(partials, x, a, ranks, offsets, slots)
    decode_expand_(out, partials, b, ranks, scales, offsets, slots)
    return out


def _check_split(rows: int, k: int, widths: tuple[int, ...], ranks: list[int], dtype) -> None:
    """Shrink and expand as two launches give the fused kernel's result bit for bit (the
    partials start as NaN: rows of tokens without adapter are never read)."""
    a, b, ranks_t, scales, offsets = _tables(k, widths, ranks, dtype, rows)
    slots, x, y = _inputs(rows, k, sum(widths), len(ranks), dtype, rows + 1)
    split = _run_split(y, x, a, b, ranks_t, scales, offsets, slots)
    assert torch.equal(split, _run(y, x, a, b, ranks_t, scales, offsets, slots))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("rows", "k", "widths", "ranks"), SMALL)
def test_split_launches_match_fused_small(rows, k, widths, ranks, dtype) -> None:
    _check_split(rows, k, widths, ranks, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize(("rows", "k", "widths", "ranks"), LARGE)
def test_split_launches_match_fused_real_shapes(rows, k, widths, ranks) -> None:
    _check_split(rows, k, widths, ranks, torch.bfloat16)


def _run_token(y, x, a, b, ranks, scales, offsets, slots) -> torch.Tensor:
    from lorax_kernels.sgmv.decode_token import decode_token_lora_

    out = y.clone()
    decode_token_lora_(out, x, a, b, ranks, scales, offsets, slots)
    return out


def _check_token(rows: int, k: int, widths: tuple[int, ...], ranks: list[int], dtype) -> None:
    """The per-token kernel: the reference's result, rows of tokens without adapter untouched,
    and the fused kernel's bits with 16-bit activations. Their products are exact in fp32, so
    the two agree however the compiler contracts multiplies and adds; in fp32 on the GPU it
    contracts them differently in the two kernels (last-bit differences)."""
    a, b, ranks_t, scales, offsets = _tables(k, widths, ranks, dtype, rows)
    slots, x, y = _inputs(rows, k, sum(widths), len(ranks), dtype, rows + 1)
    out = _run_token(y, x, a, b, ranks_t, scales, offsets, slots)
    atol, rtol = TOL[dtype]
    y_ref = _reference(y, x, a, b, ranks_t, scales, offsets, slots)
    torch.testing.assert_close(out.float(), y_ref, atol=atol, rtol=rtol)
    assert torch.equal(out[slots < 0], y[slots < 0])
    fused = _run(y, x, a, b, ranks_t, scales, offsets, slots)
    if CUDA and dtype == torch.float32:
        torch.testing.assert_close(out, fused, atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(out, fused)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("rows", "k", "widths", "ranks"), SMALL)
def test_per_token_kernel_small(rows, k, widths, ranks, dtype) -> None:
    _check_token(rows, k, widths, ranks, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize(("rows", "k", "widths", "ranks"), LARGE)
def test_per_token_kernel_real_shapes(rows, k, widths, ranks) -> None:
    _check_token(rows, k, widths, ranks, torch.bfloat16)


@pytest.mark.gpu
def test_per_token_kernel_fp8_tables() -> None:
    a, b, ranks_t, scales, offsets = _tables(4096, (4096,), [16, 8, 1, 16], torch.float8_e4m3fn, 2)
    slots, x, y = _inputs(64, 4096, 4096, 4, torch.bfloat16, 3)
    out = _run_token(y, x, a, b, ranks_t, scales, offsets, slots)
    torch.testing.assert_close(
        out.float(), _reference(y, x, a, b, ranks_t, scales, offsets, slots), atol=3e-2, rtol=3e-2
    )
    assert torch.equal(out, _run(y, x, a, b, ranks_t, scales, offsets, slots))


def test_split_launches_reject_mismatched_partials() -> None:
    from lorax_kernels.sgmv.decode_split import (
        decode_expand_,
        decode_partials_shape,
        decode_shrink_,
    )

    a, b, ranks_t, scales, offsets = _tables(64, (24, 8), [8, 4], torch.float32, 3)
    slots, x, y = _inputs(5, 64, 32, 2, torch.float32, 4)
    shape = decode_partials_shape(5, a, offsets)
    with pytest.raises(ValueError, match="contiguous"):
        decode_shrink_(
            torch.zeros(shape[0] + 1, *shape[1:], device=DEVICE), x, a, ranks_t, offsets, slots
        )
    with pytest.raises(ValueError, match="float32"):
        decode_shrink_(
            torch.zeros(shape, device=DEVICE, dtype=torch.float64), x, a, ranks_t, offsets, slots
        )
    with pytest.raises(ValueError, match="rows"):
        decode_expand_(
            y,
            torch.zeros(shape[0] - 2, *shape[1:], device=DEVICE),
            b,
            ranks_t,
            scales,
            offsets,
            slots,
        )


def test_token_result_does_not_depend_on_the_batch() -> None:
    """A token's output bits are the same alone, in a batch, and at another row of a batch."""
    dtype = torch.bfloat16 if CUDA else torch.float16
    k, widths, ranks = (4096, (4096, 1024), [16, 64, 8]) if CUDA else (300, (40, 8), [16, 5, 8])
    a, b, ranks_t, scales, offsets = _tables(k, widths, ranks, dtype, 5)
    slots, x, y = _inputs(24, k, sum(widths), len(ranks), dtype, 6)
    slots[7] = 1
    full = _run(y, x, a, b, ranks_t, scales, offsets, slots)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    permuted = _run(y[perm], x[perm], a, b, ranks_t, scales, offsets, slots[perm])
    assert torch.equal(permuted, full[perm])
    alone = _run(y[7:8], x[7:8], a, b, ranks_t, scales, offsets, slots[7:8])
    assert torch.equal(alone, full[7:8])


def test_padded_rows_and_reused_counters() -> None:
    """More rows than tokens (a CUDA-graph bucket: slots past the step are -1) and one counter
    buffer reused by several launches of different sizes, as every layer of a step does."""
    dtype = torch.float32
    a, b, ranks_t, scales, offsets = _tables(64, (24, 8), [8, 4, 16], dtype, 11)
    sync = torch.zeros(sync_size(40), dtype=torch.int32, device=DEVICE)
    for rows, live in ((40, 40), (16, 3), (40, 17)):
        slots, x, y = _inputs(rows, 64, 32, 3, dtype, rows + live)
        slots[live:] = -1
        out = _run(y, x, a, b, ranks_t, scales, offsets, slots, sync)
        y_ref = _reference(y, x, a, b, ranks_t, scales, offsets, slots)
        torch.testing.assert_close(out.float(), y_ref, atol=1e-4, rtol=1e-4)
        assert torch.equal(out[live:], y[live:])


@pytest.mark.gpu
def test_graph_replay_at_real_shapes_matches_eager_bit_for_bit() -> None:
    """``update_`` + ``lora_apply_`` on a fused qkv projection captured once, replayed with new
    slots and activations: each replay equals the reference and, bit for bit, an eager call."""
    from lorax_kernels import LoraBatchMeta, lora_apply_

    dtype, rows, k, widths = torch.bfloat16, 64, 4096, (4096, 1024, 1024)
    ranks = [16, 8, 64, 1, 16, 32] * 8
    a, b, ranks_t, scales, offsets = _tables(k, widths, ranks, dtype, 0)
    meta = LoraBatchMeta.allocate(256, len(ranks), DEVICE)
    slots = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
    x = torch.zeros(rows, k, dtype=dtype, device=DEVICE)
    y_in = torch.zeros(rows, sum(widths), dtype=dtype, device=DEVICE)

    def step() -> torch.Tensor:
        meta.update_(slots)
        y = y_in.clone()
        lora_apply_(y, x, a, b, ranks_t, scales, offsets, meta)
        return y

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile outside the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph = step()
    for seed in (1, 2, 3):
        new_slots, new_x, new_y = _inputs(rows, k, sum(widths), len(ranks), dtype, seed)
        slots.copy_(new_slots)
        x.copy_(new_x)
        y_in.copy_(new_y)
        graph.replay()
        eager = step()
        torch.cuda.synchronize()
        assert torch.equal(y_graph, eager)
        y_ref = _reference(new_y, new_x, a, b, ranks_t, scales, offsets, new_slots)
        torch.testing.assert_close(y_graph.float(), y_ref, atol=3e-2, rtol=3e-2)
        assert not meta.sync.any()
