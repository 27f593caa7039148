"""Graceful shutdown: drain in-process, and `lorax-engine serve --shutdown-timeout` under SIGTERM
in a real process."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.config import EngineConfig
from lorax_engine.params import Limits

LONG = {"max_new_tokens": 3000, "ignore_eos_token": True}


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint: Callable[[str], Path]) -> Path:
    return make_checkpoint("llama")


def _body(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": "r", "inputs": "Hello", "parameters": parameters}


@pytest.fixture
async def engine(checkpoint: Path) -> AsyncIterator[AsyncEngine]:
    engine = AsyncEngine.from_config(
        EngineConfig(
            model_id=str(checkpoint),
            device="cpu",
            limits=Limits(max_input_length=64, max_total_tokens=4096),
        )
    )
    yield engine
    await engine.shutdown()


REFUSED = [{"type": "error", "error": "the engine is shutting down", "error_type": "unavailable"}]


@pytest.mark.anyio
async def test_drain_waits_for_running_requests_and_refuses_new_ones(engine: AsyncEngine) -> None:
    running = engine.generate(_body({"max_new_tokens": 20, "ignore_eos_token": True}))
    assert (await anext(running))["type"] == "token"
    drain = asyncio.ensure_future(engine.drain(60))
    await asyncio.sleep(0)
    assert engine.draining
    assert [e async for e in engine.generate(_body({"max_new_tokens": 2}))] == REFUSED
    assert not drain.done()  # the running request is not done until its consumer has it all
    rest = [e async for e in running]
    assert rest[-1]["type"] == "end", rest[-1]
    assert rest[-1]["generated_tokens"] == 20
    assert await asyncio.wait_for(drain, 10)
    assert engine.in_flight == 0


@pytest.mark.anyio
async def test_drain_ends_the_requests_still_running_at_the_deadline(engine: AsyncEngine) -> None:
    running = engine.generate(_body(LONG))
    assert (await anext(running))["type"] == "token"
    assert not await engine.drain(0.0)
    rest = [e async for e in running]
    assert rest[-1]["type"] == "error", rest[-1]
    assert rest[-1]["error_type"] == "unavailable"
    assert len(rest) < 3000
    assert engine.in_flight == 0
    assert [e async for e in engine.generate(_body({"max_new_tokens": 2}))] == REFUSED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """`lorax-engine serve` as a child process on a loopback port."""

    def __init__(self, checkpoint: Path, shutdown_timeout: float, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        argv = [
            sys.executable,
            "-m",
            "lorax_engine.cli",
            "serve",
            "--model-id",
            str(checkpoint),
            "--device",
            "cpu",
            "--port",
            str(self.port),
            "--max-input-length",
            "64",
            "--max-total-tokens",
            "4096",
            "--shutdown-timeout",
            str(shutdown_timeout),
        ]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the engine did not start:\n{self.log.read_text()}")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"still running after SIGTERM:\n{self.log.read_text()}") from None


@pytest.fixture
def server(checkpoint: Path, tmp_path: Path) -> Iterator[Callable[[float], _Server]]:
    started: list[_Server] = []

    def start(shutdown_timeout: float) -> _Server:
        started.append(_Server(checkpoint, shutdown_timeout, tmp_path / "engine.log"))
        return started[-1]

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[len("data: ") :])


def test_sigterm_drains_running_requests_and_refuses_new_ones(
    server: Callable[[float], _Server],
) -> None:
    engine = server(60)
    # Long enough (seconds on a CPU) to be running when the refused request comes.
    params = {"max_new_tokens": 1000, "ignore_eos_token": True}
    with (
        httpx.Client(base_url=engine.url, timeout=60) as client,
        client.stream("POST", "/engine/generate", json=_body(params)) as response,
    ):
        events = _events(response.iter_lines())
        first = next(events)
        assert first["type"] == "token"
        engine.terminate()
        # Admission stops at once; the request in flight goes on.
        with httpx.Client(base_url=engine.url, timeout=10) as other:
            for _ in range(50):  # the signal is handled between two bytecodes: soon, not now
                refused = other.post("/engine/generate", json=_body({"max_new_tokens": 2}))
                if refused.status_code == 503:
                    break
                time.sleep(0.02)
            assert refused.status_code == 503
            assert refused.json() == {
                "error": "the engine is shutting down",
                "error_type": "unavailable",
            }
            health = other.get("/health")
            assert health.status_code == 503
        rest = list(events)
    assert rest[-1]["type"] == "end", rest[-1]
    assert rest[-1]["finish_reason"] == "length"
    assert rest[-1]["generated_tokens"] == 1000
    assert engine.wait(30) == 0
    assert "draining: 1 request(s) running" in engine.log.read_text()


def test_sigterm_ends_requests_still_running_at_the_shutdown_timeout(
    server: Callable[[float], _Server],
) -> None:
    engine = server(0.3)
    with (
        httpx.Client(base_url=engine.url, timeout=60) as client,
        client.stream("POST", "/engine/generate", json=_body(LONG)) as response,
    ):
        events = _events(response.iter_lines())
        assert next(events)["type"] == "token"
        terminated = time.monotonic()
        engine.terminate()
        rest = list(events)
    assert rest[-1]["type"] == "error", rest[-1]
    assert rest[-1]["error_type"] == "unavailable"
    assert engine.wait(30) == 0
    assert time.monotonic() - terminated < 20
