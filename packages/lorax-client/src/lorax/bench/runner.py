"""The open-loop driver: sends planned requests at their arrival times and times their streams.

Open loop means a request is sent at its scheduled time whether or not earlier ones have
answered, like independent users (a closed loop would slow down with the server and hide its
queueing). ``max_concurrency`` caps the requests in flight (a late request waits for a slot, and
the wait is recorded apart from its latencies); ``duration_s`` stops *sending* after that many
seconds (requests not sent by then, scheduled later or still waiting for a slot, are dropped);
every request is bounded by ``request_timeout_s``; so every run ends.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from lorax.bench.metrics import RequestResult
from lorax.bench.protocol import Endpoint, StreamTracker
from lorax.errors import json_object
from lorax.sse import SSEDecoder

__all__ = ["PlannedRequest", "RunOptions", "Runner"]


@dataclass(slots=True, frozen=True)
class PlannedRequest:
    """One request of a sweep point, ready to send (``adapter_id`` None = the base model)."""

    index: int
    at_s: float
    prompt: str
    adapter_id: str | None
    input_len: int
    output_len: int


@dataclass(slots=True)
class RunOptions:
    """Bounds of a run (see module docstring)."""

    endpoint: Endpoint = field(default_factory=Endpoint)
    max_concurrency: int | None = None
    duration_s: float | None = None
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency <= 0:
            raise ValueError("max_concurrency must be > 0")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration_s must be > 0")
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be > 0")


class Runner:
    """Runs planned requests against one server through ``http`` (whose ``base_url`` is the
    server's; give it a connection limit of at least ``max_concurrency``, or none)."""

    def __init__(self, http: httpx.AsyncClient, options: RunOptions) -> None:
        self._http = http
        self._options = options

    async def run(
        self,
        planned: list[PlannedRequest],
        on_done: Callable[[RequestResult], None] | None = None,
    ) -> list[RequestResult]:
        """Send every planned request at its time (until ``duration_s``); return the results of
        those sent, in scheduled order, once all have ended. ``on_done`` is called as each sent
        one ends."""
        options = self._options
        slots = asyncio.Semaphore(options.max_concurrency) if options.max_concurrency else None
        start = time.perf_counter()
        results: list[RequestResult] = []
        async with asyncio.TaskGroup() as group:
            for request in sorted(planned, key=lambda p: p.at_s):
                if options.duration_s is not None and request.at_s >= options.duration_s:
                    break
                delay = start + request.at_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if options.duration_s is not None and (
                    time.perf_counter() - start >= options.duration_s
                ):
                    break
                result = RequestResult(
                    index=request.index,
                    adapter_id=request.adapter_id,
                    input_len=request.input_len,
                    output_len=request.output_len,
                    scheduled_s=request.at_s,
                )
                results.append(result)
                group.create_task(self._one(request, result, start, slots, on_done))
        return [r for r in results if not math.isnan(r.sent_s)]

    async def _one(
        self,
        request: PlannedRequest,
        result: RequestResult,
        start: float,
        slots: asyncio.Semaphore | None,
        on_done: Callable[[RequestResult], None] | None,
    ) -> None:
        ready = time.perf_counter()
        if slots is not None:
            await slots.acquire()
        try:
            sent = time.perf_counter()
            duration = self._options.duration_s
            if duration is not None and sent - start >= duration:
                return  # waited for a slot past the end of sending: never sent
            result.client_wait_s = sent - ready
            result.sent_s = sent - start
            tracker = self._options.endpoint.tracker()
            try:
                async with asyncio.timeout(self._options.request_timeout_s):
                    await self._stream(request, result, tracker, sent)
            except (TimeoutError, httpx.TimeoutException) as exc:
                result.error_type = "timeout"
                result.error = f"no complete answer within the timeout ({type(exc).__name__})"
            except httpx.HTTPError as exc:
                result.error_type = "connection"
                result.error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                # Anything else one odd response provokes is recorded against that request
                # rather than ending an hour-long sweep (and its results) for all of them.
                result.error_type = "client_error"
                result.error = f"{type(exc).__name__}: {exc}"
            ended = time.perf_counter()
            if result.error_type is None:
                if tracker.error is not None:
                    result.error_type, result.error = tracker.error
                elif not tracker.finished:
                    result.error_type = "incomplete"
                    result.error = "the stream ended before its final event"
                else:
                    result.e2e_s = ended - sent
            result.output_tokens = tracker.output_tokens
            result.prompt_tokens = tracker.prompt_tokens
        finally:
            if slots is not None:
                slots.release()
        if on_done is not None:
            on_done(result)

    async def _stream(
        self, request: PlannedRequest, result: RequestResult, tracker: StreamTracker, sent: float
    ) -> None:
        endpoint = self._options.endpoint
        body = endpoint.body(request.prompt, request.adapter_id, request.output_len)
        async with self._http.stream(
            "POST", endpoint.path, json=body, headers={"accept": "text/event-stream"}
        ) as response:
            if response.status_code != 200:
                await response.aread()
                result.error_type, result.error = _status_error(response)
                return
            decoder = SSEDecoder()
            async for chunk in response.aiter_bytes():
                for event in decoder.feed(chunk):
                    _token_event(result, tracker.feed(event.data), sent)
                    if tracker.error is not None:
                        return
            for event in decoder.close():
                _token_event(result, tracker.feed(event.data), sent)


def _token_event(result: RequestResult, tokens: int, sent: float) -> None:
    """Record the arrival of an event that delivered ``tokens`` output tokens (0 or 1)."""
    if not tokens:
        return
    elapsed = time.perf_counter() - sent
    if result.ttft_s is None:
        result.ttft_s = elapsed
    result.token_times_s.extend([result.sent_s + elapsed] * tokens)


def _status_error(response: httpx.Response) -> tuple[str, str]:
    """``(error_type, message)`` of an error status: the body's ``error_type`` (LoRAX) or
    ``error.type`` (OpenAI) when it has one, else ``http_<status>``."""
    kind = f"http_{response.status_code}"
    message = response.text[:300]
    try:
        fields = json_object(response.json())
    except ValueError:
        fields = None
    if fields is not None:
        error: object = fields.get("error")
        nested = json_object(error)
        if nested is not None:
            kind = str(nested.get("type") or kind)
            message = str(nested.get("message") or message)
        else:
            kind = str(fields.get("error_type") or kind)
            message = str(error if error is not None else message)
    return kind, message
