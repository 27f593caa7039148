"""The ``http`` backend: one or more ``lorax-engine serve`` processes.

* Health: every ``health_interval_s`` each engine's ``GET /health`` is probed, and the answer
  sets its state (``http_engine``): 200 is ``UP``; any other answer is ``DRAINING`` (alive, but
  refusing new work, as ``lorax-engine serve`` after SIGTERM): no new requests go there and its
  running streams continue to their end. No answer is ``DOWN``: a refused connection at once, a
  timeout only when its streams are silent too (a busy engine is not a dead one; an idle one needs
  two missed probes), so a hung engine is dropped within ``health_interval_s + health_timeout_s``
  (0.75 s by default); its streams that wait for bytes are then closed (they end with an
  ``unavailable`` error event). A killed engine's sockets are closed by the kernel, which ends its
  streams at once, after the bytes it had sent. An engine that answers 200 again is ``UP`` again,
  so restarts are picked up without restarting the gateway.
* Routing: rendezvous (highest-random-weight) hashing of the adapter id over the ``UP`` engines,
  so an adapter keeps landing where it is already resident; when that engine has
  ``affinity_slack`` more requests in flight than the least loaded one, or for the base model,
  the least loaded ``UP`` engine is used.
* Failover: before the first event reaches the caller, an engine that refuses the connection
  (``DOWN``) or answers ``unavailable`` (a 503, or an ``unavailable`` first event: ``DRAINING``)
  is taken out of rotation at once and the next one is tried; with none left the caller gets
  :class:`BackendUnavailableError` (503 ``unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx

from lorax_gateway.backends.base import BackendUnavailableError, EngineEvent
from lorax_gateway.backends.http_engine import Engine, EngineState, EngineStream, sse_events

logger = logging.getLogger("lorax_gateway.backends.http")


@dataclass(slots=True)
class HttpBackendConfig:
    """Where the engines are and how to watch them."""

    engine_urls: list[str]
    health_interval_s: float = 0.25
    health_timeout_s: float = 0.5
    connect_timeout_s: float = 5.0
    affinity_slack: int = 8

    def __post_init__(self) -> None:
        if not self.engine_urls:
            raise ValueError("the http backend needs at least one engine URL")
        self.engine_urls = [u.rstrip("/") for u in self.engine_urls]
        if not all(u.startswith(("http://", "https://")) for u in self.engine_urls):
            raise ValueError("engine URLs must be http(s) URLs")
        if self.health_interval_s <= 0 or self.health_timeout_s <= 0:
            raise ValueError("health_interval_s and health_timeout_s must be > 0")


def rendezvous_order(key: str, urls: Sequence[str]) -> list[str]:
    """``urls`` ordered by rendezvous weight for ``key`` (stable for a fixed set of URLs)."""

    def weight(url: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{key}\0{url}".encode(), digest_size=8).digest())

    return sorted(urls, key=weight, reverse=True)


class HttpBackend:
    """Engines over HTTP (see module docstring)."""

    name = "http"
    renders_chat = False

    def __init__(self, config: HttpBackendConfig) -> None:
        self.config = config
        self.engines = {url: Engine(url) for url in config.engine_urls}
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._info: dict[str, Any] | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> HttpBackend:
        """Options: ``engine_urls`` (list or comma-separated) and :class:`HttpBackendConfig`."""
        opts = dict(options)
        urls = opts.pop("engine_urls", opts.pop("engine_url", []))
        if isinstance(urls, str):
            urls = [u for u in urls.split(",") if u]
        return cls(HttpBackendConfig(engine_urls=list(cast(list[str], urls)), **opts))

    @property
    def client(self) -> httpx.AsyncClient:
        """The shared connection pool (created in :meth:`start`)."""
        if self._client is None:
            raise RuntimeError("HttpBackend.start() was not called")
        return self._client

    async def start(self) -> None:
        """Open the pool, probe every engine once, start the health loop."""
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=self.config.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        await self._probe_all()
        self._health_task = asyncio.create_task(self._health_loop(), name="engine-health")

    async def close(self) -> None:
        """Stop probing and close every connection."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self._client is not None:
            await self._client.aclose()

    # ---- health ---------------------------------------------------------------------------
    async def _probe(self, engine: Engine) -> None:
        try:
            r = await self.client.get(f"{engine.url}/health", timeout=self.config.health_timeout_s)
        except httpx.ConnectError:
            refused = True
        except httpx.HTTPError:
            refused = False
        else:
            # Any answer proves the process alive: a 503 is an engine draining its streams, and
            # those must not be cut; it only stops getting new requests.
            engine.failed_probes = 0
            self._set_state(
                engine, EngineState.UP if r.status_code == 200 else EngineState.DRAINING
            )
            return
        engine.failed_probes += 1
        if not refused:
            # A slow probe is not a dead engine while its streams are still receiving bytes: an
            # engine busy enough to miss the probe's deadline keeps its streams and its place.
            # Only bytes that arrived while this probe waited count, so a hung engine with
            # streams is still dropped within interval + timeout. An idle engine needs two missed
            # probes in a row (one slow answer is not worth refusing requests for).
            now = time.monotonic()
            if engine.streaming_recently(now, self.config.health_timeout_s) or (
                not engine.streams and engine.failed_probes < 2
            ):
                return
        self._set_state(engine, EngineState.DOWN)
        await self._close_stalled(engine)

    def _set_state(self, engine: Engine, state: EngineState) -> None:
        if state is not engine.state:
            log = logger.info if state is EngineState.UP else logger.warning
            log("engine %s is %s", engine.url, state.value)
        engine.state = state

    async def _close_stalled(self, engine: Engine) -> None:
        # Closing the response makes the reader of that stream fail right away, which turns into
        # an `unavailable` error event for the client (an engine that hangs never sends a FIN).
        # A reader that is not waiting (its client reads slowly) keeps its stream: the bytes
        # already sent complete it, or it stalls and the next failed probe closes it.
        now = time.monotonic()
        for stream in [s for s in engine.streams if s.stalled(now, self.config.health_timeout_s)]:
            engine.streams.discard(stream)
            with contextlib.suppress(Exception):
                await stream.response.aclose()

    async def _probe_all(self) -> None:
        await asyncio.gather(*(self._probe(e) for e in self.engines.values()))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            try:
                await self._probe_all()
            except Exception:
                logger.exception("engine health probe failed")

    # ---- routing --------------------------------------------------------------------------
    def candidates(self, adapter_id: str | None) -> list[Engine]:
        """``UP`` engines in the order to try them for ``adapter_id``."""
        up = [e for e in self.engines.values() if e.routable]
        if not up:
            return []
        by_load = sorted(up, key=lambda e: e.in_flight)
        if not adapter_id:
            return by_load
        ordered = [self.engines[u] for u in rendezvous_order(adapter_id, [e.url for e in up])]
        preferred = ordered[0]
        if preferred.in_flight - by_load[0].in_flight > self.config.affinity_slack:
            return by_load
        return ordered

    # ---- generation -----------------------------------------------------------------------
    def generate(
        self, request: dict[str, Any], trace_headers: Mapping[str, str]
    ) -> AsyncIterator[EngineEvent]:
        """Stream the request from the best engine, failing over before the first event."""
        return self._generate(request, dict(trace_headers))

    async def _generate(
        self, request: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[EngineEvent]:
        params: dict[str, Any] = request.get("parameters") or {}
        tried = 0
        reason = "no engine is up"
        for engine in self.candidates(params.get("adapter_id")):
            tried += 1
            engine.in_flight += 1
            try:
                try:
                    response = await self.client.send(
                        self.client.build_request(
                            "POST", f"{engine.url}/engine/generate", json=request, headers=headers
                        ),
                        stream=True,
                    )
                except httpx.TransportError as exc:
                    # Failover: the next candidate gets the request. Only a refused connection
                    # proves the engine is gone; a timeout under load is left to the probes.
                    if isinstance(exc, httpx.ConnectError):
                        self._set_state(engine, EngineState.DOWN)
                    reason = f"connection failed: {exc.__class__.__name__}"
                    continue
                stream = EngineStream(response)
                engine.streams.add(stream)
                events = self._events(stream, engine)
                try:
                    first = await anext(events)
                    if first.get("type") == "error" and first.get("error_type") == "unavailable":
                        # Nothing reached the caller yet, so another engine can take it. This one
                        # is draining (a 503, or the drain began as the request arrived): no new
                        # requests until a probe finds it up again; its own streams go on.
                        self._set_state(engine, EngineState.DRAINING)
                        reason = str(first.get("error") or "engine unavailable")
                        continue
                    yield first
                    async for event in events:
                        yield event
                    return
                finally:
                    await events.aclose()
                    engine.streams.discard(stream)
                    await response.aclose()
            finally:
                engine.in_flight -= 1
        raise BackendUnavailableError(
            "no engine is available"
            if tried == 0
            else f"no engine took the request ({tried} tried, last: {reason})"
        )

    async def _events(
        self, stream: EngineStream, engine: Engine
    ) -> AsyncGenerator[EngineEvent, None]:
        response = stream.response
        if response.status_code != 200:
            raw = await response.aread()
            try:
                body = json.loads(raw)
                yield {
                    "type": "error",
                    "error": str(body.get("error", raw.decode(errors="replace"))),
                    "error_type": str(body.get("error_type", "generation")),
                }
            except ValueError:
                yield {
                    "type": "error",
                    "error": f"engine answered {response.status_code}",
                    "error_type": "unavailable" if response.status_code >= 500 else "generation",
                }
            return
        try:
            async for event in sse_events(stream, engine):
                yield event
                if event.get("type") in ("end", "error"):
                    return
        except (httpx.HTTPError, RuntimeError) as exc:
            # RuntimeError: the health loop closed this response under us (engine went down).
            yield {
                "type": "error",
                "error": f"engine connection lost: {exc.__class__.__name__}",
                "error_type": "unavailable",
            }
            return
        yield {"type": "error", "error": "engine closed the stream", "error_type": "unavailable"}

    # ---- the rest -------------------------------------------------------------------------
    async def _call(
        self, method: str, path: str, adapter_id: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        for engine in self.candidates(adapter_id):
            try:
                return await self.client.request(method, f"{engine.url}{path}", **kwargs)
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.ConnectError):
                    self._set_state(engine, EngineState.DOWN)
        raise BackendUnavailableError("no engine is available")

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[dict[str, Any]]:
        """``POST /tokenize`` on an engine."""
        r = await self._call(
            "POST", "/tokenize", json={"inputs": text, "add_special_tokens": add_special_tokens}
        )
        r.raise_for_status()
        return cast(list[dict[str, Any]], r.json())

    async def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        adapter_id: str | None,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> str:
        """``POST /engine/chat_template`` on the engine the adapter is routed to."""
        body = {
            "messages": list(messages),
            "adapter_id": adapter_id,
            "tools": list(tools) if tools else None,
        }
        r = await self._call("POST", "/engine/chat_template", adapter_id, json=body)
        if r.status_code != 200:
            from lorax_gateway.errors import GatewayError

            detail: Any = (
                r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            )
            raise GatewayError(
                str(detail.get("error_type", "validation")),
                str(detail.get("error", "chat template failed")),
            )
        return str(r.json()["prompt"])

    async def info(self) -> dict[str, Any]:
        """``GET /info`` of an ``UP`` engine (remembered for when none is up)."""
        try:
            r = await self._call("GET", "/info")
            r.raise_for_status()
            self._info = cast(dict[str, Any], r.json())
        except (BackendUnavailableError, httpx.HTTPError):
            if self._info is None:
                raise
        return dict(self._info)

    async def health(self) -> bool:
        """True while at least one engine is ``UP`` (draining ones take no new requests)."""
        return any(e.routable for e in self.engines.values())

    async def metrics_texts(self) -> list[tuple[str, str]]:
        """Each answering engine's ``/metrics`` (a draining one still reports its batch)."""

        async def scrape(engine: Engine) -> tuple[str, str] | None:
            try:
                r = await self.client.get(f"{engine.url}/metrics", timeout=2.0)
                return (engine.url, r.text) if r.status_code == 200 else None
            except httpx.HTTPError:
                return None

        results = await asyncio.gather(
            *(scrape(e) for e in self.engines.values() if e.state is not EngineState.DOWN)
        )
        return [r for r in results if r is not None]
