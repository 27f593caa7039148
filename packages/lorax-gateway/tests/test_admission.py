"""Admission over real HTTP: global concurrency, body size cap, disconnect cancels the engine."""

from __future__ import annotations

import json
import time

import httpx

from lorax_gateway import GatewaySettings
from lorax_gateway.settings import AdmissionConfig

from .conftest import ServeFactory, synthetic


def wait_for(predicate: object, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_max_concurrent_requests_is_429(gateway_factory: ServeFactory) -> None:
    backend = synthetic(token_delay_s=0.05)
    served = gateway_factory(
        GatewaySettings(backend="synthetic", admission=AdmissionConfig(max_concurrent_requests=1)),
        backend,
    )
    with (
        httpx.Client() as c,
        c.stream("POST", f"{served.url}/generate_stream", json={"inputs": "a b c d e f"}) as first,
    ):
        assert first.status_code == 200
        r = c.post(f"{served.url}/generate", json={"inputs": "x"})
        assert r.status_code == 429
        assert r.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        r = c.post(f"{served.url}/v1/completions", json={"model": "", "prompt": "x"})
        assert r.status_code == 429
    assert wait_for(lambda: backend.active == 0)
    assert httpx.post(f"{served.url}/generate", json={"inputs": "x"}).status_code == 200


def test_body_size_cap(gateway_factory: ServeFactory) -> None:
    served = gateway_factory(
        GatewaySettings(backend="synthetic", admission=AdmissionConfig(max_body_bytes=1000))
    )
    r = httpx.post(f"{served.url}/generate", json={"inputs": "x" * 2000})
    assert r.status_code == 413
    assert r.json()["error_type"] == "payload_too_large"
    assert httpx.post(f"{served.url}/generate", json={"inputs": "x" * 100}).status_code == 200


def test_client_disconnect_cancels_engine_request(gateway_factory: ServeFactory) -> None:
    backend = synthetic(token_delay_s=0.02)
    served = gateway_factory(None, backend)
    with (
        httpx.Client() as c,
        c.stream(
            "POST",
            f"{served.url}/generate_stream",
            json={"inputs": "w " * 200, "parameters": {"max_new_tokens": 500}},
        ) as s,
    ):
        lines = s.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["token"]["text"] == "w"
        assert backend.active == 1
    # Leaving the block closed the connection mid-stream.
    assert wait_for(lambda: backend.cancelled == 1 and backend.active == 0)
    metrics = httpx.get(f"{served.url}/metrics").text
    assert "lorax_requests_in_flight 0.0" in metrics
    assert 'outcome="cancelled"' in metrics


def test_openai_stream_disconnect_cancels_all_choices(gateway_factory: ServeFactory) -> None:
    backend = synthetic(token_delay_s=0.02)
    served = gateway_factory(None, backend)
    with (
        httpx.Client() as c,
        c.stream(
            "POST",
            f"{served.url}/v1/completions",
            json={"model": "", "prompt": "w " * 200, "max_tokens": 500, "n": 3, "stream": True},
        ) as s,
    ):
        lines = s.iter_lines()  # kept referenced: dropping it would close the response now
        next(line for line in lines if line.startswith("data:"))
        assert wait_for(lambda: backend.active == 3)
        assert backend.cancelled == 0
    assert wait_for(lambda: backend.cancelled == 3 and backend.active == 0)


def test_engine_unhealthy_is_503(gateway_factory: ServeFactory) -> None:
    backend = synthetic()
    served = gateway_factory(None, backend)
    assert httpx.get(f"{served.url}/health").status_code == 200
    backend.config.healthy = False
    r = httpx.get(f"{served.url}/health")
    assert r.status_code == 503
    assert r.json()["error_type"] == "healthcheck"
