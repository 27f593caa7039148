"""On CUDA: promotion through the side stream into the real slot tables, eviction and return."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lorax_engine.adapters import (
    AdapterLoader,
    AdapterManager,
    AdapterRef,
    AdapterState,
    HostAdapterCache,
    LoadLimits,
    LocalSource,
    LoraWeights,
    ManagerConfig,
    SourceRegistry,
)
from lorax_engine.lora import PEFT_TARGETS, LoraSlots, ModelLoraSpec

from .conftest import Spec

pytestmark = pytest.mark.gpu


def _slot_holds(slots: LoraSlots, slot: int, weights: LoraWeights) -> bool:
    """Every module of ``weights`` sits bit-for-bit in ``slot`` of the device tables."""
    for (layer, target), (a, b) in weights.modules.items():
        projection, s = PEFT_TARGETS[target]
        table = slots.table(layer, projection)
        width = b.shape[0]
        got_a = table.lora_a[s, slot, : weights.rank].cpu()
        got_b = table.lora_b[s, slot, :width, : weights.rank].cpu()
        if not (torch.equal(got_a, a) and torch.equal(got_b, b)):
            return False
    return True


def test_side_stream_promotion_and_round_trip(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    for i, name in enumerate("abc"):
        make_adapter(name, r=4 + 4 * i, seed=i)
    model_spec = ModelLoraSpec(spec.architecture, spec.num_layers, dict(spec.targets))
    slots = LoraSlots.allocate(model_spec, 2, 16, torch.float32, "cuda")
    cache = HostAdapterCache(1 << 30)
    loader = AdapterLoader(
        SourceRegistry({"local": LocalSource([tmp_path])}),
        model_spec,
        LoadLimits(max_rank=16),
        cache,
    )
    manager = AdapterManager(
        loader, slots, ManagerConfig(num_slots=2, cycle_time_s=0.0), device="cuda"
    )

    def ready(name: str) -> tuple[int, LoraWeights]:
        h = manager.request(AdapterRef(name, source="local"))
        deadline = time.monotonic() + 60
        while manager.state(h) is not AdapterState.READY:
            assert manager.state(h) is not AdapterState.FAILED, manager.error(h)
            assert time.monotonic() < deadline
            manager.step()
            time.sleep(0.001)
        slot = manager.acquire(h)
        owner = manager._owners[slot]
        assert owner is not None
        assert owner.weights is not None
        assert owner.weights.is_pinned  # so the promotion copy was asynchronous
        manager.release(h)
        return slot, owner.weights

    slot_a, weights_a = ready("a")
    torch.cuda.synchronize()
    assert _slot_holds(slots, slot_a, weights_a)
    ready("b")
    ready("c")  # two slots, three adapters: a is evicted back to the CPU tier
    assert AdapterRef("a", source="local").cache_key() in cache
    slot_a2, weights_a2 = ready("a")
    torch.cuda.synchronize()
    assert weights_a2.equal(weights_a)
    assert _slot_holds(slots, slot_a2, weights_a)
    assert manager.stats["evictions"] >= 2
    manager.shutdown()


def test_host_cache_pins_memory() -> None:
    cache = HostAdapterCache(1 << 20)
    stored = cache.put(
        LoraWeights("k", 2, 1.0, {(0, "q_proj"): (torch.ones(2, 8), torch.ones(8, 2))})
    )
    assert stored.is_pinned
