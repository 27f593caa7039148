"""Adapter series of the engine's /metrics: refs pinned while running and 0 after, counters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.config import EngineConfig
from lorax_engine.params import Limits

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsyncEngine]:
    eng = AsyncEngine.from_config(
        EngineConfig(
            model_id="demo",
            device="cpu",
            cache_dir=Path(tmp_path_factory.mktemp("demo-cache")),
            limits=Limits(max_input_length=64, max_total_tokens=96),
            lora_slots=1,  # two adapters take turns: one eviction at least
            lora_max_rank=8,
        )
    )
    yield eng
    eng.core.stop()
    assert eng.adapter_manager is not None
    eng.adapter_manager.shutdown()


def samples(engine: AsyncEngine) -> dict[str, float]:
    return {
        s.name: s.value
        for family in text_string_to_metric_families(engine.metrics_text())
        for s in family.samples
    }


async def test_refs_while_running_and_counters_after(engine: AsyncEngine) -> None:
    with anyio.fail_after(60):
        for adapter in ("demo/pirate", "demo/shakespeare"):
            body = {
                "inputs": "Hello",
                "parameters": {
                    "max_new_tokens": 32,
                    "ignore_eos_token": True,
                    "adapter_id": adapter,
                },
            }
            stream = engine.generate(body)
            seen_refs: list[float] = []
            async for event in stream:
                if event["type"] == "token":  # running: its adapter's slot is pinned
                    seen_refs.append(samples(engine)["lorax_engine_adapter_refs"])
            # Seen at least once (the first token comes 31 steps before the release) and never more.
            assert 1.0 in seen_refs
            assert set(seen_refs) <= {0.0, 1.0}
        bad = [
            e
            async for e in engine.generate(
                {"inputs": "x", "parameters": {"adapter_id": "demo/nope"}}
            )
        ]
    assert bad[-1]["type"] == "error"
    m = samples(engine)
    assert m["lorax_engine_adapter_refs"] == 0.0
    assert m["lorax_engine_adapters_loading"] == 0.0
    assert m["lorax_engine_adapters_resident"] == 1.0
    assert m["lorax_engine_adapter_loads_total"] == 2.0
    assert m["lorax_engine_adapter_load_failures_total"] == 1.0
    assert m["lorax_engine_adapter_promotions_total"] == 2.0
    assert m["lorax_engine_adapter_evictions_total"] == 1.0
    # Every first load looked in the CPU tier and missed it.
    assert m["lorax_engine_adapter_host_cache_misses_total"] == 3.0
    assert m["lorax_engine_adapter_host_cache_hits_total"] == 0.0
