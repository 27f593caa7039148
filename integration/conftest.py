"""Fixtures for end-to-end tests: real ``lorax-engine serve`` and ``lorax-gateway serve`` processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lorax_gateway.testing import free_port

from .stack import engine_command, gateway_command


class Process:
    """A server process on a loopback port that can be killed and restarted."""

    def __init__(
        self, args: list[str], log: Path, port: int | None = None, health_path: str = "/health"
    ) -> None:
        self.port = port or free_port()
        #: GET path that answers 200 once the process serves (Prometheus: ``/-/ready``).
        self.health_path = health_path
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [a.replace("{port}", str(self.port)) for a in args]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> Process:
        with self.log.open("ab") as sink:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.args, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[:4]} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}{self.health_path}", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.args[:4]} did not become healthy:\n{self.log.read_text()[-3000:]}"
        )

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, sockets are closed by the kernel."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """``lorax-engine serve --model-id demo`` on CPU."""
    tmp = tmp_path_factory.mktemp("engine")
    proc = Process(
        engine_command(
            tmp / "cache", "--max-batch-total-tokens", "8192", "--max-active-adapters", "4"
        ),
        tmp / "engine.log",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(engine: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """``lorax-gateway serve`` in front of the engine, probing its health every 0.25 s."""
    tmp = tmp_path_factory.mktemp("gateway")
    proc = Process(
        gateway_command(engine.url, "--backend-option", "health_timeout_s=0.25"),
        tmp / "gateway.log",
    ).start()
    yield proc
    proc.stop()
