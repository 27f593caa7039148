"""Graceful shutdown of a real ``lorax-gateway serve`` process (synthetic backend, slow tokens).

SIGTERM must stop admission (503 with the error shape, /health 503) while a stream in flight
runs to its end, then the process exits; a stream longer than ``--shutdown-timeout`` is cut.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest

from lorax_gateway.testing import free_port


def _prompt(words: int) -> str:
    # The synthetic engine echoes the prompt's words at 0.1 s a token: 20 words stream for ~2 s.
    return " ".join(f"w{i}" for i in range(words))


def _start(tmp_path: Path, shutdown_timeout: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log_path = tmp_path / f"gateway-{port}.log"
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        proc = _popen(port, shutdown_timeout, log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gateway did not start")


def _popen(port: int, shutdown_timeout: float, log: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lorax_gateway.cli",
            "serve",
            "--backend",
            "synthetic",
            "--backend-option",
            "token_delay_s=0.1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--shutdown-timeout",
            str(shutdown_timeout),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stream_in_thread(url: str, words: int, first_token: threading.Event) -> dict[str, object]:
    """Stream one request on a thread; the dict gets its events and the transport error, if any."""
    result: dict[str, object] = {"events": [], "error": None}

    def run() -> None:
        events: list[dict[str, object]] = []
        result["events"] = events
        try:
            with (
                httpx.Client(timeout=60) as client,
                client.stream(
                    "POST",
                    f"{url}/generate_stream",
                    json={"inputs": _prompt(words), "parameters": {"max_new_tokens": 200}},
                ) as resp,
            ):
                for line in resp.iter_lines():
                    if line.startswith("data:"):
                        events.append(json.loads(line[5:]))
                        first_token.set()
        except httpx.HTTPError as exc:
            result["error"] = exc
        first_token.set()

    thread = threading.Thread(target=run, daemon=True)
    result["thread"] = thread
    thread.start()
    return result


def test_sigterm_drains_in_flight_and_refuses_new(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    proc, url = _start(tmp_path, shutdown_timeout=30)
    procs.append(proc)
    first = threading.Event()
    result = _stream_in_thread(url, 20, first)
    assert first.wait(30)
    proc.send_signal(signal.SIGTERM)
    # The listening socket stays open during the drain: new requests get a clean 503.
    deadline = time.monotonic() + 10
    while True:
        r = httpx.post(f"{url}/generate", json={"inputs": "x"}, timeout=10)
        if r.status_code == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 503
    assert r.json() == {"error": "server is shutting down", "error_type": "unavailable"}
    health = httpx.get(f"{url}/health", timeout=10)
    assert (health.status_code, health.json()["error_type"]) == (503, "healthcheck")
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200
    thread = result["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(60)
    events = result["events"]
    assert isinstance(events, list)
    assert result["error"] is None
    final: dict[str, object] = events[-1]  # pyright: ignore[reportUnknownVariableType]
    assert final.get("details") is not None, final  # the in-flight stream ended normally
    assert len(events) == 21  # 20 words and the EOS token
    # Nothing left in flight: the process exits well before the 30 s timeout.
    assert proc.wait(timeout=20) in (0, -signal.SIGTERM)


def test_shutdown_timeout_cuts_long_streams(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    proc, url = _start(tmp_path, shutdown_timeout=0.5)
    procs.append(proc)
    first = threading.Event()
    result = _stream_in_thread(url, 150, first)  # ~15 s of stream
    assert first.wait(30)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    # 0.5 s drain + at most the 2 s close grace: the ~15 s stream did not hold the exit.
    assert time.monotonic() - signalled < 10
    thread = result["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(30)
    events = result["events"]
    assert isinstance(events, list)
    assert len(events) < 151  # pyright: ignore[reportUnknownArgumentType]


def test_second_signal_stops_without_waiting_for_the_drain(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    proc, url = _start(tmp_path, shutdown_timeout=60)
    procs.append(proc)
    first = threading.Event()
    result = _stream_in_thread(url, 150, first)  # ~15 s of stream, far inside the 60 s drain
    assert first.wait(30)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # draining
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert time.monotonic() - signalled < 10
    thread = result["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(30)
