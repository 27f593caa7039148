"""OpenTelemetry spans: ``request`` → ``validation``, ``queue``, ``inference``.

Each app owns its ``TracerProvider`` (never the process-global one), so tests and several apps in
one process do not interfere. The caller's ``traceparent`` is honoured, and the context of the
current span is handed to ``http`` engines as W3C trace-context headers. Off by default: then no
spans are recorded, but an incoming ``traceparent`` is still passed through to the engine.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lorax_gateway.settings import TracingConfig

_PROPAGATOR = TraceContextTextMapPropagator()


class GatewayTracing:
    """The app's tracer and W3C propagation helpers."""

    def __init__(self, config: TracingConfig) -> None:
        self.config = config
        self.provider: TracerProvider | None = None
        if config.enabled:
            self.provider = TracerProvider(
                resource=Resource.create({"service.name": config.service_name})
            )
            exporter: SpanExporter
            if config.exporter is not None:
                exporter = config.exporter
                self.provider.add_span_processor(SimpleSpanProcessor(exporter))
            else:
                # Imported here: the OTLP exporter pulls protobuf, only needed when exporting.
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                endpoint = str(config.otlp_endpoint).rstrip("/")
                if not endpoint.endswith("/v1/traces"):
                    endpoint += "/v1/traces"
                exporter = OTLPSpanExporter(endpoint=endpoint)
                self.provider.add_span_processor(BatchSpanProcessor(exporter))
            self.tracer: Tracer = self.provider.get_tracer("lorax_gateway")
        else:
            self.tracer = trace.NoOpTracer()

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded."""
        return self.provider is not None

    @staticmethod
    def extract(headers: Mapping[str, str]) -> Context:
        """The parent context from the caller's ``traceparent`` (empty when absent)."""
        return _PROPAGATOR.extract(carrier=dict(headers))

    @staticmethod
    def inject(span: Span, incoming: Mapping[str, str]) -> dict[str, str]:
        """Trace headers for the engine: the current span when recording, else pass-through."""
        carrier: dict[str, str] = {}
        if span.get_span_context().is_valid:
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        else:
            for name in ("traceparent", "tracestate"):
                if name in incoming:
                    carrier[name] = incoming[name]
        return carrier

    def shutdown(self) -> None:
        """Flush and stop exporting."""
        if self.provider is not None:
            self.provider.shutdown()
