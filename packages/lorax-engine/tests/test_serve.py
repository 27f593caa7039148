"""`lorax-engine serve` over real HTTP (uvicorn on a loopback port, httpx as the client)."""

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

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.config import EngineConfig
from lorax_engine.params import Limits
from lorax_engine.serve import create_app


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    engine = AsyncEngine.from_config(
        EngineConfig(
            model_id="demo",
            device="cpu",
            cache_dir=Path(tmp_path_factory.mktemp("demo-cache")),
            limits=Limits(max_input_length=64, max_total_tokens=128),
        )
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    engine.core.stop()


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :])
        for line in response.iter_lines()
        if line.startswith("data: ")
    ]


def test_generate_streams_sse_events(base_url: str) -> None:
    body = {
        "request_id": "x",
        "inputs": "Hello",
        "parameters": {"max_new_tokens": 5, "ignore_eos_token": True},
    }
    with (
        httpx.Client(base_url=base_url) as client,
        client.stream("POST", "/engine/generate", json=body) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert [e["type"] for e in events] == ["token"] * 5 + ["end"]
    assert events[-1]["generated_tokens"] == 5


def test_validation_error_is_a_final_sse_event(base_url: str) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 500}}
    with (
        httpx.Client(base_url=base_url) as client,
        client.stream("POST", "/engine/generate", json=body) as r,
    ):
        events = sse_events(r)
    assert len(events) == 1
    assert events[0]["type"] == "error"
    assert events[0]["error_type"] == "validation"


def test_malformed_json_gets_the_error_body(base_url: str) -> None:
    r = httpx.post(f"{base_url}/engine/generate", content=b"{nope")
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation"
    assert "error" in r.json()


def test_disconnect_cancels_the_request(base_url: str) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 100, "ignore_eos_token": True}}
    with httpx.Client(base_url=base_url) as client:
        with client.stream("POST", "/engine/generate", json=body) as r:
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
            assert json.loads(first[6:])["type"] == "token"
        for _ in range(500):
            metrics = client.get("/metrics").text
            if (
                "lorax_engine_in_flight_requests 0.0" in metrics
                and "lorax_engine_kv_blocks_used 0.0" in metrics
            ):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the cancelled request still holds resources:\n" + metrics)


def test_tokenize_chat_template_info_health_metrics(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as client:
        toks = client.post(
            "/tokenize", json={"inputs": "Hello world", "add_special_tokens": False}
        ).json()
        assert "".join(t["text"] for t in toks) == "Hello world"
        assert toks[0]["start"] == 0
        prompt = client.post(
            "/engine/chat_template", json={"messages": [{"role": "user", "content": "hi"}]}
        ).json()
        assert prompt["prompt"].startswith("<s><|user|>\nhi")
        info = client.get("/info").json()
        assert info["max_total_tokens"] == 128
        assert info["model_id"] == "demo"
        assert client.get("/health").status_code == 200
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "lorax_engine_kv_blocks_free" in metrics.text
        bad = client.post("/engine/chat_template", json={"messages": "nope"})
        assert bad.status_code == 422
        assert bad.json()["error_type"] == "validation"
