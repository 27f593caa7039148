"""LoraBatchMeta: the tile table covers every token exactly once, one slot per tile."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorax_kernels import LoraBatchMeta
from lorax_kernels.sgmv.meta import max_tiles


def _tiles(meta: LoraBatchMeta) -> list[tuple[int, list[int]]]:
    out: list[tuple[int, list[int]]] = []
    for i in range(meta.num_tiles):
        lo, hi = int(meta.tile_start[i]), int(meta.tile_end[i])
        if hi > lo:
            out.append((int(meta.tile_slot[i]), meta.sorted_ids[lo:hi].tolist()))
    return out


@pytest.mark.parametrize("block_m", [16, 32])
@pytest.mark.parametrize("num_tokens", [1, 7, 16, 33, 200])
def test_tiles_partition_tokens_by_slot(num_tokens: int, block_m: int) -> None:
    gen = torch.Generator().manual_seed(num_tokens)
    meta = LoraBatchMeta.allocate(256, num_slots=5, device="cpu", block_m=block_m)
    slots = torch.randint(-1, 5, (num_tokens,), generator=gen, dtype=torch.int32)
    meta.update_(slots)
    seen: list[int] = []
    for slot, tokens in _tiles(meta):
        assert 0 < len(tokens) <= block_m
        assert all(int(slots[t]) == slot for t in tokens)
        assert tokens == sorted(tokens)  # stable: a request's tokens stay in order
        seen += tokens
    assert sorted(seen) == list(range(num_tokens))
    assert meta.num_tiles == max_tiles(num_tokens, 5, block_m)


def test_runs_are_contiguous_and_reuse_buffers() -> None:
    meta = LoraBatchMeta.allocate(64, num_slots=3, device="cpu")
    buffers = [meta.sorted_ids, meta.tile_slot, meta.tile_start, meta.tile_end]
    meta.update_(torch.tensor([2] * 20 + [0] * 3 + [-1] * 2, dtype=torch.int32))
    assert [(s, len(t)) for s, t in _tiles(meta)] == [(-1, 2), (0, 3), (2, 16), (2, 4)]
    meta.update_(torch.tensor([1], dtype=torch.int32))
    assert [(s, t) for s, t in _tiles(meta)] == [(1, [0])]
    assert [meta.sorted_ids, meta.tile_slot, meta.tile_start, meta.tile_end] == buffers


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="block_m"):
        LoraBatchMeta.allocate(8, 2, "cpu", block_m=24)
    meta = LoraBatchMeta.allocate(8, 2, "cpu")
    with pytest.raises(ValueError, match="at most 8"):
        meta.update_(torch.zeros(9, dtype=torch.int32))


@settings(max_examples=60, deadline=None)
@given(
    slots=st.lists(st.integers(-1, 6), min_size=0, max_size=70),
    earlier=st.lists(st.integers(-1, 6), min_size=0, max_size=70),
    block_m=st.sampled_from([16, 32]),
)
def test_any_step_after_any_step_tiles_exactly_its_tokens(
    slots: list[int], earlier: list[int], block_m: int
) -> None:
    meta = LoraBatchMeta.allocate(70, num_slots=7, device="cpu", block_m=block_m)
    meta.update_(torch.tensor(earlier, dtype=torch.int32))
    meta.update_(torch.tensor(slots, dtype=torch.int32))
    covered: list[int] = []
    for i in range(meta.tile_slot.shape[0]):  # the whole table: nothing left from `earlier`
        lo, hi = int(meta.tile_start[i]), int(meta.tile_end[i])
        tokens = meta.sorted_ids[lo:hi].tolist()
        assert len(tokens) <= block_m
        assert all(slots[t] == int(meta.tile_slot[i]) for t in tokens)
        covered += tokens
    assert sorted(covered) == list(range(len(slots)))
    assert meta.token_slots[len(slots) :].eq(-1).all()
    # The launch grid (tiles_for) reaches every non-empty tile.
    nonempty = (meta.tile_end > meta.tile_start).nonzero().flatten().tolist()
    assert all(i < meta.tiles_for(len(slots)) for i in nonempty)
