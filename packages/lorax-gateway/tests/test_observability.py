"""Metrics, traces and logs of the gateway."""

from __future__ import annotations

import json
import logging
import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from lorax_gateway import GatewaySettings
from lorax_gateway.logs import JsonFormatter
from lorax_gateway.metrics import AdapterLabeler, relabel_engine_metrics
from lorax_gateway.settings import MetricsConfig, TracingConfig

from .conftest import ServeFactory

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_request_metrics_and_bounded_adapter_labels(gateway_factory: ServeFactory) -> None:
    served = gateway_factory(
        GatewaySettings(backend="synthetic", metrics=MetricsConfig(max_adapter_labels=1))
    )
    url = f"{served.url}/generate"
    httpx.post(url, json={"inputs": "a b", "parameters": {"adapter_id": "org/public"}})
    httpx.post(url, json={"inputs": "a b", "parameters": {"adapter_id": "acme/private"}})
    httpx.post(url, json={"inputs": "a b", "parameters": {"temperature": -1}})
    httpx.post(url, json={"inputs": "a", "parameters": {"adapter_id": "nope/x"}})
    text = httpx.get(f"{served.url}/metrics").text
    requests = samples(text, "lorax_request_total")
    adapters = {dict(k)["adapter"] for k in requests}
    assert adapters == {"org/public", "other"}  # the second distinct adapter id is "other"
    outcomes = {dict(k)["outcome"]: v for k, v in requests.items()}
    assert outcomes["success"] == 1
    assert outcomes["generation"] == 1
    out_tokens = samples(text, "lorax_output_tokens_total")
    assert out_tokens[(("adapter", "org/public"), ("tenant", "anonymous"))] == 3
    assert samples(text, "lorax_time_to_first_token_seconds_count")[()] == 2
    assert samples(text, "lorax_request_errors_total")[(("error_type", "generation"),)] == 1
    # Engine gauges are scraped and labelled by engine.
    assert samples(text, "lorax_engine_batch_size") == {(("engine", "synthetic"),): 0.0}


def test_adapter_labeler_is_bounded() -> None:
    label = AdapterLabeler(2)
    assert [label(a) for a in ["a", "b", "c", "a", None, ""]] == [
        "a",
        "b",
        "other",
        "a",
        "base",
        "base",
    ]


def test_relabel_merges_engines_and_survives_garbage() -> None:
    text = "# TYPE kv gauge\nkv 3\n"
    merged = relabel_engine_metrics([("e1", text), ("e2", text), ("e3", "not prometheus {{{")])
    assert merged.count("# TYPE kv gauge") == 1
    assert 'kv{engine="e1"} 3.0' in merged
    assert 'kv{engine="e2"} 3.0' in merged


def test_spans_and_trace_context(gateway_factory: ServeFactory) -> None:
    exporter = InMemorySpanExporter()
    served = gateway_factory(
        GatewaySettings(backend="synthetic", tracing=TracingConfig(exporter=exporter))
    )
    r = httpx.post(
        f"{served.url}/generate_stream",
        json={"inputs": "a b c"},
        headers={"traceparent": TRACEPARENT},
    )
    assert r.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"request generate_stream", "validation", "queue", "inference"}
    root = spans["request generate_stream"]
    root_ctx = root.get_span_context()
    assert root_ctx is not None
    assert f"{root_ctx.trace_id:032x}" == TRACE_ID  # continued the caller's trace
    for name in ("validation", "queue", "inference"):
        parent = spans[name].parent
        assert parent is not None
        assert parent.span_id == root_ctx.span_id
    assert root.attributes is not None
    assert root.attributes["lorax.generated_tokens"] == 4
    # The engine got W3C context of the gateway's queue span, in the same trace.
    sent = served.backend.trace_headers[-1]  # type: ignore[attr-defined]
    assert sent["traceparent"].split("-")[1] == TRACE_ID
    queue_ctx = spans["queue"].get_span_context()
    assert queue_ctx is not None
    assert sent["traceparent"].split("-")[2] == f"{queue_ctx.span_id:016x}"


def test_traceparent_passes_through_when_tracing_is_off(gateway_factory: ServeFactory) -> None:
    served = gateway_factory()
    httpx.post(f"{served.url}/generate", json={"inputs": "a"}, headers={"traceparent": TRACEPARENT})
    assert served.backend.trace_headers[-1] == {"traceparent": TRACEPARENT}  # type: ignore[attr-defined]


def test_failed_request_span_has_error_status(gateway_factory: ServeFactory) -> None:
    exporter = InMemorySpanExporter()
    served = gateway_factory(
        GatewaySettings(backend="synthetic", tracing=TracingConfig(exporter=exporter))
    )
    httpx.post(
        f"{served.url}/generate", json={"inputs": "a", "parameters": {"adapter_id": "no/pe"}}
    )
    root = next(s for s in exporter.get_finished_spans() if s.name.startswith("request"))
    assert root.status.status_code.name == "ERROR"
    assert root.attributes is not None
    assert root.attributes["lorax.error_type"] == "generation"


def test_json_log_lines() -> None:
    record = logging.LogRecord(
        "lorax_gateway.access", logging.INFO, "f", 1, "request finished", None, None
    )
    record.request_id = "rid-1"
    record.tenant = "acme"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "request finished"
    assert line["request_id"] == "rid-1"
    assert line["tenant"] == "acme"
    assert line["level"] == "INFO"
    assert line["timestamp"].endswith("Z")


def test_otlp_export_reaches_the_collector(gateway_factory: ServeFactory) -> None:
    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        settings = GatewaySettings(
            backend="synthetic", tracing=TracingConfig(otlp_endpoint=endpoint)
        )
        with ExitStack() as stack:
            from lorax_gateway import create_app
            from lorax_gateway.testing import serve

            from .conftest import synthetic

            engine = synthetic()
            served = stack.enter_context(serve(create_app(settings, engine), engine))
            httpx.post(
                f"{served.url}/generate",
                json={"inputs": "a"},
                headers={"x-request-id": "otlp-req-1"},
            )
        # Shutting the app down flushed the batch processor.
        assert received
        path, body = received[0]
        assert path == "/v1/traces"
        assert b"otlp-req-1" in body
        assert b"inference" in body
    finally:
        server.shutdown()
        server.server_close()


def test_cors_preflight(gateway_factory: ServeFactory) -> None:
    served = gateway_factory(
        GatewaySettings(backend="synthetic", cors_allow_origins=["https://app.example"])
    )
    r = httpx.options(
        f"{served.url}/generate",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code in (200, 204)
    assert r.headers["access-control-allow-origin"] == "https://app.example"
