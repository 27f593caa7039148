"""Prometheus metrics of one engine, read at scrape time from the engine's state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from lorax_engine.adapters.manager import AdapterUsage
    from lorax_engine.core.engine_core import EngineCore


class _EngineCollector(Collector):
    def __init__(self, core: EngineCore, in_flight: Callable[[], int]) -> None:
        self.core = core
        self.in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        core = self.core
        sched = core.scheduler
        yield GaugeMetricFamily(
            "lorax_engine_batch_size", "Sequences in the last step", value=core.stats.batch_size
        )
        yield GaugeMetricFamily(
            "lorax_engine_batch_tokens",
            "Tokens computed in the last step",
            value=core.stats.num_tokens,
        )
        yield GaugeMetricFamily(
            "lorax_engine_queue_size", "Requests waiting to be scheduled", value=len(sched.waiting)
        )
        yield GaugeMetricFamily(
            "lorax_engine_running_requests", "Requests running", value=len(sched.running)
        )
        yield GaugeMetricFamily(
            "lorax_engine_in_flight_requests",
            "Requests accepted and not finished",
            value=self.in_flight(),
        )
        yield GaugeMetricFamily(
            "lorax_engine_kv_blocks_used",
            "KV cache blocks in use",
            value=sched.blocks.num_used_blocks,
        )
        yield GaugeMetricFamily(
            "lorax_engine_kv_blocks_free",
            "KV cache blocks free",
            value=sched.blocks.num_free_blocks,
        )
        yield CounterMetricFamily(
            "lorax_engine_preemptions",
            "Requests preempted for recompute",
            value=sched.num_preemptions,
        )
        yield CounterMetricFamily("lorax_engine_steps", "Engine steps run", value=core.stats.steps)
        yield CounterMetricFamily(
            "lorax_engine_generated_tokens", "Tokens generated", value=core.stats.generated_tokens
        )
        yield CounterMetricFamily(
            "lorax_engine_finished_requests",
            "Requests finished",
            value=core.stats.finished_requests,
        )
        slots = core.runner.lora_slots
        yield GaugeMetricFamily(
            "lorax_engine_adapter_slots",
            "LoRA slots on the device",
            value=0 if slots is None else slots.num_slots,
        )
        if core.adapters is not None:
            yield from _adapter_metrics(core.adapters.manager.usage())


def _adapter_metrics(usage: AdapterUsage) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "lorax_engine_adapters_resident", "Adapters in a GPU slot", value=usage.resident
    )
    yield GaugeMetricFamily(
        "lorax_engine_adapter_refs",
        "Running requests holding an adapter slot",
        value=usage.refs,
    )
    yield GaugeMetricFamily(
        "lorax_engine_adapters_loading",
        "Adapters being loaded into host memory or written into a slot",
        value=usage.loading,
    )
    for name, doc, value in (
        ("adapter_loads", "Adapter loads into the CPU tier", usage.loads),
        ("adapter_load_failures", "Adapter loads that failed", usage.load_failures),
        ("adapter_promotions", "Adapters written into a GPU slot", usage.promotions),
        ("adapter_evictions", "Adapters evicted from a GPU slot", usage.evictions),
        (
            "adapter_host_cache_hits",
            "Adapter lookups served by the CPU tier",
            usage.host_cache_hits,
        ),
        (
            "adapter_host_cache_misses",
            "Adapter lookups the CPU tier missed",
            usage.host_cache_misses,
        ),
    ):
        yield CounterMetricFamily(f"lorax_engine_{name}", doc, value=value)


class EngineMetrics:
    """A registry owned by one engine instance (never the process-global one)."""

    def __init__(self, core: EngineCore, in_flight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(core, in_flight))

    def text(self) -> str:
        return generate_latest(self.registry).decode()
