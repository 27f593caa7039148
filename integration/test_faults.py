"""Faults short of a dead engine (engine kill -9 is in test_gateway_engine.py).

- Clients hanging up mid-stream: their engine requests are cancelled and the KV blocks return to
  free (CI: 100 disconnects; ``--runslow``: the issue's 1,000).
- A client that times out before a slow (non-streaming) generation ends: the same.
- An adapter whose download stalls or fails (a hub stub on loopback): only its requests fail,
  with an explicit 4xx error, after a bounded wait, while other requests keep being served.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from .conftest import Process
from .stack import (
    StreamOutcome,
    engine_command,
    gateway_command,
    stream_generate,
    tally,
    wait_engine_idle,
)


@pytest.fixture(scope="module")
def busy_gateway(engine: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A gateway with the default health-probe timeout (0.5 s): the shared ``gateway`` fixture's
    0.25 s is tuned for the kill -9 test and takes a CPU engine that is busy starting 100 streams
    for dead."""
    tmp = tmp_path_factory.mktemp("faults")
    proc = Process(gateway_command(engine.url), tmp / "gateway.log").start()
    yield proc
    proc.stop()


async def _disconnects(url: str, n: int) -> list[StreamOutcome]:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 400, "ignore_eos_token": True}}
    outcomes: list[StreamOutcome] = []
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        sem = anyio.Semaphore(100)  # under the gateway's admission limit: none is refused

        async def one(i: int) -> None:
            async with sem:
                outcomes.append(await stream_generate(client, url, body, stop_after=1 + i % 5))

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    return outcomes


def _check_disconnects(gateway: Process, engine: Process, n: int) -> None:
    outcomes = anyio.run(_disconnects, gateway.url, n)
    assert len(outcomes) == n
    # Each hung up after its first few tokens, none finished (400 tokens each) or failed.
    hung_up = [o for o in outcomes if o.status == 200 and o.error_type is None and o.final is None]
    assert len(hung_up) == n, tally(outcomes)
    gauges = wait_engine_idle(engine.url, timeout_s=60)
    print(f"\ndisconnects: {n}; engine after: {gauges}")
    assert gauges["lorax_engine_kv_blocks_used"] == 0, gauges
    assert gauges["lorax_engine_in_flight_requests"] == 0, gauges
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "Hi"}, timeout=60)
    assert r.status_code == 200, r.text


def test_client_disconnects_free_kv_blocks(busy_gateway: Process, engine: Process) -> None:
    _check_disconnects(busy_gateway, engine, 100)


@pytest.mark.slow
def test_thousand_client_disconnects(busy_gateway: Process, engine: Process) -> None:
    _check_disconnects(busy_gateway, engine, 1000)


def test_client_timeout_on_slow_generation(busy_gateway: Process, engine: Process) -> None:
    gateway = busy_gateway
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 1500, "ignore_eos_token": True}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/generate", json=body, timeout=1.0)
    gauges = wait_engine_idle(engine.url, timeout_s=60)
    assert gauges["lorax_engine_kv_blocks_used"] == 0, gauges
    assert gauges["lorax_engine_in_flight_requests"] == 0, gauges


class _HubStub(http.server.BaseHTTPRequestHandler):
    """A model hub that stalls on ``stall/*`` and fails every other request with a 500."""

    #: A stall longer than the bound the test allows, short enough to keep CI quick.
    stall_s = 20.0
    release = threading.Event()

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        if "/stall/" in self.path:
            self.release.wait(self.stall_s)
        self.send_response(500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        del format, args


@pytest.fixture(scope="module")
def hub_stub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubStub)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _HubStub.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hub_stack(
    hub_stub: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, Process]]:
    tmp = tmp_path_factory.mktemp("hubfaults")
    with pytest.MonkeyPatch.context() as mp:
        # The engine reads these at start-up: the stub hub, and the hub client's own timeouts,
        # which are what bounds a stalled download.
        mp.setenv("HF_ENDPOINT", hub_stub)
        mp.setenv("HF_HUB_ETAG_TIMEOUT", "2")
        mp.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
        mp.setenv("HF_HUB_OFFLINE", "0")
        engine = Process(
            engine_command(tmp / "cache", "--max-active-adapters", "2"), tmp / "engine.log"
        ).start()
    gateway = Process(gateway_command(engine.url), tmp / "gateway.log").start()
    yield engine, gateway
    gateway.stop()
    engine.stop()


async def _mixed(url: str) -> tuple[list[StreamOutcome], list[StreamOutcome]]:
    bad: list[StreamOutcome] = []
    good: list[StreamOutcome] = []
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(adapter: str, into: list[StreamOutcome]) -> None:
            params = {"max_new_tokens": 8, "adapter_id": adapter, "adapter_source": "hub"}
            if adapter.startswith("demo/"):
                params["adapter_source"] = "local"
            into.append(await stream_generate(client, url, {"inputs": "Hi", "parameters": params}))

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, f"stall/adapter{i}", bad)
                tg.start_soon(one, f"broken/adapter{i}", bad)
                tg.start_soon(one, "demo/pirate", good)
    return bad, good


def test_stalled_or_failing_adapter_fails_only_its_requests(
    hub_stack: tuple[Process, Process],
) -> None:
    engine, gateway = hub_stack
    started = time.monotonic()
    bad, good = anyio.run(_mixed, gateway.url)
    elapsed = time.monotonic() - started
    print(f"\nhub faults: failing {tally(bad)}, others {tally(good)} in {elapsed:.1f} s")
    assert tally(good) == {"complete": 4}
    for out in bad:
        assert 400 <= out.status < 500, out
        assert out.error_type in ("generation", "not_found"), out
    # Bounded by the hub client's 2 s timeouts (with retries), not by the 20 s stall.
    assert elapsed < 12, elapsed
    gauges = wait_engine_idle(engine.url)
    assert gauges["lorax_engine_kv_blocks_used"] == 0, gauges
