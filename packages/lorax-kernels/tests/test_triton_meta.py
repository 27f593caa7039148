"""The one-launch Triton ``LoraBatchMeta.update_`` writes exactly what the PyTorch version does.

Runs on CUDA, or on CPU under ``TRITON_INTERPRET=1`` (started by test_interpreter.py in a
subprocess).
"""

from __future__ import annotations

import pytest
import torch
from triton_env import DEVICE, NEEDS_TRITON

from lorax_kernels import LoraBatchMeta

pytestmark = NEEDS_TRITON
FIELDS = ("token_slots", "sorted_ids", "tile_slot", "tile_start", "tile_end")


def _assert_same(steps: list[torch.Tensor], max_tokens: int, num_slots: int, block_m: int):
    ours = LoraBatchMeta.allocate(max_tokens, num_slots, DEVICE, block_m=block_m)
    oracle = LoraBatchMeta.allocate(max_tokens, num_slots, DEVICE, block_m=block_m)
    for slots in steps:  # a sequence, so stale state from a larger step would show
        ours.update_triton_(slots.to(DEVICE))
        oracle.update_torch_(slots.to(DEVICE))
        for name in FIELDS:
            assert torch.equal(getattr(ours, name), getattr(oracle, name)), name


CASES = [
    # (max_tokens, num_slots, block_m, token counts of successive steps)
    (8, 1, 16, [1, 8, 3]),
    (300, 5, 16, [300, 37, 129, 1]),  # several placement chunks, long runs of one slot
    (64, 2100, 16, [64, 5]),  # more keys than one scan step
    (200, 40, 32, [200, 77]),
]


@pytest.mark.parametrize(("max_tokens", "num_slots", "block_m", "counts"), CASES)
def test_triton_update_matches_torch(max_tokens, num_slots, block_m, counts) -> None:
    gen = torch.Generator().manual_seed(max_tokens + num_slots)
    steps = []
    for n in counts:
        slots = torch.randint(-1, num_slots, (n,), generator=gen, dtype=torch.int32)
        steps.append(slots)
        steps.append(slots.sort().values)  # the scheduler's grouped order
    _assert_same(steps, max_tokens, num_slots, block_m)


def test_triton_update_all_one_slot_and_none() -> None:
    steps = [torch.full((100,), 3, dtype=torch.int32), torch.full((50,), -1, dtype=torch.int32)]
    _assert_same(steps, 128, 4, 16)


@pytest.mark.gpu
def test_update_dispatches_to_triton_at_real_shapes() -> None:
    """The public ``update_`` on CUDA (the Triton launch) equals the PyTorch version at the
    engine's sizes, and captures in a CUDA graph that replays new slots."""
    meta = LoraBatchMeta.allocate(8192, 2048, DEVICE)
    oracle = LoraBatchMeta.allocate(8192, 2048, DEVICE)
    src = torch.zeros(256, dtype=torch.int32, device=DEVICE)
    meta.update_(src)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        meta.update_(src)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    for _ in range(3):
        src.copy_(torch.randint(-1, 2048, (256,), device=DEVICE, generator=gen))
        graph.replay()
        oracle.update_torch_(src)
        for name in FIELDS:
            assert torch.equal(getattr(meta, name), getattr(oracle, name)), name
    big = torch.randint(-1, 64, (8192,), device=DEVICE, dtype=torch.int32).sort().values
    meta.update_(big)
    oracle.update_torch_(big)
    for name in FIELDS:
        assert torch.equal(getattr(meta, name), getattr(oracle, name)), name
