"""The asyncio facade over the engine core thread (docs/internals.md section 2)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from lorax_engine import __version__
from lorax_engine.config import EngineConfig
from lorax_engine.core.factory import LoadedEngine, load_engine
from lorax_engine.core.output import Event
from lorax_engine.core.request import Request
from lorax_engine.demo import DEMO_ADAPTERS
from lorax_engine.errors import (
    EngineError,
    GenerationError,
    OverloadedError,
    ValidationError,
    from_error_type,
)
from lorax_engine.metrics import EngineMetrics
from lorax_engine.params import SamplingParams, parse_parameters, parse_truncate
from lorax_engine.structured.response_format import parse_response_format

_NO_ADAPTERS = "adapters are not enabled on this engine (start it with --max-active-adapters > 0)"


def _error(exc: EngineError) -> Event:
    return {"type": "error", "error": str(exc), "error_type": exc.error_type}


def _unavailable(message: str) -> Event:
    # The gateway answers `unavailable` with 503: the engine is going away, not the request bad.
    return {"type": "error", "error": message, "error_type": "unavailable"}


_SHUTTING_DOWN = "the engine is shutting down"


class AsyncEngine:
    """Runs the engine core on its own thread; every method here is safe to call from asyncio."""

    def __init__(self, config: EngineConfig, loaded: LoadedEngine) -> None:
        self.config = config
        self.core = loaded.core
        self.tokenizer = loaded.tokenizer
        self.model_dir = loaded.model_dir
        self.adapter_manager = loaded.adapter_manager
        self.shards = loaded.shards  # worker processes of a tensor-parallel engine
        self._in_flight = 0
        self._ids = itertools.count()
        # Graceful shutdown: draining refuses new requests; closed also ends the running ones.
        self._draining = False
        self._closed = False
        self._live: dict[str, asyncio.Queue[Event]] = {}  # event queues of running requests
        self._idle: asyncio.Event | None = None  # set when the last request ends, while draining
        self.metrics = EngineMetrics(self.core, lambda: self._in_flight)
        self.core.start()

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncEngine:
        """Load the model (blocking: call before the event loop serves requests)."""
        return cls(config, load_engine(config))

    # ---- generation -----------------------------------------------------------------------
    async def generate(self, request: dict[str, Any]) -> AsyncIterator[Event]:
        """Stream the events of one request; closing the iterator early cancels it."""
        if self._draining:
            yield _unavailable(_SHUTTING_DOWN)
            return
        limits = self.config.limits
        if self._in_flight >= limits.max_concurrent_requests:
            yield _error(OverloadedError("Model is overloaded"))
            return
        self._in_flight += 1
        try:
            try:
                requests = await asyncio.to_thread(self._prepare, request)
            except EngineError as exc:
                yield _error(exc)
                return
            if self._closed:  # the drain ran out of time while this one was being tokenized
                yield _unavailable(_SHUTTING_DOWN)
                return
            # Close the inner generator explicitly: its `finally` aborts the request right away
            # instead of whenever the garbage collector finalizes it.
            inner = self._stream(requests[0]) if len(requests) == 1 else self._best_of(requests)
            try:
                async for event in inner:
                    yield event
            finally:
                await inner.aclose()
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._idle is not None:
                self._idle.set()

    def _prepare(self, body: dict[str, Any]) -> list[Request]:
        """Tokenize, apply limits and build the engine requests (one per best_of candidate)."""
        params: dict[str, Any] = dict(body.get("parameters") or {})
        inputs = body.get("inputs")
        if not isinstance(inputs, str):
            raise ValidationError("`inputs` must be a string")
        adapter_ref = self._adapter_ref(params, body.get("tenant"))
        limits = self.config.limits
        truncate = parse_truncate(params, limits)
        ids = self.tokenizer.encode(inputs)
        if truncate is not None:
            ids = ids[-truncate:]
        sp = parse_parameters(params, len(ids), limits)
        response_format = params.get("response_format")
        # The caller's id need not be unique (retries, tests); the core needs a unique key.
        request_id = f"{body.get('request_id') or 'req'}#{next(self._ids)}"
        now = time.monotonic()
        seeds = (
            [sp.seed] if sp.best_of == 1 else [random.getrandbits(63) for _ in range(sp.best_of)]
        )
        out: list[Request] = []
        for i, seed in enumerate(seeds):
            sub = _with_seed(sp, seed)
            rid = request_id if len(seeds) == 1 else f"{request_id}/{i}"
            constraint = self._make_constraint(response_format) if response_format else None
            req = Request(rid, list(ids), sub, arrival_time=now, constraint=constraint)
            req.adapter_ref = adapter_ref
            out.append(req)
        return out

    def _adapter_ref(self, params: dict[str, Any], tenant: Any) -> Any:
        """The request's AdapterRef, or None for the base model (``adapter_id`` null or "")."""
        if not (params.get("adapter_id") or params.get("merged_adapters")):
            return None
        if self.adapter_manager is None:
            raise GenerationError(_NO_ADAPTERS)
        from lorax_engine.adapters import AdapterError, AdapterRef

        try:
            return AdapterRef.from_parameters(
                params, tenant=tenant, default_source=self.config.adapter_source
            )
        except AdapterError as exc:
            raise from_error_type(exc.message, exc.error_type) from exc

    def _make_constraint(self, response_format: Any) -> Any:
        """The request's TokenConstraint from the engine's one factory (None for text)."""
        factory = self.core.constraints
        try:
            if factory is None:
                if parse_response_format(response_format) is None:
                    return None
                raise ValidationError(
                    "response_format is not enabled on this engine "
                    "(it was started with --disable-structured-output)"
                )
            return factory.make(response_format)
        except ValueError as exc:  # a format or schema the compiler rejects: the caller's error
            raise ValidationError(f"invalid response_format: {exc}") from exc

    async def _stream(self, request: Request) -> AsyncGenerator[Event, None]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the consumer's loop is gone: nobody is listening any more
                self.core.abort(request.request_id)

        self.core.submit(request, sink)
        self._live[request.request_id] = events
        done = False
        try:
            while True:
                event = await events.get()
                if event["type"] in ("end", "error"):
                    done = True
                yield event
                if done:
                    return
        finally:
            self._live.pop(request.request_id, None)
            if not done:
                self.core.abort(request.request_id)

    # ---- graceful shutdown ----------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests between their `generate` call and their last event."""
        return self._in_flight

    @property
    def draining(self) -> bool:
        """True once `begin_drain` was called: new requests are refused."""
        return self._draining

    def begin_drain(self) -> None:
        """Stop admission: every new `generate` gets an ``unavailable`` error event; running
        requests go on. Only sets a flag, so a signal handler may call it."""
        self._draining = True

    def close_streams(self) -> int:
        """End every running request now with an ``unavailable`` error event and cancel it in
        the core. Call on the event loop that consumes the streams. Returns how many."""
        self._closed = True
        live = list(self._live.items())
        for request_id, events in live:
            events.put_nowait(
                _unavailable(f"{_SHUTTING_DOWN}: the request did not finish before the deadline")
            )
            self.core.abort(request_id)
        return len(live)

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait up to ``timeout_s`` for the running ones to finish;
        those still running then end with an ``unavailable`` error. True if all finished."""
        self.begin_drain()
        if self._in_flight:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        if not self._in_flight:
            return True
        self.close_streams()
        return False

    async def _best_of(self, requests: list[Request]) -> AsyncGenerator[Event, None]:
        """Run the candidates together; the best (highest total logprob) is the main sequence."""
        streams = [self._collect(r) for r in requests]
        tasks = [asyncio.ensure_future(s) for s in streams]
        try:
            results = await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
        for events in results:
            if events and events[-1]["type"] == "error":
                yield events[-1]
                return

        def score(events: list[Event]) -> float:
            return sum(e["token"]["logprob"] for e in events if e["type"] == "token")

        ranked = sorted(results, key=score, reverse=True)
        best, others = ranked[0], ranked[1:]
        end = dict(best[-1])
        end["best_of_sequences"] = [_sequence_details(evs) for evs in others]
        for event in best[:-1]:
            yield event
        yield end

    async def _collect(self, request: Request) -> list[Event]:
        events: list[Event] = []
        stream = self._stream(request)
        try:
            async for event in stream:
                events.append(event)
        finally:
            await stream.aclose()
        return events

    # ---- the rest of the contract ---------------------------------------------------------
    async def tokenize(self, text: str, add_special_tokens: bool = True) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.tokenizer.tokenize, text, add_special_tokens)

    async def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        adapter_id: str | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render messages with the adapter's own template when it ships one, else the model's."""
        template: str | None = None
        if adapter_id:
            ref = self._adapter_ref({"adapter_id": adapter_id}, None)
            manager = self.adapter_manager
            assert manager is not None  # _adapter_ref raised otherwise
            try:
                template = await asyncio.to_thread(manager.loader.chat_template, ref)
            except Exception as exc:
                from lorax_engine.adapters import AdapterError

                if isinstance(exc, AdapterError):
                    raise from_error_type(exc.message, exc.error_type) from exc
                raise
        return await asyncio.to_thread(
            self.tokenizer.apply_chat_template, messages, tools, template
        )

    def info(self) -> dict[str, Any]:
        """Model facts and limits (``dtype``/``device`` per internals.md, plus LoRAX's names)."""
        cfg = self.config
        limits = cfg.limits
        dtype = str(cfg.torch_dtype).removeprefix("torch.")
        # Adapter ids this engine ships (listed by the gateway's /v1/models): the demo's own.
        shipped = (
            [f"demo/{name}" for name in DEMO_ADAPTERS]
            if cfg.model_id == "demo" and self.adapter_manager is not None
            else []
        )
        slots = self.core.runner.lora_slots
        return {
            "model_id": cfg.model_id,
            "dtype": dtype,
            "device": str(cfg.torch_device),
            "model_dtype": dtype,
            "model_device_type": cfg.torch_device.type,
            "adapters": shipped,
            "max_input_length": limits.max_input_length,
            "max_total_tokens": limits.max_total_tokens,
            "max_concurrent_requests": limits.max_concurrent_requests,
            "max_best_of": limits.max_best_of,
            "max_stop_sequences": limits.max_stop_sequences,
            "max_batch_prefill_tokens": cfg.max_batch_prefill_tokens,
            "max_batch_total_tokens": self.core.scheduler.blocks.num_blocks * cfg.block_size,
            "block_size": cfg.block_size,
            "adapters_enabled": self.adapter_manager is not None,
            # The slots allocated: --adapter-memory-fraction may have lowered the flag's count.
            "max_active_adapters": slots.num_slots if slots is not None else 0,
            "version": __version__,
        }

    async def health(self) -> bool:
        """True while the core thread is alive."""
        return self.core.alive

    def metrics_text(self) -> str:
        return self.metrics.text()

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.core.stop)
        if self.adapter_manager is not None:
            self.adapter_manager.shutdown()
        if self.shards is not None:
            await asyncio.to_thread(self.shards.stop)


def _with_seed(sp: SamplingParams, seed: int) -> SamplingParams:
    return replace(sp, seed=seed)


def _sequence_details(events: list[Event]) -> dict[str, Any]:
    end = events[-1]
    prefill = next((e["tokens"] for e in events if e["type"] == "prefill"), [])
    return {
        "generated_text": end["generated_text"],
        "finish_reason": end["finish_reason"],
        "generated_tokens": end["generated_tokens"],
        "seed": end["seed"],
        "prefill": prefill,
        "tokens": [e["token"] for e in events if e["type"] == "token"],
    }
