"""Triton SGMV shrink/expand against the fp32 reference.

Runs on CUDA at real shapes, or on CPU under ``TRITON_INTERPRET=1`` at small shapes (started by
test_interpreter.py in a subprocess, since the variable must be set before Triton is imported).
"""

from __future__ import annotations

import pytest
import torch
from lora_tables import random_lora_tables
from triton_env import DEVICE, INTERPRET, NEEDS_TRITON

from lorax_kernels import LoraBatchMeta
from lorax_kernels.sgmv.reference import lora_expand_ref_, lora_shrink_ref

pytestmark = NEEDS_TRITON
# Fixed per-dtype tolerances (atol, rtol) against the fp32 reference on the same inputs.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}
DTYPES = list(TOL)
# Triton's interpreter (3.9) computes tl.dot on bf16 operands wrongly (numpy has no bf16), so bf16
# is covered on the GPU only.
DOT_DTYPES = [d for d in DTYPES if not (INTERPRET and d == torch.bfloat16)]


def _case(
    num_tokens: int,
    in_features: int,
    widths: tuple[int, ...],
    ranks: list[int],
    dtype: torch.dtype,
    seed: int,
    grouped: bool,
    table_dtype: torch.dtype | None = None,
):
    """Inputs in ``dtype``; the slot tables in ``table_dtype`` (default: ``dtype``)."""
    gen = torch.Generator().manual_seed(seed)
    num_slots = len(ranks)
    a, b = random_lora_tables(in_features, widths, ranks, gen)
    slots = torch.randint(-1, num_slots, (num_tokens,), generator=gen, dtype=torch.int32)
    if grouped:  # prefill-like: long runs per adapter, as the scheduler orders them
        slots = slots.sort().values
    x = torch.randn(num_tokens, in_features, generator=gen)
    y = torch.randn(num_tokens, sum(widths), generator=gen)

    def dev(t: torch.Tensor, float_dtype: torch.dtype = dtype) -> torch.Tensor:
        return t.to(DEVICE, float_dtype if t.is_floating_point() else t.dtype)

    return (
        dev(x),
        dev(a, table_dtype or dtype),
        dev(b, table_dtype or dtype),
        dev(torch.tensor(ranks, dtype=torch.int32)),
        dev(torch.rand(num_slots, generator=gen) + 0.5, torch.float32),
        dev(slots),
        dev(y),
    )


def _check(x, a, b, ranks, scales, slots, y, widths, block_m=16, split_k=None) -> None:
    from lorax_kernels.sgmv.triton import expand_, shrink

    dtype = x.dtype
    atol, rtol = TOL[dtype]
    meta = LoraBatchMeta.allocate(x.shape[0] + 5, a.shape[1], DEVICE, block_m=block_m)
    meta.update_(slots)
    tiles = (meta.sorted_ids, meta.tile_slot, meta.tile_start, meta.tile_end)
    h = shrink(x, a, ranks, *tiles, meta.num_tiles, meta.block_m, split_k=split_k)
    h_ref = lora_shrink_ref(x.float(), a.float(), ranks, slots)
    torch.testing.assert_close(h, h_ref, atol=atol, rtol=rtol)

    offsets = [0, *torch.tensor(widths).cumsum(0).tolist()]
    y_ref = y.float().clone()
    lora_expand_ref_(y_ref, h_ref, b.float(), ranks, scales, offsets, slots)
    out = y.clone()
    expand_(out, h_ref, b, ranks, scales, offsets, *tiles, meta.num_tiles, meta.block_m)
    torch.testing.assert_close(out.float(), y_ref, atol=atol, rtol=rtol)
    no_adapter = slots < 0
    assert torch.equal(out[no_adapter], y[no_adapter])  # untouched, bit for bit


SMALL = [
    # (tokens, in_features, slice widths, slot ranks, grouped)
    (1, 32, (24,), [4], False),
    (37, 40, (24, 8, 8), [1, 8, 0, 5, 16], False),
    (50, 64, (48, 20), [128, 3, 64, 1], True),
    (5, 1024, (24,), [8, 3], False),  # few tiles, long K: split-K (4 partials) is chosen
]
LARGE = [
    (1, 4096, (4096,), [16] * 8, False),
    (64, 4096, (4096, 1024, 1024), [1, 8, 16, 64, 128, 0, 32, 7], False),
    (517, 4096, (14336, 14336), [16, 64, 8, 128], True),
    (2048, 14336, (4096,), [16, 16, 32, 1], True),
]


@pytest.mark.parametrize("dtype", DOT_DTYPES, ids=str)
@pytest.mark.parametrize(("tokens", "k", "widths", "ranks", "grouped"), SMALL)
def test_shrink_expand_small(tokens, k, widths, ranks, grouped, dtype) -> None:
    _check(*_case(tokens, k, widths, ranks, dtype, tokens, grouped), widths)


def test_block_m_32() -> None:
    widths = (24, 8)
    _check(*_case(70, 40, widths, [4, 16], torch.float32, 3, True), widths, block_m=32)


@pytest.mark.parametrize("split_k", [1, 2, 3])
def test_explicit_split_k(split_k: int) -> None:
    widths = (40,)
    case = _case(21, 768, widths, [16, 5, 0], torch.float16, split_k, False)
    _check(*case, widths, split_k=split_k)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("tokens", "k", "widths", "ranks", "grouped"), LARGE)
def test_shrink_expand_real_shapes(tokens, k, widths, ranks, grouped, dtype) -> None:
    _check(*_case(tokens, k, widths, ranks, dtype, tokens, grouped), widths)


@pytest.mark.parametrize("dtype", DOT_DTYPES, ids=str)
@pytest.mark.parametrize(("tokens", "k", "widths", "ranks", "grouped"), SMALL[1:3])
def test_fp8_tables_small(tokens, k, widths, ranks, grouped, dtype) -> None:
    """float8 e4m3 tables (``--lora-dtype fp8``) under activations of every dtype: the same
    result as the reference on the tables' exact values."""
    case = _case(tokens, k, widths, ranks, dtype, tokens, grouped, torch.float8_e4m3fn)
    _check(*case, widths)


@pytest.mark.gpu
@pytest.mark.parametrize(("tokens", "k", "widths", "ranks", "grouped"), LARGE)
def test_fp8_tables_real_shapes(tokens, k, widths, ranks, grouped) -> None:
    case = _case(tokens, k, widths, ranks, torch.bfloat16, tokens, grouped, torch.float8_e4m3fn)
    _check(*case, widths)


def test_tables_of_another_dtype_are_refused() -> None:
    from lorax_kernels import lora_apply_, lora_expand_, lora_shrink

    widths = (24,)
    x, a, b, ranks, scales, slots, y = _case(3, 32, widths, [4], torch.float32, 1, False)
    meta = LoraBatchMeta.allocate(3, 1, DEVICE)
    meta.update_(slots)
    with pytest.raises(ValueError, match="LoRA tables must be"):
        lora_shrink(x, a.half(), ranks, meta)
    with pytest.raises(ValueError, match="LoRA tables must be"):
        lora_expand_(y, torch.zeros(1, 3, 4, device=DEVICE), b.half(), ranks, scales, [0, 24], meta)
    for bad_a, bad_b in ((a.half(), b), (a, b.half())):  # 3 rows: the fused kernel's checks
        with pytest.raises(ValueError, match="LoRA tables must be"):
            lora_apply_(y, x, bad_a, bad_b, ranks, scales, [0, 24], meta)


@pytest.mark.parametrize("dtype", DOT_DTYPES, ids=str)
def test_padded_rows_after_a_larger_step(dtype) -> None:
    """A CUDA-graph bucket runs over more rows than this step's tokens, after a larger step:
    rows past the step's tokens get no adapter and no stale tile from the earlier step."""
    from lorax_kernels.sgmv.triton import expand_, shrink

    widths = (24, 8)
    x, a, b, ranks, scales, slots, y = _case(40, 48, widths, [8, 4, 16], dtype, 11, False)
    meta = LoraBatchMeta.allocate(64, a.shape[1], DEVICE)
    # An earlier, larger step with runs on every slot (tiles at every index up to 4).
    meta.update_((torch.arange(40, device=DEVICE) % 4 - 1).int())
    n = 2
    meta.update_(slots[:n])
    tiles = (meta.sorted_ids, meta.tile_slot, meta.tile_start, meta.tile_end)
    grid = meta.tiles_for(x.shape[0])
    h = shrink(x, a, ranks, *tiles, grid, meta.block_m)
    out = y.clone()
    expand_(out, h, b, ranks, scales, [0, 24, 32], *tiles, grid, meta.block_m)
    h_ref = lora_shrink_ref(x[:n].float(), a.float(), ranks, slots[:n])
    y_ref = y[:n].float().clone()
    lora_expand_ref_(y_ref, h_ref, b.float(), ranks, scales, [0, 24, 32], slots[:n])
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out[:n].float(), y_ref, atol=atol, rtol=rtol)
    assert torch.equal(out[n:], y[n:])
