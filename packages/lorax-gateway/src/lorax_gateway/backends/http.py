"""The ``http`` backend: one or more ``lorax-engine serve`` processes.

* Health: every ``health_interval_s`` each engine's ``GET /health`` is probed; an engine that
  fails is taken out of rotation and its in-flight streams are closed at once (they end with an
  ``unavailable`` error event), and one that answers again is put back, so restarts are picked up
  without restarting the gateway. A probe that times out while the engine's streams kept
  receiving bytes is ignored (a busy engine is not a dead one), so a hung engine is dropped within
  ``health_interval_s + health_timeout_s`` (0.75 s by default). A killed engine also closes its
  sockets, which ends its streams immediately, before the next probe.
* Routing: rendezvous (highest-random-weight) hashing of the adapter id over the healthy engines,
  so an adapter keeps landing where it is already resident; when that engine has
  ``affinity_slack`` more requests in flight than the least loaded one, or for the base model,
  the least loaded healthy engine is used.
* Failover: an engine that cannot be reached before the first event is marked down and the next
  one is tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import msgspec

from lorax_gateway.backends.base import BackendUnavailableError, EngineEvent

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


@dataclass(slots=True)
class Engine:
    """One engine and what the gateway knows about it."""

    url: str
    healthy: bool = False
    in_flight: int = 0
    open_responses: set[httpx.Response] = field(default_factory=set[httpx.Response])
    #: Monotonic time of the last bytes any stream received from this engine.
    last_activity: float = 0.0
    failed_probes: int = 0


def rendezvous_order(key: str, urls: Sequence[str]) -> list[str]:
    """``urls`` ordered by rendezvous weight for ``key`` (stable for a fixed set of URLs)."""

    def weight(url: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{key}\0{url}".encode(), digest_size=8).digest())

    return sorted(urls, key=weight, reverse=True)


_decode_event = msgspec.json.Decoder(dict[str, Any]).decode


async def _sse_events(response: httpx.Response, engine: Engine) -> AsyncIterator[EngineEvent]:
    """The ``data:`` payloads of an SSE body, parsed from raw bytes.

    This is the gateway's per-token hot path with remote engines: splitting bytes and decoding
    with msgspec costs a fraction of text line iteration plus ``json.loads``.
    """
    buffer = b""
    async for chunk in response.aiter_bytes():
        engine.last_activity = time.monotonic()
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        while (end := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[:end], buffer[end + 2 :]
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    yield _decode_event(line[5:])


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
        refused = False
        try:
            r = await self.client.get(f"{engine.url}/health", timeout=self.config.health_timeout_s)
            ok = r.status_code == 200
        except httpx.ConnectError:
            ok, refused = False, True
        except httpx.HTTPError:
            ok = False
        engine.failed_probes = 0 if ok else engine.failed_probes + 1
        if not ok and not refused:
            # A slow probe is not a dead engine while its streams are still receiving tokens: an
            # engine busy enough to miss the probe's deadline keeps its streams and its place.
            # Only bytes that arrived while this probe waited count, so a hung engine with
            # streams is still dropped within interval + timeout. An idle engine needs two missed
            # probes in a row (one slow answer is not worth refusing requests for).
            busy = time.monotonic() - engine.last_activity < self.config.health_timeout_s
            if (engine.open_responses and busy) or (
                not engine.open_responses and engine.failed_probes < 2
            ):
                return
        if ok != engine.healthy:
            logger.warning("engine %s is %s", engine.url, "up" if ok else "DOWN")
        engine.healthy = ok
        if not ok:
            await self._drop_streams(engine)

    async def _drop_streams(self, engine: Engine) -> None:
        # Closing the response makes the reader of that stream fail right away, which turns into
        # an `unavailable` error event for the client (an engine that hangs never sends a FIN).
        for response in list(engine.open_responses):
            with contextlib.suppress(Exception):
                await response.aclose()
        engine.open_responses.clear()

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
        """Healthy engines in the order to try them for ``adapter_id``."""
        healthy = [e for e in self.engines.values() if e.healthy]
        if not healthy:
            return []
        by_load = sorted(healthy, key=lambda e: e.in_flight)
        if not adapter_id:
            return by_load
        ordered = [self.engines[u] for u in rendezvous_order(adapter_id, [e.url for e in healthy])]
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
                        engine.healthy = False
                    continue
                engine.open_responses.add(response)
                try:
                    async for event in self._events(response, engine):
                        yield event
                    return
                finally:
                    engine.open_responses.discard(response)
                    await response.aclose()
            finally:
                engine.in_flight -= 1
        raise BackendUnavailableError(
            "no engine is available" if tried == 0 else f"all {tried} engines failed"
        )

    async def _events(self, response: httpx.Response, engine: Engine) -> AsyncIterator[EngineEvent]:
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
            async for event in _sse_events(response, engine):
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
                    engine.healthy = False
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
        """``GET /info`` of a healthy engine (remembered for when none is up)."""
        try:
            r = await self._call("GET", "/info")
            r.raise_for_status()
            self._info = cast(dict[str, Any], r.json())
        except (BackendUnavailableError, httpx.HTTPError):
            if self._info is None:
                raise
        return dict(self._info)

    async def health(self) -> bool:
        """True while at least one engine passes its health probe."""
        return any(e.healthy for e in self.engines.values())

    async def metrics_texts(self) -> list[tuple[str, str]]:
        """Each healthy engine's ``/metrics``."""

        async def scrape(engine: Engine) -> tuple[str, str] | None:
            try:
                r = await self.client.get(f"{engine.url}/metrics", timeout=2.0)
                return (engine.url, r.text) if r.status_code == 200 else None
            except httpx.HTTPError:
                return None

        results = await asyncio.gather(*(scrape(e) for e in self.engines.values() if e.healthy))
        return [r for r in results if r is not None]
