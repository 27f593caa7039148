"""OpenTelemetry spans of ``lorax-engine serve``: ``engine.request`` → ``engine.queue``, ``engine.inference``.

Spans are made at the request boundary, on the asyncio side, never in the core's step loop: the
queue and inference spans are placed afterwards from the ``queue_time_s``/``inference_time_s``
the core already reports in the ``end`` event, so tracing costs the hot path nothing. The
caller's W3C ``traceparent`` (the gateway's inference span) becomes the request span's parent.
Each server owns its ``TracerProvider`` (never the process-global one). Off by default.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(slots=True)
class TracingConfig:
    """``otlp_endpoint``: OTLP/HTTP collector base URL (``/v1/traces`` is appended) or None (off).

    ``exporter``: an in-process exporter instead of OTLP (tests); spans are then exported
    synchronously.
    """

    otlp_endpoint: str | None = None
    service_name: str = "lorax-engine"
    exporter: SpanExporter | None = None

    def __post_init__(self) -> None:
        if self.otlp_endpoint is not None and not self.otlp_endpoint.startswith(
            ("http://", "https://")
        ):
            raise ValueError("otlp_endpoint must be an http:// or https:// URL")
        if not self.service_name:
            raise ValueError("service_name must not be empty")

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded and exported."""
        return self.otlp_endpoint is not None or self.exporter is not None


class EngineTracing:
    """The server's tracer; ``request_span`` opens the span of one ``/engine/generate`` call."""

    def __init__(self, config: TracingConfig) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: Tracer = trace.NoOpTracer()
        if not config.enabled:
            return
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name})
        )
        if config.exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(config.exporter))
        else:
            # Imported here: the OTLP exporter pulls protobuf, only needed when exporting.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = str(config.otlp_endpoint).rstrip("/")
            if not endpoint.endswith("/v1/traces"):
                endpoint += "/v1/traces"
            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
            )
        self.tracer = self.provider.get_tracer("lorax_engine")

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded."""
        return self.provider is not None

    def request_span(self, headers: Mapping[str, str], body: Mapping[str, Any]) -> Span:
        """Start ``engine.request`` as a child of the caller's ``traceparent`` (if any).

        Only the request id and adapter id are recorded from the body: never the prompt, and
        never ``api_token``.
        """
        parent = _PROPAGATOR.extract(carrier=dict(headers))
        span = self.tracer.start_span("engine.request", context=parent)
        if span.is_recording():
            span.set_attribute("lorax.request_id", str(body.get("request_id") or ""))
            params = body.get("parameters")
            adapter = params.get("adapter_id") if isinstance(params, Mapping) else None
            span.set_attribute("lorax.adapter_id", str(adapter or ""))
        return span

    def record_event(self, span: Span, event: Mapping[str, Any]) -> None:
        """Fold a closing event (``end``/``error``) into ``span``; other events are ignored.

        An ``end`` event adds the token counts and finish reason and the ``engine.queue`` and
        ``engine.inference`` children, back-dated from the core's own timings.
        """
        if not span.is_recording():
            return
        kind = event.get("type")
        if kind == "error":
            span.set_attribute("lorax.error_type", str(event.get("error_type")))
            span.set_status(Status(StatusCode.ERROR, str(event.get("error_type"))))
        elif kind == "end":
            span.set_attribute("lorax.prompt_tokens", int(event.get("prompt_tokens") or 0))
            span.set_attribute("lorax.generated_tokens", int(event.get("generated_tokens") or 0))
            span.set_attribute("lorax.finish_reason", str(event.get("finish_reason")))
            end_ns = time.time_ns()
            inference_ns = int(float(event.get("inference_time_s") or 0.0) * 1e9)
            queue_ns = int(float(event.get("queue_time_s") or 0.0) * 1e9)
            start_inference = end_ns - inference_ns
            context = trace.set_span_in_context(span)
            queue = self.tracer.start_span(
                "engine.queue", context=context, start_time=start_inference - queue_ns
            )
            queue.end(end_time=start_inference)
            inference = self.tracer.start_span(
                "engine.inference", context=context, start_time=start_inference
            )
            inference.set_attribute(
                "lorax.generated_tokens", int(event.get("generated_tokens") or 0)
            )
            inference.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Flush and stop exporting."""
        if self.provider is not None:
            self.provider.shutdown()
