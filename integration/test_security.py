"""Security across processes: tenants, local adapter roots, secrets, auth coverage, CORS.

Two tenants own the namespaces ``acme`` and ``globex``; their private adapters are copies of the
demo adapter under the engine's ``--local-adapter-root``. The gateway and the engine export spans to
one OTLP collector stub on loopback, so the secrets checks cover logs, metrics and traces, and one
trace is followed from the caller through the gateway into the engine.
"""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import httpx
import pytest

from lorax_gateway.tenants import hash_key

from .conftest import Process
from .stack import engine_command, gateway_command

KEY_A = "sk-acme-7f3c1e0d9b2a4c6e8f1a3b5d7c9e0f21"
KEY_B = "sk-globex-0a2b4c6d8e1f3a5b7c9d0e2f4a6b8c13"
HUB_TOKEN = "hf_SECRETtoken4e9c2a7b1d3f5e7a9c0b2d4f"
SECRETS = (KEY_A, KEY_B, HUB_TOKEN)


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that keeps the raw export bodies."""

    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        del format, args


@dataclass(slots=True)
class Stack:
    engine: Process
    gateway: Process
    collector: list[bytes]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from lorax_engine.demo import build_demo

    tmp = tmp_path_factory.mktemp("security")
    pirate = build_demo(tmp / "cache") / "adapters" / "demo" / "pirate"
    for adapter in ("acme/bot", "globex/bot", "demo/pirate"):
        shutil.copytree(pirate, tmp / "adapters" / adapter)
    (tmp / "outside").mkdir()
    shutil.copytree(pirate, tmp / "outside" / "escaped")
    tenants = tmp / "tenants.toml"
    tenants.write_text(
        f'[tenants.acme]\nkey_sha256 = ["{hash_key(KEY_A)}"]\nnamespaces = ["acme"]\n'
        'adapters = ["acme/bot"]\n\n'
        f'[tenants.globex]\nkey_sha256 = ["{hash_key(KEY_B)}"]\nnamespaces = ["globex"]\n'
        'adapters = ["globex/bot"]\n'
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    collector = f"http://127.0.0.1:{server.server_address[1]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export spans within 0.1 s
        engine = Process(
            engine_command(
                tmp / "cache",
                "--local-adapter-root",
                str(tmp / "adapters"),
                "--max-active-adapters",
                "2",
                "--otlp-endpoint",
                collector,
            ),
            tmp / "engine.log",
        ).start()
        gateway = Process(
            gateway_command(
                engine.url,
                "--tenants-file",
                str(tenants),
                "--otlp-endpoint",
                collector,
                "--log-level",
                "DEBUG",
            ),
            tmp / "gateway.log",
        ).start()
    yield Stack(engine, gateway, _Collector.bodies)
    gateway.stop()
    engine.stop()
    server.shutdown()
    server.server_close()


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _generate(stack: Stack, key: str | None, adapter: str, **params: object) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway.url}/generate",
        json={"inputs": "Hi", "parameters": {"max_new_tokens": 3, "adapter_id": adapter, **params}},
        headers=_auth(key) if key else {},
        timeout=60,
    )


def test_tenant_cannot_use_list_or_detect_another_tenants_adapters(stack: Stack) -> None:
    assert _generate(stack, KEY_A, "acme/bot").status_code == 200
    assert _generate(stack, KEY_B, "globex/bot").status_code == 200
    stolen = _generate(stack, KEY_B, "acme/bot")
    missing = _generate(stack, KEY_B, "acme/nothing")
    # Exactly like an adapter that does not exist: same status, type and wording.
    assert stolen.status_code == missing.status_code == 404
    assert stolen.json()["error_type"] == missing.json()["error_type"] == "not_found"
    assert stolen.json()["error"].replace("acme/bot", "X") == missing.json()["error"].replace(
        "acme/nothing", "X"
    )
    for key, own, other in ((KEY_A, "acme/bot", "globex/bot"), (KEY_B, "globex/bot", "acme/bot")):
        models = httpx.get(f"{stack.gateway.url}/v1/models", headers=_auth(key), timeout=30)
        ids = [m["id"] for m in models.json()["data"]]
        assert own in ids
        assert other not in ids
    # The OpenAI route applies the same scope.
    r = httpx.post(
        f"{stack.gateway.url}/v1/completions",
        json={"model": "acme/bot", "prompt": "Hi", "max_tokens": 2},
        headers=_auth(KEY_B),
        timeout=60,
    )
    assert r.status_code == 404


@pytest.mark.parametrize(
    "adapter",
    ["../outside/escaped", "demo/../../outside/escaped", "/etc", "demo/pirate/../../../outside"],
)
def test_local_adapter_paths_cannot_escape_the_root(stack: Stack, adapter: str) -> None:
    r = _generate(stack, KEY_A, adapter, adapter_source="local")
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()) == {"error", "error_type"}


def test_secrets_never_in_logs_metrics_or_traces(stack: Stack) -> None:
    _generate(stack, KEY_A, "acme/bot", api_token=HUB_TOKEN)
    _generate(stack, KEY_B, "globex/bot")
    _generate(stack, "sk-wrong-key", "acme/bot")
    httpx.post(
        f"{stack.gateway.url}/v1/chat/completions",
        json={
            "model": "acme/bot",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
            "api_token": HUB_TOKEN,
        },
        headers=_auth(KEY_A),
        timeout=60,
    )
    metrics = httpx.get(f"{stack.gateway.url}/metrics", timeout=30).text
    metrics += httpx.get(f"{stack.engine.url}/metrics", timeout=30).text
    _wait_for_spans(stack)
    traces = b"".join(stack.collector)
    logs = stack.gateway.log.read_text() + stack.engine.log.read_text()
    for secret in SECRETS:
        assert secret not in logs
        assert secret not in metrics
        assert secret.encode() not in traces
    assert b"lorax.request_id" in traces  # the spans did arrive


def _wait_for_spans(stack: Stack) -> None:
    deadline = time.monotonic() + 30
    while not any(b"request generate" in b for b in stack.collector):
        assert time.monotonic() < deadline, "no span reached the collector"
        time.sleep(0.1)


def test_auth_covers_every_route_but_the_public_ones(stack: Stack) -> None:
    spec = httpx.get(f"{stack.gateway.url}/openapi.json", timeout=30).json()
    public = {"/health", "/info", "/metrics", "/openapi.json"}
    checked = 0
    with httpx.Client(base_url=stack.gateway.url, timeout=30) as client:
        for path, item in spec["paths"].items():
            for method in item:
                if method not in ("get", "post", "put", "delete", "patch"):
                    continue
                r = client.request(method.upper(), path, json={})
                if path in public:
                    assert r.status_code != 401, (method, path)
                    continue
                checked += 1
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.json()["error_type"] == "authentication"
                bad = client.request(method.upper(), path, json={}, headers=_auth("sk-nope"))
                assert bad.status_code == 401, (method, path)
    assert checked >= 8  # the generation, OpenAI, tokenize, models and usage routes


def test_cors_is_off_unless_configured(stack: Stack) -> None:
    origin = {"origin": "https://evil.example"}
    r = httpx.get(f"{stack.gateway.url}/health", headers=origin, timeout=30)
    assert "access-control-allow-origin" not in r.headers
    preflight = httpx.options(
        f"{stack.gateway.url}/generate",
        headers={**origin, "access-control-request-method": "POST"},
        timeout=30,
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_spans_continue_the_callers_trace(stack: Stack) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = httpx.post(
        f"{stack.gateway.url}/generate",
        json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}},
        headers={**_auth(KEY_A), "traceparent": f"00-{trace_id}-{parent_id}-01"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    expected = {"request generate", "validation", "queue", "inference"}
    expected |= {"engine.request", "engine.queue", "engine.inference"}
    deadline = time.monotonic() + 30
    spans: dict[str, tuple[bytes, bytes, str]] = {}  # name -> (span id, parent id, service)
    while True:
        spans.clear()
        for body in list(stack.collector):
            export = ExportTraceServiceRequest.FromString(body)
            for resource_spans in export.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        if span.trace_id == bytes.fromhex(trace_id):
                            spans[span.name] = (span.span_id, span.parent_span_id, service)
        if expected <= set(spans) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # One trace id from the caller through the gateway into the engine: the gateway's request
    # span is the caller's child; the engine's request span is the child of the gateway span that
    # was current when the gateway called the engine, its "queue" span (the gateway's "inference"
    # starts only at the first token, after the call).
    assert expected <= set(spans), spans
    assert spans["request generate"][1] == bytes.fromhex(parent_id)
    assert spans["engine.request"][1] == spans["queue"][0]
    for child in ("engine.queue", "engine.inference"):
        assert spans[child][1] == spans["engine.request"][0]
    assert {spans[n][2] for n in ("request generate", "inference")} == {"lorax-gateway"}
    assert {spans[n][2] for n in ("engine.request", "engine.queue")} == {"lorax-engine"}
