"""Graceful shutdown: on SIGTERM stop admitting, let in-flight requests finish, then exit.

Uvicorn on its own closes the listening socket at the first SIGTERM, so a request that arrives
during the shutdown sees a refused connection, and a long stream is cut after its fixed grace.
Here the first SIGTERM (or Ctrl-C) only starts a *drain*: the socket stays open, every new request
is answered 503 ``unavailable`` (``/health`` answers 503 ``healthcheck``, so load balancers take
the gateway out), ``/metrics`` keeps serving, and the server exits as soon as no request is in
flight or ``shutdown_timeout_s`` has passed. A second signal ends the drain early (what still runs
is cancelled after a 2 s grace).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass, field
from types import FrameType

import uvicorn
from litestar.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("lorax_gateway.draining")

#: Paths still served during a drain (scrapes should see the drain happen).
_SERVED_WHILE_DRAINING = frozenset({"/metrics"})
#: After the drain (or a second signal), seconds uvicorn waits for connections before cancelling.
_CLOSE_GRACE_S = 2


@dataclass(slots=True)
class DrainState:
    """Requests in flight and whether the gateway is draining; shared by middleware and server."""

    in_flight: int = 0
    draining: bool = False
    #: ``time.monotonic()`` at which a drain gives up on requests still running.
    deadline: float = field(default=float("inf"))

    def start(self, timeout_s: float) -> None:
        """Begin a drain that lasts at most ``timeout_s`` seconds."""
        self.draining = True
        self.deadline = time.monotonic() + timeout_s

    def done(self) -> bool:
        """Whether a started drain is over (nothing in flight, or out of time)."""
        return self.draining and (self.in_flight == 0 or time.monotonic() >= self.deadline)


class DrainMiddleware:
    """ASGI middleware: counts HTTP requests in flight and refuses new ones while draining."""

    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.state.draining and scope["path"] not in _SERVED_WHILE_DRAINING:
            await _refuse(scope["path"], send)
            return
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


async def _refuse(path: str, send: Send) -> None:
    error_type = "healthcheck" if path == "/health" else "unavailable"
    body = json.dumps({"error": "server is shutting down", "error_type": error_type}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT starts a drain (see the module docstring)."""

    def __init__(
        self, config: uvicorn.Config, state: DrainState, shutdown_timeout_s: float
    ) -> None:
        if shutdown_timeout_s < 0:
            raise ValueError("shutdown_timeout_s must be >= 0")
        # Uvicorn's own wait for connections comes after the drain (or a second signal), so it
        # only has to close what is left; None would wait for every stream without bound.
        config.timeout_graceful_shutdown = _CLOSE_GRACE_S
        super().__init__(config)
        self.drain = state
        self.shutdown_timeout_s = shutdown_timeout_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain. A second one: uvicorn's shutdown, which cancels what still runs."""
        if self.drain.draining or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # re-raised by uvicorn on exit, like its own handler
        self.drain.start(self.shutdown_timeout_s)
        logger.info(
            "draining: refusing new requests, waiting up to %.0f s for %d in flight",
            self.shutdown_timeout_s,
            self.drain.in_flight,
        )

    async def on_tick(self, counter: int) -> bool:
        """Uvicorn polls this every 0.1 s; the drain ends the main loop when it is done."""
        if await super().on_tick(counter):
            return True
        if not self.drain.done():
            return False
        if self.drain.in_flight:
            logger.warning(
                "shutdown timeout reached: cancelling %d request(s) in flight", self.drain.in_flight
            )
        return True
