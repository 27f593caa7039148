"""What the containers run, run here: the images' health checks and the gateway's compose command.

No Docker engine runs on CI, so the commands are run as plain processes on loopback: the health
check one-liner against a stub server, and `lorax-gateway` exactly as docker-compose.yml starts it
(free loopback ports in place of 0.0.0.0:8080 and the engine's address).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .conftest import IMAGES, compose_argv
from .dockerfile_parser import Dockerfile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _stub_health_server(status: list[int]) -> Iterator[int]:
    """A loopback server answering `GET /health` with `status[0]`; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = status[0] if self.path == "/health" else 404
            self.send_response(code)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _healthcheck(dockerfile: Dockerfile, port: int) -> int:
    """Run the image's HEALTHCHECK command against 127.0.0.1:`port`; its exit status."""
    image_port = dockerfile.final.last("EXPOSE").args
    command = [
        part.replace(f":{image_port}/", f":{port}/") for part in dockerfile.healthcheck_command()
    ]
    assert command[0] == "python"  # the image's venv interpreter; ours here
    result = subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, timeout=30, check=False
    )
    return result.returncode


@pytest.mark.parametrize("image", IMAGES)
def test_healthcheck_passes_only_on_a_healthy_server(
    image: str, dockerfiles: dict[str, Dockerfile]
) -> None:
    status = [200]
    with _stub_health_server(status) as port:
        assert _healthcheck(dockerfiles[image], port) == 0
        status[0] = 503
        assert _healthcheck(dockerfiles[image], port) != 0
    # Nothing listening (the server died) is unhealthy too.
    assert _healthcheck(dockerfiles[image], port) != 0


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_gateway_compose_command_serves_and_stops_on_the_stop_signal(
    compose: dict[str, Any], dockerfiles: dict[str, Dockerfile], tmp_path: Path
) -> None:
    argv = compose_argv(compose, dockerfiles, "gateway")
    port, dead_engine = _free_port(), _free_port()
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--engine-url") + 1] = f"http://127.0.0.1:{dead_engine}"
    executable = Path(sys.executable).with_name(argv[0])
    log = (tmp_path / "gateway.log").open("w")
    process = subprocess.Popen([str(executable), *argv[1:]], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        status = None
        while status is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            status = _get_status(f"http://127.0.0.1:{port}/health")
        assert status is not None, (tmp_path / "gateway.log").read_text()
        # Up, but no engine answers: /health says 503 and the container counts as unhealthy.
        assert status == 503
        assert _healthcheck(dockerfiles["gateway"], port) != 0

        stop_signal = dockerfiles["gateway"].final.last("STOPSIGNAL").args
        started = time.monotonic()
        process.send_signal(getattr(signal, stop_signal))
        process.wait(timeout=30)
        # Idle, it stops well within the grace period compose gives it.
        assert time.monotonic() - started < 10
        assert process.returncode in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()
