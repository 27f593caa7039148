"""Helpers of the load, overload and fault suites: process command lines, engine gauges, streams.

Every suite runs the deployed topology: ``lorax-engine serve`` and ``lorax-gateway serve`` as
separate processes on loopback (:class:`integration.conftest.Process`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def engine_command(cache_dir: Path, *extra: str) -> list[str]:
    """``lorax-engine serve --model-id demo`` on CPU with a port placeholder."""
    return [
        sys.executable,
        "-m",
        "lorax_engine.cli",
        "serve",
        "--model-id",
        "demo",
        "--device",
        "cpu",
        "--port",
        "{port}",
        "--cache-dir",
        str(cache_dir),
        *extra,
    ]


def gateway_command(engine_url: str, *extra: str) -> list[str]:
    """``lorax-gateway serve`` in front of one engine, probing its health every 0.25 s."""
    return [
        sys.executable,
        "-m",
        "lorax_gateway.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--engine-url",
        engine_url,
        "--backend-option",
        "health_interval_s=0.25",
        *extra,
    ]


def adapter_root(cache_dir: Path, root: Path, copies: int) -> list[str]:
    """A local adapter root with the demo adapters and ``copies`` more ids backed by copies.

    Returns every adapter id the root serves (``demo/pirate``, ``demo/shakespeare``,
    ``load/a00``...). The demo checkpoint is built in ``cache_dir``, where the engine finds it.
    """
    from lorax_engine.demo import DEMO_ADAPTERS, build_demo

    demo_adapters = build_demo(cache_dir) / "adapters" / "demo"
    ids: list[str] = []
    for name in DEMO_ADAPTERS:
        shutil.copytree(demo_adapters / name, root / "demo" / name)
        ids.append(f"demo/{name}")
    for i in range(copies):
        name = DEMO_ADAPTERS[i % len(DEMO_ADAPTERS)]
        shutil.copytree(demo_adapters / name, root / "load" / f"a{i:02d}")
        ids.append(f"load/a{i:02d}")
    return ids


def engine_gauges(engine_url: str) -> dict[str, float]:
    """The engine's unlabelled Prometheus samples, by name."""
    text = httpx.get(f"{engine_url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


def wait_engine_idle(engine_url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """Wait until the engine holds no request and no KV block; return its last gauges.

    Cancellations reach the engine asynchronously (the gateway closes its upstream stream, the
    engine frees the blocks in its next step), hence a bounded wait rather than one read.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        gauges = engine_gauges(engine_url)
        idle = (
            gauges["lorax_engine_kv_blocks_used"] == 0
            and gauges["lorax_engine_in_flight_requests"] == 0
            and gauges["lorax_engine_running_requests"] == 0
            and gauges["lorax_engine_queue_size"] == 0
        )
        if idle or time.monotonic() > deadline:
            return gauges
        time.sleep(0.1)


@dataclass(slots=True)
class StreamOutcome:
    """How one streamed request ended, as the client saw it."""

    status: int = 0
    tokens: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    final: dict[str, Any] | None = None
    #: ``error_type`` of an error body or final error event; ``transport`` for a broken stream.
    error_type: str | None = None
    sent_at: float = 0.0
    answered_at: float = 0.0

    @property
    def complete(self) -> bool:
        """Ended with its details (the whole output) and no error."""
        return self.error_type is None and self.final is not None and "details" in self.final


async def stream_generate(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], stop_after: int | None = None
) -> StreamOutcome:
    """POST ``/generate_stream``; read to the end, or hang up after ``stop_after`` tokens."""
    out = StreamOutcome(sent_at=time.monotonic())
    try:
        async with client.stream("POST", f"{url}/generate_stream", json=body) as resp:
            out.status = resp.status_code
            out.answered_at = time.monotonic()
            if resp.status_code != 200:
                await resp.aread()
                out.error_type = str(resp.json().get("error_type"))
                return out
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    out.error_type = str(event.get("error_type"))
                    return out
                out.tokens.append(event["token"])
                if event.get("details") is not None:
                    out.final = event
                    return out
                if stop_after is not None and len(out.tokens) >= stop_after:
                    return out  # leaving the block closes the connection mid-stream
    except httpx.HTTPError:
        out.error_type = "transport"
        return out
    out.error_type = "transport"  # the stream ended without a final event
    return out


def tally(outcomes: list[StreamOutcome]) -> dict[str, int]:
    """Requests by how they ended: ``complete`` or their error type."""
    counts = Counter("complete" if o.complete else str(o.error_type) for o in outcomes)
    return dict(sorted(counts.items()))
