"""Gateway and engine as separate processes on loopback: the API end to end, and engine death.

The engine is the real ``lorax-engine serve --model-id demo`` (a tiny random Llama on CPU); the
gateway is ``lorax-gateway serve --engine-url ...``.
"""

from __future__ import annotations

import json
import time

import httpx
import openai

import lorax

from .conftest import Process


def test_generate_matches_engine_and_streams(gateway: Process, engine: Process) -> None:
    body = {
        "inputs": "Hello, world!",
        "parameters": {"max_new_tokens": 12, "details": True, "ignore_eos_token": True},
    }
    r = httpx.post(f"{gateway.url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    details = r.json()["details"]
    assert details["generated_tokens"] == 12
    assert details["finish_reason"] == "length"
    # Greedy is deterministic: the gateway relays exactly what the engine produces.
    direct = httpx.post(
        f"{engine.url}/engine/generate",
        json={"request_id": "d", "inputs": body["inputs"], "parameters": body["parameters"]},
        timeout=60,
    )
    engine_ids = [
        json.loads(line[5:])["token"]["id"]
        for line in direct.text.splitlines()
        if line.startswith("data:") and '"token"' in line
    ]
    assert [t["id"] for t in details["tokens"]] == engine_ids
    with lorax.Client(gateway.url) as client:
        events = list(
            client.generate_stream("Hello, world!", max_new_tokens=12, ignore_eos_token=True)
        )
    assert [e.token.id for e in events] == engine_ids
    assert events[-1].generated_text == r.json()["generated_text"]
    tokens = httpx.post(f"{gateway.url}/tokenize", json={"inputs": "Hello"}).json()
    assert (
        tokens
        == httpx.post(
            f"{engine.url}/tokenize", json={"inputs": "Hello", "add_special_tokens": True}
        ).json()
    )


def test_adapters_through_the_gateway(gateway: Process) -> None:
    r = httpx.post(
        f"{gateway.url}/generate",
        json={
            "inputs": "Hello",
            "parameters": {"max_new_tokens": 6, "adapter_id": "demo/pirate", "details": True},
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-adapter-id"] == "demo/pirate"
    r = httpx.post(
        f"{gateway.url}/generate",
        json={"inputs": "Hello", "parameters": {"adapter_id": "demo/missing"}},
        timeout=60,
    )
    assert r.status_code in (404, 424), r.text
    models = httpx.get(f"{gateway.url}/v1/models").json()["data"]
    assert "demo/pirate" in [m["id"] for m in models]


def test_openai_chat_and_errors(gateway: Process) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=0, timeout=60)
    out = client.chat.completions.create(
        model="",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=5,
    )
    assert out.usage is not None
    assert out.usage.completion_tokens <= 5
    assert out.model == "demo"
    chunks = list(
        client.completions.create(
            model="",
            prompt="Hello",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    assert 1 <= chunks[-1].usage.completion_tokens <= 4
    r = httpx.post(
        f"{gateway.url}/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 100000}}
    )
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert f'engine="{gateway.args[gateway.args.index("--engine-url") + 1]}"' in metrics


def test_engine_kill_and_restart(gateway: Process, engine: Process) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 1500, "ignore_eos_token": True}}
    with (
        httpx.Client(timeout=60) as c,
        c.stream("POST", f"{gateway.url}/generate_stream", json=body) as s,
    ):
        lines = s.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        killed = time.monotonic()
        engine.kill()
        last = None
        for line in lines:
            if line.startswith("data:"):
                last = json.loads(line[5:])
        elapsed = time.monotonic() - killed
    assert last is not None
    assert last.get("error_type") == "unavailable"
    assert elapsed < 1.0
    deadline = time.monotonic() + 1.0
    while httpx.get(f"{gateway.url}/health").status_code != 503:
        assert time.monotonic() < deadline, "/health did not turn 503 within a second"
        time.sleep(0.02)
    assert httpx.post(f"{gateway.url}/generate", json={"inputs": "x"}).status_code == 503
    engine.start()  # same port; the gateway was not restarted
    deadline = time.monotonic() + 10
    while httpx.get(f"{gateway.url}/health").status_code != 200:
        assert time.monotonic() < deadline, "restarted engine was not picked up"
        time.sleep(0.05)
    r = httpx.post(
        f"{gateway.url}/generate",
        json={"inputs": "Hello", "parameters": {"max_new_tokens": 3}},
        timeout=60,
    )
    assert r.status_code == 200, r.text
