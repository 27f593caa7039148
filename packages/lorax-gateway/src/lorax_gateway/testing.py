"""Helpers to run a gateway on loopback from tests and benchmarks (like ``litestar.testing``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncGenerator, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.response import Stream

from lorax_gateway.backends.base import EngineBackend
from lorax_gateway.routes.common import sse


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
            _stop(server, thread, timeout_s)
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{port}", app, backend)
    finally:
        _stop(server, thread, timeout_s)


def _stop(server: uvicorn.Server, thread: threading.Thread, timeout_s: float) -> None:
    # The server's event loop, with its connections, must be gone when the block exits: one left
    # running is torn down later, in whatever test runs then, as an unclosed-transport error.
    server.should_exit = True
    thread.join(timeout=timeout_s)
    if thread.is_alive():
        raise RuntimeError(f"gateway {thread.name} did not stop within {timeout_s} s")


def engine_app(backend: EngineBackend) -> Litestar:
    """An app speaking the engine wire protocol (``lorax-engine serve``'s routes) over ``backend``.

    With the synthetic backend this stands in for a real engine process in the gateway's own
    tests (kill, hang and restart cases) without loading a model.
    """

    @post("/engine/generate", status_code=200)
    async def generate(request: Request[Any, Any, Any]) -> Stream:
        body = await request.json()
        headers = {k: v for k, v in request.headers.items() if k in ("traceparent", "tracestate")}
        events = backend.generate(body, headers)

        async def relay() -> AsyncGenerator[bytes]:
            try:
                async for event in events:
                    yield sse(event)
            finally:
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    await aclose()

        return Stream(relay(), media_type="text/event-stream")

    @post("/tokenize", status_code=200)
    async def tokenize(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        body = await request.json()
        return await backend.tokenize(body["inputs"], bool(body.get("add_special_tokens", True)))

    @post("/engine/chat_template", status_code=200)
    async def chat_template(request: Request[Any, Any, Any]) -> dict[str, str]:
        body = await request.json()
        prompt = await backend.apply_chat_template(
            body["messages"], body.get("adapter_id"), body.get("tools")
        )
        return {"prompt": prompt}

    @get("/info")
    async def info() -> dict[str, Any]:
        return await backend.info()

    @get("/health")
    async def health() -> Response[dict[str, str]]:
        return Response({}, status_code=200 if await backend.health() else 503)

    @get("/metrics", media_type=MediaType.TEXT)
    async def metrics() -> str:
        return "".join(text for _, text in await backend.metrics_texts())

    return Litestar([generate, tokenize, chat_template, info, health, metrics], logging_config=None)


def main(argv: list[str] | None = None) -> None:
    """``python -m lorax_gateway.testing --port N [--token-delay-s S]``: a synthetic engine process."""
    import argparse

    from lorax_gateway.backends.synthetic import SyntheticBackend, SyntheticConfig

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-delay-s", type=float, default=0.0)
    parser.add_argument("--adapters", default="")
    parser.add_argument("--model-id", default="synthetic")
    parser.add_argument("--stamp-tokens", action="store_true", help="token text = emission time")
    parser.add_argument("--max-total-tokens", type=int, default=2048)
    args = parser.parse_args(argv)
    backend = SyntheticBackend(
        SyntheticConfig(
            model_id=args.model_id,
            token_delay_s=args.token_delay_s,
            adapters=tuple(a for a in args.adapters.split(",") if a),
            stamp_tokens=args.stamp_tokens,
            max_total_tokens=args.max_total_tokens,
        )
    )
    uvicorn.run(
        engine_app(backend), host="127.0.0.1", port=args.port, log_config=None, access_log=False
    )


if __name__ == "__main__":
    main()
