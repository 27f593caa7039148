"""Helpers to run a gateway on loopback from tests and benchmarks (like ``litestar.testing``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from litestar import Litestar

from lorax_gateway.backends.base import EngineBackend


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class Served:
    """A running gateway: its base URL, app and backend."""

    url: str
    app: Litestar
    backend: EngineBackend


@contextmanager
def serve(app: Litestar, backend: EngineBackend, timeout_s: float = 20.0) -> Generator[Served]:
    """Run ``app`` with uvicorn on a free loopback port (in a thread) until the block exits."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name=f"gateway-{port}")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{port}", app, backend)
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
