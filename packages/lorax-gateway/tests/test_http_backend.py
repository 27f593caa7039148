"""The ``http`` backend against synthetic engine processes on loopback.

The engines are ``python -m lorax_gateway.testing`` processes (the engine wire protocol over the
synthetic backend), so kill -9, hang (SIGSTOP) and restart are real process events.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from lorax_gateway import GatewaySettings
from lorax_gateway.backends.http import HttpBackend, HttpBackendConfig, rendezvous_order
from lorax_gateway.backends.http_engine import EngineState, EngineStream
from lorax_gateway.testing import Served, free_port

from .conftest import ServeFactory


class EngineProcess:
    """A synthetic engine process that can be killed, frozen and restarted on its port."""

    def __init__(self, token_delay_s: float = 0.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_delay_s = token_delay_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EngineProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lorax_gateway.testing",
                "--port",
                str(self.port),
                "--token-delay-s",
                str(self.token_delay_s),
                "--adapters",
                "a/1,a/2,a/3,a/4",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()  # one that never answered must not outlive the test either
        raise RuntimeError("engine did not start")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def engines() -> Iterator[list[EngineProcess]]:
    procs = [EngineProcess(token_delay_s=0.01), EngineProcess(token_delay_s=0.01)]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        # Also when the second one fails to start: the first is running by then.
        for p in procs:
            p.stop()


def http_gateway(factory: ServeFactory, urls: list[str]) -> Served:
    backend = HttpBackend(
        HttpBackendConfig(engine_urls=urls, health_interval_s=0.2, health_timeout_s=0.3)
    )
    return factory(GatewaySettings(backend="http"), backend)


def wait_until(predicate: object, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_rendezvous_is_stable_and_spreads() -> None:
    urls = [f"http://e{i}" for i in range(4)]
    firsts = {rendezvous_order(f"adapter-{k}", urls)[0] for k in range(200)}
    assert firsts == set(urls)
    # Removing an engine only moves the adapters that were on it.
    for k in range(200):
        order = rendezvous_order(f"adapter-{k}", urls)
        if order[0] != urls[3]:
            assert rendezvous_order(f"adapter-{k}", urls[:3])[0] == order[0]


def test_affinity_routing_and_least_loaded_fallback() -> None:
    backend = HttpBackend(HttpBackendConfig(engine_urls=["http://a", "http://b"], affinity_slack=2))
    for e in backend.engines.values():
        e.state = EngineState.UP
    preferred = backend.candidates("x/y")[0]
    assert backend.candidates("x/y")[0] is preferred
    preferred.in_flight = 3
    assert backend.candidates("x/y")[0] is not preferred  # too busy: least loaded instead
    preferred.in_flight = 0
    other = next(e for e in backend.engines.values() if e is not preferred)
    other.in_flight = 1
    assert backend.candidates(None)[0] is preferred  # base model: least loaded
    preferred.state = EngineState.DOWN
    assert backend.candidates("x/y") == [other]
    preferred.state = EngineState.DRAINING
    assert backend.candidates("x/y") == [other]


def test_generate_through_engines_and_all_routes(
    gateway_factory: ServeFactory, engines: list[EngineProcess]
) -> None:
    served = http_gateway(gateway_factory, [e.url for e in engines])
    r = httpx.post(
        f"{served.url}/generate",
        json={"inputs": "a b", "parameters": {"adapter_id": "a/1", "details": True}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"] == "A B"
    r = httpx.post(
        f"{served.url}/v1/chat/completions",
        json={"model": "a/2", "messages": [{"role": "user", "content": "q"}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("<|ADAPTER:A/2|>")
    assert [
        t["text"] for t in httpx.post(f"{served.url}/tokenize", json={"inputs": "u v"}).json()
    ] == ["<s>", "u", " v"]
    assert httpx.get(f"{served.url}/info").json()["model_id"] == "synthetic"
    metrics = httpx.get(f"{served.url}/metrics").text
    for e in engines:
        assert f'lorax_engine_batch_size{{engine="{e.url}"}}' in metrics
    r = httpx.post(
        f"{served.url}/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 99999}}
    )
    assert r.status_code == 422


def test_kill_restart_and_failover(
    gateway_factory: ServeFactory, engines: list[EngineProcess]
) -> None:
    served = http_gateway(gateway_factory, [engines[0].url])
    url = f"{served.url}/generate_stream"
    body = {"inputs": "w " * 300, "parameters": {"max_new_tokens": 1000}}
    with httpx.Client(timeout=10) as c, c.stream("POST", url, json=body) as s:
        lines = s.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        killed_at = time.monotonic()
        engines[0].signal(signal.SIGKILL)
        last = None
        for line in lines:
            if line.startswith("data:"):
                last = json.loads(line[5:])
        elapsed = time.monotonic() - killed_at
    assert last is not None
    assert last["error_type"] == "unavailable"
    assert elapsed < 1.0
    wait_until(lambda: httpx.get(f"{served.url}/health").status_code == 503, 1.0)
    r = httpx.post(f"{served.url}/generate", json={"inputs": "x"})
    assert r.status_code == 503
    assert r.json()["error_type"] == "unavailable"
    engines[0].start()  # same port: picked up without restarting the gateway
    wait_until(lambda: httpx.get(f"{served.url}/health").status_code == 200, 5.0)
    assert httpx.post(f"{served.url}/generate", json={"inputs": "x"}).status_code == 200


def test_hung_engine_streams_end_within_a_second(
    gateway_factory: ServeFactory, engines: list[EngineProcess]
) -> None:
    served = http_gateway(gateway_factory, [e.url for e in engines])
    body = {"inputs": "w " * 300, "parameters": {"max_new_tokens": 1000}}
    with (
        httpx.Client(timeout=10) as c,
        c.stream("POST", f"{served.url}/generate_stream", json=body) as s,
    ):
        lines = s.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        backend = served.backend
        assert isinstance(backend, HttpBackend)
        busy = next(e for e in engines if backend.engines[e.url].in_flight == 1)
        frozen_at = time.monotonic()
        busy.signal(signal.SIGSTOP)  # no FIN, no RST: only the health probe can notice
        last = None
        for line in lines:
            if line.startswith("data:"):
                last = json.loads(line[5:])
        elapsed = time.monotonic() - frozen_at
    assert last is not None
    assert last["error_type"] == "unavailable"
    assert elapsed < 1.0
    # The other engine still serves; /health stays 200.
    assert httpx.get(f"{served.url}/health").status_code == 200
    assert httpx.post(f"{served.url}/generate", json={"inputs": "x"}).status_code == 200
    busy.signal(signal.SIGCONT)


def test_failover_before_first_event(
    gateway_factory: ServeFactory, engines: list[EngineProcess]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    served = http_gateway(gateway_factory, [dead, engines[0].url])
    backend = served.backend
    assert isinstance(backend, HttpBackend)
    backend.engines[dead].state = EngineState.UP  # as if it died after its last probe
    for k in range(6):
        r = httpx.post(
            f"{served.url}/generate",
            json={"inputs": "x", "parameters": {"adapter_id": f"a/{k % 4 + 1}"}},
        )
        assert r.status_code == 200, r.text
    assert backend.engines[dead].state is EngineState.DOWN


@pytest.mark.anyio
async def test_slow_probe_of_a_streaming_engine_keeps_its_streams() -> None:
    # A socket that accepts connections (in the kernel) but never answers: probes time out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        # A long interval: the background loop stays out of the way of the probes made here.
        config = HttpBackendConfig(engine_urls=[url], health_timeout_s=0.2, health_interval_s=60)
        backend = HttpBackend(config)
        await backend.start()
        try:
            engine = backend.engines[url]
            engine.state = EngineState.UP
            waiting = EngineStream(httpx.Response(200), waiting_since=time.monotonic())
            paused = EngineStream(httpx.Response(200))  # its client reads slowly
            engine.streams.update((waiting, paused))
            engine.last_activity = time.monotonic() + 10  # bytes keep arriving
            await backend._probe(engine)  # pyright: ignore[reportPrivateUsage]
            assert engine.state is EngineState.UP
            assert engine.streams == {waiting, paused}
            engine.last_activity = time.monotonic() - 1.0  # silent: now the failed probe counts
            waiting.waiting_since = time.monotonic() - 1.0
            await backend._probe(engine)  # pyright: ignore[reportPrivateUsage]
            assert engine.state is EngineState.DOWN
            # The stream waiting on the hung engine is closed; the paused one is not waiting for
            # the engine (its bytes may be in the socket buffers) until it stalls in its turn.
            assert engine.streams == {paused}
            paused.waiting_since = time.monotonic() - 1.0
            await backend._probe(engine)  # pyright: ignore[reportPrivateUsage]
            assert not engine.streams
            # An idle engine is dropped only after two missed probes in a row.
            engine.failed_probes = 0
            engine.state = EngineState.UP
            await backend._probe(engine)  # pyright: ignore[reportPrivateUsage]
            assert engine.state is EngineState.UP
            await backend._probe(engine)  # pyright: ignore[reportPrivateUsage]
            assert engine.state is EngineState.DOWN
        finally:
            await backend.close()
