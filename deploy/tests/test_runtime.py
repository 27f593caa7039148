"""What the containers run, run here: the images' health checks and the gateway's compose command.

No Docker engine runs on CI, so the commands are run as plain processes on loopback: the health
check one-liner against a stub server, and `lorax-gateway` exactly as docker-compose.yml starts it
(free loopback ports in place of 0.0.0.0:8080 and the engine's address).
"""

from __future__ import annotations

import json
import os
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


@contextmanager
def _running(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a container's argv (its console script from this venv) until the block exits."""
    executable = Path(sys.executable).with_name(argv[0])
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(executable), *argv[1:]],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def _wait_for_status(url: str, wanted: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    status = None
    while status != wanted:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{url}: {status}\n{log.read_text()}"
        time.sleep(0.2)
        status = _get_status(url)


def _stop(process: subprocess.Popen[bytes], dockerfile: Dockerfile, grace_s: float) -> float:
    """Send the image's STOPSIGNAL and wait; seconds until the process exited."""
    started = time.monotonic()
    process.send_signal(getattr(signal, dockerfile.final.last("STOPSIGNAL").args))
    process.wait(timeout=grace_s)
    assert process.returncode in (0, -signal.SIGTERM)
    return time.monotonic() - started


def _generate(gateway_url: str, parameters: dict[str, Any], logs: list[Path]) -> dict[str, Any]:
    """`POST /generate` through the gateway. A 503 (engine momentarily marked unhealthy, e.g. a
    health probe that timed out on a loaded CI machine) is retried for a while; anything else fails
    with the servers' logs."""
    body = json.dumps({"inputs": "Hello", "parameters": parameters}).encode()
    request = urllib.request.Request(
        f"{gateway_url}/generate", body, {"content-type": "application/json"}
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            code, text = error.code, error.read()
        detail = f"{code} {text!r}\n" + "\n".join(log.read_text() for log in logs)
        assert code == 503, detail
        assert time.monotonic() < deadline, detail
        time.sleep(0.5)


def test_compose_topology_generates(
    compose: dict[str, Any], dockerfiles: dict[str, Dockerfile], tmp_path: Path
) -> None:
    # The engine and the gateway exactly as compose starts them, on loopback, the engine's /data
    # volume a temporary directory: the image's ENV decides where the engine writes.
    engine_port, gateway_port = _free_port(), _free_port()
    engine_argv = compose_argv(compose, dockerfiles, "engine")
    engine_argv[engine_argv.index("--host") + 1] = "127.0.0.1"
    engine_argv[engine_argv.index("--port") + 1] = str(engine_port)
    data = tmp_path / "data"
    engine_env = {
        key: value.replace("/data", str(data), 1)
        for key, value in dockerfiles["engine"].final.env().items()
        if value.startswith("/data/")
    }
    gateway_argv = compose_argv(compose, dockerfiles, "gateway")
    gateway_argv[gateway_argv.index("--host") + 1] = "127.0.0.1"
    gateway_argv[gateway_argv.index("--port") + 1] = str(gateway_port)
    gateway_argv[gateway_argv.index("--engine-url") + 1] = f"http://127.0.0.1:{engine_port}"

    with (
        _running(engine_argv, tmp_path / "engine.log", engine_env) as engine,
        _running(gateway_argv, tmp_path / "gateway.log") as gateway,
    ):
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        # depends_on: service_healthy, in effect: the gateway is healthy once the engine is.
        _wait_for_status(f"{gateway_url}/health", 200, gateway, tmp_path / "gateway.log")
        assert _healthcheck(dockerfiles["engine"], engine_port) == 0
        assert _healthcheck(dockerfiles["gateway"], gateway_port) == 0

        logs = [tmp_path / "engine.log", tmp_path / "gateway.log"]
        base = _generate(gateway_url, {"max_new_tokens": 4}, logs)
        assert isinstance(base["generated_text"], str)
        # An adapter too: compose turns the engine's adapter slots on (the demo ships adapters).
        pirate = _generate(gateway_url, {"max_new_tokens": 4, "adapter_id": "demo/pirate"}, logs)
        assert isinstance(pirate["generated_text"], str)

        # The demo checkpoint was built on the volume, nowhere else.
        assert list(data.glob("lorax-engine/demo-*/config.json"))
        grace = {
            name: compose["services"][name]["stop_grace_period"] for name in ("gateway", "engine")
        }
        assert (
            _stop(gateway, dockerfiles["gateway"], float(grace["gateway"].removesuffix("s"))) < 10
        )
        assert _stop(engine, dockerfiles["engine"], float(grace["engine"].removesuffix("s"))) < 10


def test_gateway_without_engine_is_unhealthy_and_stops_on_the_stop_signal(
    compose: dict[str, Any], dockerfiles: dict[str, Dockerfile], tmp_path: Path
) -> None:
    argv = compose_argv(compose, dockerfiles, "gateway")
    port = _free_port()
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--engine-url") + 1] = f"http://127.0.0.1:{_free_port()}"  # nobody there
    with _running(argv, tmp_path / "gateway.log") as gateway:
        # Up, but no engine answers: /health says 503 and the container counts as unhealthy.
        _wait_for_status(f"http://127.0.0.1:{port}/health", 503, gateway, tmp_path / "gateway.log")
        assert _healthcheck(dockerfiles["gateway"], port) != 0
        assert _stop(gateway, dockerfiles["gateway"], 30) < 10
