"""Prometheus metrics of one app instance (its own registry, so two apps never share counters).

Label values are bounded: ``adapter`` is the base model, one of the first ``max_adapter_labels``
adapter ids seen, or ``other``; ``tenant`` is a configured tenant id or ``anonymous``; ``route``
is one of the fixed route names. API keys and credentials are never labels.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lorax_gateway.settings import MetricsConfig

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class AdapterLabeler:
    """Maps adapter ids to a bounded set of label values."""

    def __init__(self, max_labels: int) -> None:
        self._max = max_labels
        self._known: set[str] = set()

    def __call__(self, adapter_id: str | None) -> str:
        if not adapter_id:
            return "base"
        if adapter_id in self._known:
            return adapter_id
        if len(self._known) < self._max:
            self._known.add(adapter_id)
            return adapter_id
        return "other"


class GatewayMetrics:
    """All gateway metrics, registered in a registry owned by this object."""

    def __init__(self, config: MetricsConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.adapter_label = AdapterLabeler(config.max_adapter_labels)
        r = self.registry
        self.requests = Counter(
            "lorax_request",
            "Requests by route, adapter, tenant and outcome (success or the error_type).",
            ["route", "adapter", "tenant", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "lorax_request_errors", "Failed requests by error_type.", ["error_type"], registry=r
        )
        self.duration = Histogram(
            "lorax_request_duration_seconds",
            "Wall time of a generation request in the gateway.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "lorax_request_queue_duration_seconds",
            "Time a request waited in the engine's queue (reported by the engine).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "lorax_time_to_first_token_seconds",
            "From admission to the first generated token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "lorax_time_per_output_token_seconds",
            "Mean gap between generated tokens of a request.",
            buckets=_TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.input_tokens = Counter(
            "lorax_input_tokens", "Prompt tokens.", ["adapter", "tenant"], registry=r
        )
        self.output_tokens = Counter(
            "lorax_output_tokens", "Generated tokens.", ["adapter", "tenant"], registry=r
        )
        self.in_flight = Gauge(
            "lorax_requests_in_flight", "Generation requests being served.", registry=r
        )
        self.rejected = Counter(
            "lorax_requests_rejected",
            "Requests refused at admission, by reason.",
            ["reason", "tenant"],
            registry=r,
        )

    def observe_request(
        self, route: str, adapter: str | None, tenant: str | None, outcome: str
    ) -> None:
        """Count one finished request (``outcome`` is ``success`` or its error type)."""
        self.requests.labels(
            route, self.adapter_label(adapter), tenant or "anonymous", outcome
        ).inc()
        if outcome != "success":
            self.errors.labels(outcome).inc()

    def observe_tokens(
        self, adapter: str | None, tenant: str | None, prompt_tokens: int, generated: int
    ) -> None:
        """Count the tokens of one finished request."""
        a, t = self.adapter_label(adapter), tenant or "anonymous"
        self.input_tokens.labels(a, t).inc(prompt_tokens)
        self.output_tokens.labels(a, t).inc(generated)

    def render(self, engine_texts: list[tuple[str, str]]) -> bytes:
        """The gateway's metrics followed by the engines', each sample labelled ``engine``."""
        return generate_latest(self.registry) + relabel_engine_metrics(engine_texts).encode()


def _fmt_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def relabel_engine_metrics(engine_texts: list[tuple[str, str]]) -> str:
    """Merge several engines' Prometheus texts into one, adding an ``engine`` label.

    Families with the same name from different engines become one family (one HELP/TYPE).
    """
    families: dict[str, tuple[str, str, list[str]]] = {}
    for engine, text in engine_texts:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            continue  # a garbled scrape must not break the gateway's own /metrics
        for fam in parsed:
            _, _, lines = families.setdefault(fam.name, (fam.type, fam.documentation, []))
            for sample in fam.samples:
                labels = {**sample.labels, "engine": engine}
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{sample.name}{{{label_text}}} {_fmt_value(sample.value)}")
    out: list[str] = []
    for name, (kind, doc, lines) in families.items():
        out.append(f"# HELP {name} {_escape(doc) if doc else name}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)
    return "\n".join(out) + ("\n" if out else "")
