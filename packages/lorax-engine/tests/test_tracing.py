"""Engine spans over real HTTP: the caller's trace continued, attributes, no secrets; tracing off."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.config import EngineConfig
from lorax_engine.params import Limits
from lorax_engine.serve import create_app
from lorax_engine.tracing import EngineTracing, TracingConfig

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SECRET = "hf_secret_token_value"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, InMemorySpanExporter]]:
    engine = AsyncEngine.from_config(
        EngineConfig(
            model_id="demo",
            device="cpu",
            cache_dir=Path(tmp_path_factory.mktemp("demo-cache")),
            limits=Limits(max_input_length=64, max_total_tokens=128),
            lora_slots=1,
            lora_max_rank=8,
        )
    )
    exporter = InMemorySpanExporter()
    app = create_app(engine, EngineTracing(TracingConfig(exporter=exporter)))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(500):
        if srv.started:
            break
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", exporter
    srv.should_exit = True
    thread.join(timeout=10)
    engine.core.stop()
    assert engine.adapter_manager is not None
    engine.adapter_manager.shutdown()


def generate(url: str, body: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST", f"{url}/engine/generate", json=body, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200
        return [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


def test_request_span_continues_the_callers_trace(
    server: tuple[str, InMemorySpanExporter],
) -> None:
    url, exporter = server
    exporter.clear()
    body = {
        "request_id": "req-trace-1",
        "inputs": "Hello there",
        "parameters": {
            "max_new_tokens": 4,
            "ignore_eos_token": True,
            "adapter_id": "demo/pirate",
            "api_token": SECRET,
        },
    }
    events = generate(url, body, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert events[-1]["type"] == "end"
    spans = exporter.get_finished_spans()
    request = by_name(spans, "engine.request")
    assert request.context is not None
    assert request.parent is not None
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert format(request.parent.span_id, "016x") == PARENT_ID
    attrs = dict(request.attributes or {})
    assert attrs["lorax.request_id"] == "req-trace-1"
    assert attrs["lorax.adapter_id"] == "demo/pirate"
    assert attrs["lorax.prompt_tokens"] == events[-1]["prompt_tokens"]
    assert attrs["lorax.generated_tokens"] == 4
    assert attrs["lorax.finish_reason"] == "length"
    assert request.resource.attributes["service.name"] == "lorax-engine"
    queue, inference = by_name(spans, "engine.queue"), by_name(spans, "engine.inference")
    for child in (queue, inference):
        assert child.parent is not None
        assert child.parent.span_id == request.context.span_id
    assert request.start_time is not None
    assert request.end_time is not None
    assert queue.start_time is not None
    assert queue.end_time is not None
    assert inference.start_time is not None
    assert inference.end_time is not None
    # The children lie inside the request span, the queue before the inference.
    assert request.start_time <= queue.start_time <= queue.end_time
    assert queue.end_time == inference.start_time <= inference.end_time <= request.end_time
    dumped = json.dumps([s.to_json() for s in spans])
    assert SECRET not in dumped
    assert "Hello there" not in dumped


def test_error_and_new_trace_without_traceparent(server: tuple[str, InMemorySpanExporter]) -> None:
    url, exporter = server
    exporter.clear()
    body = {"request_id": "req-bad", "inputs": "x " * 200, "parameters": {"max_new_tokens": 4}}
    events = generate(url, body, {})
    assert events[-1]["type"] == "error"
    (request,) = exporter.get_finished_spans()
    assert request.name == "engine.request"
    assert request.parent is None
    assert request.status.status_code is StatusCode.ERROR
    assert dict(request.attributes or {})["lorax.error_type"] == "validation"


def test_tracing_off_records_nothing() -> None:
    tracing = EngineTracing(TracingConfig())
    assert not tracing.enabled
    span = tracing.request_span({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}, {})
    assert not span.is_recording()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="http"):
        TracingConfig(otlp_endpoint="collector:4318")
    assert TracingConfig(otlp_endpoint="http://127.0.0.1:4318").enabled
