"""A sweep: one trace replayed at every (adapter count, rate) point, in one process.

Rates are requests/s, ``inf`` (everything at once: saturation, best with a concurrency cap),
``trace`` (the trace's own ``arrival_s`` timestamps) or a fraction of the saturation measured at
the same adapter count earlier in the same sweep (``0.5x`` = half the requests/s that the
``inf`` point reached), which is how "latency at 50 % and 80 % load" is measured in one run.
Adapter counts are N > 0 (ids from the template, popularity over them) or 0 for the base model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lorax.bench.metrics import RequestResult, summarize
from lorax.bench.runner import PlannedRequest, Runner
from lorax.bench.workload import AdapterPopularity, TraceRequest, arrival_times

__all__ = ["ProgressFactory", "RateSpec", "SweepConfig", "plan", "run_sweep"]


@dataclass(slots=True, frozen=True)
class RateSpec:
    """A rate of the sweep: absolute requests/s (``inf`` allowed, 0 = trace timestamps) or,
    with ``relative``, a fraction of the same adapter count's saturation."""

    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        if self.value < 0 or (self.relative and not 0 < self.value < math.inf):
            raise ValueError(f"bad rate {self.label}")

    @classmethod
    def parse(cls, text: str) -> RateSpec:
        """``2.5``, ``inf``, ``trace`` or ``0.8x``."""
        text = text.strip().lower()
        if text == "trace":
            return cls(0.0)
        try:
            if text.endswith("x"):
                return cls(float(text[:-1]), relative=True)
            value = float(text)
        except ValueError as exc:
            raise ValueError(
                f"bad rate {text!r} (a number, inf, trace or a fraction like 0.8x)"
            ) from exc
        if value <= 0:
            raise ValueError(f"rate must be > 0, got {text!r}")
        return cls(value)

    @property
    def label(self) -> str:
        """How the rate was asked for."""
        if self.relative:
            return f"{self.value:g}x"
        return "trace" if self.value == 0 else f"{self.value:g}"


@dataclass(slots=True)
class SweepConfig:
    """The points of a sweep and how requests map to adapters."""

    rates: tuple[RateSpec, ...] = (RateSpec(1.0),)
    adapter_counts: tuple[int, ...] = (1,)
    adapter_template: str = "adapter-{i}"
    #: Explicit adapter ids, used instead of the template (adapter ``i`` is ``adapter_ids[i]``).
    adapter_ids: tuple[str, ...] = ()
    popularity: AdapterPopularity = field(default_factory=AdapterPopularity)
    slo_ttft_s: float = 6.0

    def __post_init__(self) -> None:
        if not self.rates or not self.adapter_counts:
            raise ValueError("need at least one rate and one adapter count")
        if any(n < 0 for n in self.adapter_counts):
            raise ValueError("adapter counts must be >= 0 (0 = the base model)")
        if self.slo_ttft_s <= 0:
            raise ValueError("slo_ttft_s must be > 0")
        if self.adapter_ids:
            if max(self.adapter_counts) > len(self.adapter_ids):
                raise ValueError(
                    f"{max(self.adapter_counts)} adapters asked for, {len(self.adapter_ids)} ids given"
                )
        elif "{i}" not in self.adapter_template:
            raise ValueError("adapter_template needs an {i} placeholder")
        seen_saturation = False
        for rate in self.rates:
            if rate.relative and not seen_saturation:
                raise ValueError(f"rate {rate.label} needs an 'inf' rate before it")
            seen_saturation = seen_saturation or math.isinf(rate.value)

    def adapter_id(self, index: int) -> str:
        """The id of adapter ``index``."""
        if self.adapter_ids:
            return self.adapter_ids[index]
        return self.adapter_template.format(i=index)


def plan(
    trace: list[TraceRequest],
    prompts: list[str],
    rate: float,
    num_adapters: int,
    config: SweepConfig,
) -> list[PlannedRequest]:
    """The requests of one point: arrival times at ``rate`` and adapters among
    ``num_adapters`` (0 = the base model, unless the trace fixes a request's adapter)."""
    times = arrival_times(trace, rate)
    pick = config.popularity.picker(num_adapters) if num_adapters > 0 else None
    planned: list[PlannedRequest] = []
    for index, (request, at, prompt) in enumerate(zip(trace, times, prompts, strict=True)):
        if request.adapter_id is not None:
            adapter = request.adapter_id or None
        elif pick is None:
            adapter = None
        else:
            adapter = config.adapter_id(pick(request.adapter_u))
        planned.append(
            PlannedRequest(index, at, prompt, adapter, request.input_len, request.output_len)
        )
    return planned


ProgressFactory = Callable[[str, int], Callable[[RequestResult], None]]
"""``factory(description, total)`` -> a callback for each finished request of one point."""


async def run_sweep(
    runner: Runner,
    trace: list[TraceRequest],
    prompts: list[str],
    config: SweepConfig,
    progress: ProgressFactory | None = None,
    on_point: Callable[[list[dict[str, Any]]], object] | None = None,
) -> list[dict[str, Any]]:
    """Run every point (adapter counts outer, rates inner); returns one record per point:
    ``num_adapters``, ``rate`` (asked), ``rate_rps`` (used; None for inf and trace) and
    ``summary`` (see :func:`lorax.bench.metrics.summarize`), plus ``results``, the per-request
    :class:`RequestResult` list. A fraction of a saturation where nothing completed is recorded
    with ``skipped`` (the reason) and no requests. ``on_point`` gets the points so far after
    each one."""
    points: list[dict[str, Any]] = []
    for num_adapters in config.adapter_counts:
        saturation: float | None = None
        for rate in config.rates:
            rps = rate.value
            if rate.relative:
                if not saturation:
                    # Nothing completed at saturation: there is no load to take a fraction of.
                    points.append(
                        {
                            "num_adapters": num_adapters,
                            "rate": rate.label,
                            "rate_rps": None,
                            "skipped": "no request completed at rate inf",
                            "summary": summarize([], config.slo_ttft_s),
                            "results": [],
                        }
                    )
                    if on_point is not None:
                        on_point(points)
                    continue
                rps = rate.value * saturation
            who = "base" if num_adapters == 0 else f"{num_adapters} adapter"
            who += "s" if num_adapters > 1 else ""
            description = f"{who} @ {rate.label}" + (f" ({rps:.3g} req/s)" if rate.relative else "")
            planned = plan(trace, prompts, rps, num_adapters, config)
            on_done = progress(description, len(planned)) if progress is not None else None
            results = await runner.run(planned, on_done)
            summary = summarize(results, config.slo_ttft_s)
            if math.isinf(rps):
                saturation = summary["throughput"]["requests_per_s"]
            points.append(
                {
                    "num_adapters": num_adapters,
                    "rate": rate.label,
                    "rate_rps": rps if 0 < rps < math.inf else None,
                    "summary": summary,
                    "results": results,
                }
            )
            if on_point is not None:
                on_point(points)
    return points
