"""``lora_shrink_partials`` + ``lora_expand_partials_`` (the shrink split off to run beside the
base GEMM) against ``lora_apply_``: on the CPU their reference implementations, on CUDA the
kernels (bit for bit, and inside a CUDA graph whose side stream runs the shrink)."""

from __future__ import annotations

import pytest
import torch
from lora_tables import random_lora_tables

from lorax_kernels import LoraBatchMeta, lora_apply_, lora_expand_partials_, lora_shrink_partials

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _case(rows: int, in_features: int, widths: tuple[int, ...], ranks: list[int], seed: int):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if CUDA else torch.float32
    a, b = (t.to(DEVICE, dtype) for t in random_lora_tables(in_features, widths, ranks, gen))
    ranks_t = torch.tensor(ranks, dtype=torch.int32, device=DEVICE)
    scales = (torch.rand(len(ranks), generator=gen) + 0.5).to(DEVICE)
    offsets = [0, *torch.tensor(widths).cumsum(0).tolist()]
    slots = torch.randint(-1, len(ranks), (rows,), generator=gen, dtype=torch.int32)
    x = torch.randn(rows, in_features, generator=gen).to(DEVICE, dtype)
    y = torch.randn(rows, sum(widths), generator=gen).to(DEVICE, dtype)
    meta = LoraBatchMeta.allocate(max(rows, 1), len(ranks), DEVICE)
    meta.update_(slots.to(DEVICE))
    return x, y, (a, b, ranks_t, scales, offsets), meta


def _split(x, y, tables, meta) -> torch.Tensor:
    a, b, ranks, scales, offsets = tables
    out = y.clone()
    partials = lora_shrink_partials(x, a, ranks, offsets, meta)
    lora_expand_partials_(out, partials, b, ranks, scales, offsets, meta)
    return out


def _fused(x, y, tables, meta) -> torch.Tensor:
    a, b, ranks, scales, offsets = tables
    out = y.clone()
    lora_apply_(out, x, a, b, ranks, scales, offsets, meta)
    return out


@pytest.mark.parametrize(
    ("rows", "in_features", "widths", "ranks"),
    [
        (1, 64, (48,), [8]),
        (13, 96, (64, 16, 16), [1, 8, 0, 16, 5]),
        (7, 200, (40, 40), [16, 3]),
        (40, 96, (64,), [16, 8, 0, 1]),  # lora_apply_ takes the per-token kernel here
    ],
)
def test_split_halves_equal_lora_apply(rows, in_features, widths, ranks) -> None:
    x, y, tables, meta = _case(rows, in_features, widths, ranks, rows)
    split = _split(x, y, tables, meta)
    fused = _fused(x, y, tables, meta)
    if CUDA:
        assert torch.equal(split, fused)
    else:  # the two references sum the same products in different orders
        torch.testing.assert_close(split, fused, atol=1e-5, rtol=1e-5)


def test_split_halves_refuse_what_lora_apply_would_tile() -> None:
    """Prefill-sized batches (and high ranks beyond a few rows) go to the tile kernels, which
    have no split form: a clear error, not a silent slow path."""
    x, _, (a, _, ranks, _, offsets), meta = _case(600, 32, (16,), [16], 0)
    with pytest.raises(ValueError, match="decode-sized"):
        lora_shrink_partials(x, a, ranks, offsets, meta)


def test_split_halves_check_their_inputs() -> None:
    x, y, (a, b, ranks, scales, offsets), meta = _case(5, 64, (24, 8), [8, 4], 1)
    with pytest.raises(ValueError, match="shape mismatch"):
        lora_shrink_partials(x[:, :32], a, ranks, offsets, meta)
    partials = lora_shrink_partials(x, a, ranks, offsets, meta)
    with pytest.raises(ValueError, match="cut y"):
        lora_expand_partials_(y, partials, b, ranks, scales, [0, 24, 30], meta)
    with pytest.raises(ValueError, match="rows"):
        lora_expand_partials_(y[:3], partials, b, ranks, scales, offsets, meta)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_side_stream_shrink_in_a_cuda_graph_replays_bit_for_bit() -> None:
    """The engine's pattern captured in one graph: fork a side stream for the shrink, a GEMM on
    the main stream, join, expand. Replayed with new inputs it equals ``lora_apply_`` after the
    same GEMM, bit for bit."""
    rows, hidden, widths, ranks = 64, 4096, (4096, 1024, 1024), [16, 8, 1, 0, 16, 4] * 4
    x_new, _, tables, meta = _case(rows, hidden, widths, ranks, 2)
    a, b, ranks_t, scales, offsets = tables
    w = torch.randn(sum(widths), hidden, device=DEVICE, dtype=x_new.dtype) / 64
    x = torch.zeros_like(x_new)
    side = torch.cuda.Stream()

    def step() -> torch.Tensor:
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            partials = lora_shrink_partials(x, a, ranks_t, offsets, meta)
        y = x @ w.T
        main.wait_stream(side)
        lora_expand_partials_(y, partials, b, ranks_t, scales, offsets, meta)
        return y

    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        step()
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph = step()
    for seed in (3, 4):
        x.copy_(_case(rows, hidden, widths, ranks, seed)[0])
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y_graph, _fused(x, x @ w.T, tables, meta))
