"""The ``http`` backend and draining engines (``lorax-engine serve`` after SIGTERM).

A draining engine answers ``/engine/generate`` and ``/health`` with 503 while the streams it
already runs go on: the gateway must fail over before the first event, stop routing there at
once, and never cut those streams. The first tests script the engines' answers (an httpx mock
transport); the last one SIGTERMs a real ``lorax-engine serve`` process mid-stream.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorax_gateway import GatewaySettings
from lorax_gateway.backends.base import BackendUnavailableError
from lorax_gateway.backends.http import HttpBackend, HttpBackendConfig, rendezvous_order
from lorax_gateway.backends.http_engine import EngineState, EngineStream
from lorax_gateway.testing import free_port

from .conftest import ServeFactory

A, B = "http://engine-a", "http://engine-b"
UNAVAILABLE = {"error": "the engine is shutting down", "error_type": "unavailable"}


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)


def answer(text: str) -> bytes:
    """The SSE body of a one-token generation."""
    return sse(
        {"type": "token", "token": {"id": 5, "text": text, "logprob": -0.1, "special": False}},
        {
            "type": "end",
            "generated_text": text,
            "finish_reason": "length",
            "prompt_tokens": 1,
            "generated_tokens": 1,
            "seed": None,
        },
    )


Handler = Callable[[httpx.Request], httpx.Response]


class ScriptedBackend(HttpBackend):
    """An http backend whose engines are a handler (no sockets, no background probes)."""

    def __init__(self, urls: list[str], handler: Handler) -> None:
        super().__init__(HttpBackendConfig(engine_urls=urls))
        self.calls: list[str] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.calls.append(f"{request.url.scheme}://{request.url.host}{request.url.path}")
            return handler(request)

        self._handler = record

    async def start(self) -> None:
        self._client = httpx.AsyncClient(transport=httpx.MockTransport(self._handler))
        for engine in self.engines.values():
            engine.state = EngineState.UP

    async def probe(self, url: str) -> None:
        await self._probe(self.engines[url])  # pyright: ignore[reportPrivateUsage]


def draining_engine(drained: str, how: str) -> Handler:
    """Engine ``drained`` refuses new requests (``how``: a 503, or an ``unavailable`` first
    event in a 200 stream, as when the drain begins while the request is admitted)."""

    def handle(request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.url.host}"
        if url == drained:
            if request.url.path == "/health" or how == "503":
                return httpx.Response(503, json=UNAVAILABLE)
            return httpx.Response(200, content=sse({"type": "error", **UNAVAILABLE}))
        if request.url.path == "/health":
            return httpx.Response(200)
        return httpx.Response(200, content=answer(f"from {url}"))

    return handle


def adapter_preferring(url: str, urls: list[str]) -> str:
    """An adapter id whose rendezvous order puts ``url`` first."""
    return next(a for a in (f"a/{k}" for k in range(100)) if rendezvous_order(a, urls)[0] == url)


async def collect(backend: HttpBackend, adapter_id: str) -> list[dict[str, Any]]:
    request = {"request_id": "r", "inputs": "x", "parameters": {"adapter_id": adapter_id}}
    return [e async for e in backend.generate(request, {})]


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["503", "first-event"])
async def test_draining_engine_fails_over_and_leaves_rotation_at_once(how: str) -> None:
    backend = ScriptedBackend([A, B], draining_engine(A, how))
    await backend.start()
    try:
        adapter = adapter_preferring(A, [A, B])
        events = await collect(backend, adapter)
        assert [e["type"] for e in events] == ["token", "end"]
        assert events[-1]["generated_text"] == f"from {B}"
        assert backend.calls == [f"{A}/engine/generate", f"{B}/engine/generate"]
        assert backend.engines[A].state is EngineState.DRAINING  # without waiting for a probe
        # The next request for the same adapter goes straight to the other engine.
        backend.calls.clear()
        assert (await collect(backend, adapter))[-1]["generated_text"] == f"from {B}"
        assert backend.calls == [f"{B}/engine/generate"]
        assert await backend.health()
    finally:
        await backend.close()


@pytest.mark.anyio
async def test_single_draining_engine_is_unavailable() -> None:
    backend = ScriptedBackend([A], draining_engine(A, "503"))
    await backend.start()
    try:
        with pytest.raises(BackendUnavailableError, match="shutting down"):
            await collect(backend, "a/1")
        assert backend.engines[A].state is EngineState.DRAINING
        with pytest.raises(BackendUnavailableError, match="no engine is available"):
            await collect(backend, "a/1")
        assert backend.calls == [f"{A}/engine/generate"]
        assert not await backend.health()
    finally:
        await backend.close()


def test_single_draining_engine_gives_the_caller_503(gateway_factory: ServeFactory) -> None:
    backend = ScriptedBackend([A], draining_engine(A, "503"))
    served = gateway_factory(GatewaySettings(backend="http"), backend)
    for path in ("/generate", "/generate_stream"):
        r = httpx.post(f"{served.url}{path}", json={"inputs": "x"})
        assert r.status_code == 503, r.text
        assert r.json()["error_type"] == "unavailable"


@pytest.mark.anyio
async def test_health_503_keeps_streams_and_probes_tell_draining_from_dead() -> None:
    backend = ScriptedBackend([A, B], draining_engine(A, "503"))
    await backend.start()
    try:
        engine = backend.engines[A]
        # A stream that has been waiting a long time for its next token (a long prefill of
        # another request, a loaded machine): a draining engine still finishes it.
        stream = EngineStream(httpx.Response(200), waiting_since=time.monotonic() - 60)
        engine.streams.add(stream)
        for _ in range(3):
            await backend.probe(A)
            assert engine.state is EngineState.DRAINING
            assert engine.streams == {stream}
        await backend.probe(B)
        assert backend.engines[B].state is EngineState.UP
        assert [e.url for e in backend.candidates("a/1")] == [B]
    finally:
        await backend.close()


@pytest.mark.anyio
async def test_draining_engine_that_exits_is_down_and_comes_back_up() -> None:
    state = {"A": "draining"}

    def handle(request: httpx.Request) -> httpx.Response:
        if state["A"] == "gone":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200 if state["A"] == "up" else 503, json={})

    backend = ScriptedBackend([A], handle)
    await backend.start()
    try:
        await backend.probe(A)
        assert backend.engines[A].state is EngineState.DRAINING
        state["A"] = "gone"
        await backend.probe(A)
        assert backend.engines[A].state is EngineState.DOWN
        state["A"] = "up"  # restarted on the same port
        await backend.probe(A)
        assert backend.engines[A].state is EngineState.UP
    finally:
        await backend.close()


# --- real `lorax-engine serve` processes ---------------------------------------------------


class EngineServe:
    """``lorax-engine serve --model-id demo`` on CPU, logging to a file."""

    def __init__(self, tmp: Path) -> None:
        pytest.importorskip("lorax_engine")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"engine-{self.port}.log"
        with self.log.open("wb") as sink:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lorax_engine.cli",
                    "serve",
                    "--model-id",
                    "demo",
                    "--device",
                    "cpu",
                    "--port",
                    str(self.port),
                    "--cache-dir",
                    str(tmp / f"cache-{self.port}"),
                    "--max-batch-total-tokens",
                    "4096",
                    "--max-active-adapters",
                    "2",
                    "--shutdown-timeout",
                    "120",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"engine did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def two_engines(tmp_path: Path) -> Iterator[list[EngineServe]]:
    engines = [EngineServe(tmp_path), EngineServe(tmp_path)]  # both load at the same time
    try:
        for e in engines:
            e.wait_ready(180)
        yield engines
    finally:
        for e in engines:
            e.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_sigterm_mid_stream_finishes_it_and_routes_new_requests_elsewhere(
    gateway_factory: ServeFactory, two_engines: list[EngineServe]
) -> None:
    urls = [e.url for e in two_engines]
    backend = HttpBackend(
        HttpBackendConfig(engine_urls=urls, health_interval_s=0.2, health_timeout_s=0.5)
    )
    served = gateway_factory(GatewaySettings(backend="http"), backend)
    adapter = "demo/pirate"  # rendezvous puts it on one engine: the one that is stopped
    stopped = next(e for e in two_engines if e.url == rendezvous_order(adapter, urls)[0])
    other = next(e for e in two_engines if e is not stopped)
    max_new = 1000
    # 40 alternatives a token make the engine's stream ~2 MB: more than the socket buffers
    # between engine, gateway and this client hold, so while this client reads nothing the
    # stream can neither end nor let the engine finish its drain.
    params = {"adapter_id": adapter, "max_new_tokens": max_new, "ignore_eos_token": True}
    body = {"inputs": "Once upon a time", "parameters": {**params, "return_k_alternatives": 40}}
    engine = backend.engines[stopped.url]
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{served.url}/generate_stream", json=body) as stream,
    ):
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        stopped.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not engine.routable, 30, "drain not noticed by the gateway")
        for _ in range(3):
            r = httpx.post(
                f"{served.url}/generate",
                json={"inputs": "Hi", "parameters": {"adapter_id": adapter, "max_new_tokens": 4}},
                timeout=60,
            )
            assert r.status_code == 200, r.text
        assert httpx.get(f"{served.url}/health").status_code == 200
        # Several 503 probes while the stream is silent (this client does not read): it stays.
        # (Not routable is all that is asserted of the state: on a loaded machine a probe may
        # time out, and a paused stream must survive that too.)
        time.sleep(1.5)
        assert not engine.routable
        assert engine.streams, "the stream ended before the drain was probed (buffers too big?)"
        events = [json.loads(first[5:])]
        events += [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert not [e for e in events if "error" in e]
    assert len(events) == max_new
    assert events[-1]["details"]["generated_tokens"] == max_new
    assert stopped.proc.wait(timeout=60) == 0
    log = stopped.log.read_text()
    assert "draining: 1 request(s) running" in log  # the SIGTERM came mid-stream
    # The stopped engine served only the long stream; the new requests went to the other one.
    assert len(re.findall(r'"POST /engine/generate HTTP/1.1" 200', log)) == 1
    other_log = other.log.read_text()
    assert len(re.findall(r'"POST /engine/generate HTTP/1.1" 200', other_log)) == 3
    wait_for(lambda: backend.engines[stopped.url].state is EngineState.DOWN, 10, "exit unnoticed")
    assert backend.engines[other.url].state is EngineState.UP
