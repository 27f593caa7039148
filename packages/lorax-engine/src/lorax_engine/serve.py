"""``lorax-engine serve``: the engine wire protocol over HTTP (docs/internals.md section 2).

Litestar and uvicorn are imported here only, so the rest of the engine imports without them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException, ServiceUnavailableException
from litestar.response import Stream

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.errors import EngineError, ValidationError
from lorax_engine.tracing import EngineTracing, TracingConfig

log = logging.getLogger(__name__)


def _error(status: int, message: str, error_type: str) -> Response[dict[str, str]]:
    return Response({"error": message, "error_type": error_type}, status_code=status)


async def _json_body(request: Request[Any, Any, Any]) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"malformed JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object")
    return body


def create_app(engine: AsyncEngine, tracing: EngineTracing | None = None) -> Litestar:
    """The HTTP app around one AsyncEngine (the app does not own the engine's lifetime).

    With ``tracing``, each ``/engine/generate`` call gets an ``engine.request`` span in the
    caller's trace; the app shuts the tracing down (flushing spans) with itself.
    """
    tracer = tracing if tracing is not None else EngineTracing(TracingConfig())

    @post("/engine/generate", status_code=200)
    async def generate(request: Request[Any, Any, Any]) -> Stream:
        """Stream the request's events as SSE ``data:`` lines; a disconnect cancels the request."""
        if engine.draining:  # a plain 503 before any stream, so a router can go elsewhere
            raise ServiceUnavailableException("the engine is shutting down")
        body = await _json_body(request)
        span = tracer.request_span(request.headers, body)

        async def events() -> AsyncIterator[bytes]:
            stream = engine.generate(body)
            closed = False
            try:
                async for event in stream:
                    if event["type"] in ("end", "error"):
                        tracer.record_event(span, event)
                        closed = True
                    yield f"data: {json.dumps(event)}\n\n".encode()
            finally:
                if not closed:  # the client went away first: the request was cancelled
                    span.set_attribute("lorax.cancelled", True)
                span.end()
                await stream.aclose()  # type: ignore[attr-defined]

        return Stream(
            events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    @post("/tokenize", status_code=200)
    async def tokenize(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        body = await _json_body(request)
        inputs = body.get("inputs")
        if not isinstance(inputs, str):
            raise ValidationError("`inputs` must be a string")
        return await engine.tokenize(inputs, bool(body.get("add_special_tokens", True)))

    @post("/engine/chat_template", status_code=200)
    async def chat_template(request: Request[Any, Any, Any]) -> dict[str, str]:
        body = await _json_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise ValidationError("`messages` must be a list")
        prompt = await engine.apply_chat_template(
            messages, body.get("adapter_id"), body.get("tools")
        )
        return {"prompt": prompt}

    @get("/info")
    async def info() -> dict[str, Any]:
        return engine.info()

    @get("/health")
    async def health() -> Response[Any]:
        if engine.draining:  # alive, but routers should stop sending requests here
            return _error(503, "the engine is shutting down", "healthcheck")
        if await engine.health():
            return Response(None, status_code=200)
        return _error(503, "engine is not running", "healthcheck")

    @get("/metrics", media_type="text/plain; version=0.0.4")
    async def metrics() -> str:
        return engine.metrics_text()

    def on_engine_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
        if isinstance(exc, EngineError):
            status = {"validation": 422, "overloaded": 429}.get(exc.error_type, 424)
            return _error(status, str(exc), exc.error_type)
        if isinstance(exc, HTTPException):
            kind = "validation" if exc.status_code < 500 else "generation"
            return _error(
                exc.status_code, exc.detail, "unavailable" if exc.status_code == 503 else kind
            )
        return _error(500, f"internal error: {exc}", "generation")

    return Litestar(
        route_handlers=[generate, tokenize, chat_template, info, health, metrics],
        exception_handlers={Exception: on_engine_error},
        on_shutdown=[tracer.shutdown],
    )


class GracefulServer(uvicorn.Server):
    """uvicorn, with a drain before the shutdown.

    The first SIGTERM/SIGINT stops admission (new requests get 503 ``unavailable``, ``/health``
    503) and lets the running requests finish for up to ``shutdown_timeout_s``; those still
    running then end with an ``unavailable`` error event, and uvicorn shuts down as usual
    (connections closed, the engine stopped). A second signal skips the rest of the wait.
    """

    def __init__(
        self, config: uvicorn.Config, engine: AsyncEngine, shutdown_timeout_s: float
    ) -> None:
        super().__init__(config)
        self.engine = engine
        self.shutdown_timeout_s = shutdown_timeout_s
        self._drain: asyncio.Task[bool] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.engine.draining or self.should_exit:
            self.engine.close_streams()  # the second signal: stop waiting
            super().handle_exit(sig, frame)
            return
        # Signal handler context: only set a flag; the drain starts on the next tick.
        self.engine.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        if self.engine.draining and self._drain is None:
            log.info(
                "draining: %d request(s) running, waiting up to %.1f s",
                self.engine.in_flight,
                self.shutdown_timeout_s,
            )
            self._drain = asyncio.create_task(self.engine.drain(self.shutdown_timeout_s))
        if self._drain is not None and self._drain.done():
            if not self._drain.result():
                log.warning("shutdown timeout: the requests still running were ended")
            self.should_exit = True
        return await super().on_tick(counter)


def run_server(
    engine: AsyncEngine,
    host: str,
    port: int,
    shutdown_timeout_s: float = 30.0,
    tracing: TracingConfig | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, drain for up to ``shutdown_timeout_s``, then stop the engine.

    ``tracing``: OTLP span export (off when None).
    """
    app = create_app(engine, EngineTracing(tracing or TracingConfig()))
    app.on_shutdown.append(engine.shutdown)
    # The drain already waited for the streams; what is left is closing connections.
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5
    )
    GracefulServer(config, engine, shutdown_timeout_s).run()
