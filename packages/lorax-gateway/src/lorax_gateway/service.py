"""The generation path shared by every route: admission, engine call, accounting.

A route validates its body, then calls :meth:`GenerationService.prepare` (adapter visibility,
response_format, admission) and :meth:`GenerationService.open`, which starts the engine request and
waits for its first event, so a request the engine refuses becomes a plain HTTP error rather than
a stream that fails. The returned :class:`EngineStream` yields the engine's events and, however it
ends (completion, error, client disconnect), releases admission, ends the spans and records metrics
and tenant usage exactly once.
"""

from __future__ import annotations

import importlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from lorax_gateway.backends.base import BackendUnavailableError, EngineBackend, EngineEvent
from lorax_gateway.errors import GatewayError, error_event_to_exception
from lorax_gateway.limits import TenantLimiter
from lorax_gateway.metrics import GatewayMetrics
from lorax_gateway.settings import AdmissionConfig
from lorax_gateway.tenants import Tenant, TenantRegistry
from lorax_gateway.tracing import GatewayTracing

logger = logging.getLogger("lorax_gateway.access")


@dataclass(slots=True)
class RequestContext:
    """Who is asking and how to trace it; built by the route from the request scope."""

    request_id: str
    route: str
    tenant: Tenant | None
    headers: Mapping[str, str]
    started: float = field(default_factory=time.monotonic)

    def engine_request_id(self, choice: int | None = None) -> str:
        """A unique id for one engine request of this call, prefixed by the public request id.

        Callers may reuse an ``x-request-id``; the engine keys cancellation on its request id, so
        two concurrent calls must never share one.
        """
        suffix = secrets.token_hex(4)
        return (
            f"{self.request_id}.{suffix}"
            if choice is None
            else f"{self.request_id}.{choice}.{suffix}"
        )


@dataclass(slots=True)
class GenerationResult:
    """Every event of one finished request, for the non-streaming routes."""

    prefill: list[dict[str, Any]]
    tokens: list[dict[str, Any]]
    end: EngineEvent


def _load_response_format_validator() -> Callable[[Any], None] | None:
    # structured_output.py is owned by the structured-output work; until it is importable,
    # response_format shape is still checked by the pydantic model and the engine.
    try:
        module = importlib.import_module("lorax_gateway.structured_output")
    except ImportError:
        return None
    return cast(Callable[[Any], None] | None, getattr(module, "validate_response_format", None))


class GenerationService:
    """Admission and accounting around the backend; one per app."""

    def __init__(
        self,
        backend: EngineBackend,
        admission: AdmissionConfig,
        metrics: GatewayMetrics,
        tracing: GatewayTracing,
        tenants: TenantRegistry | None,
    ) -> None:
        self.backend = backend
        self.admission = admission
        self.metrics = metrics
        self.tracing = tracing
        self.tenants = tenants
        self.in_flight = 0
        self.base_model_id = ""
        self._validate_response_format = _load_response_format_validator()

    def check_adapters(self, ctx: RequestContext, adapter_ids: Iterable[str]) -> None:
        """404 for any adapter the caller may not use, worded like a missing adapter."""
        if self.tenants is None:
            return
        for adapter_id in adapter_ids:
            if adapter_id and not self.tenants.can_use(ctx.tenant, adapter_id):
                raise GatewayError("not_found", f"adapter {adapter_id} not found")

    def check_response_format(self, response_format: Mapping[str, Any] | None) -> None:
        """422 for a response_format the engine could not compile."""
        if response_format is None or self._validate_response_format is None:
            return
        try:
            self._validate_response_format(dict(response_format))
        except ValueError as exc:
            raise GatewayError("validation", f"response_format: {exc}") from exc

    def _admit(self, ctx: RequestContext) -> TenantLimiter | None:
        if self.in_flight >= self.admission.max_concurrent_requests:
            self.metrics.rejected.labels("max_concurrent_requests", _tenant_label(ctx)).inc()
            raise GatewayError("overloaded", "Model is overloaded", headers={"Retry-After": "1"})
        limiter = None
        if ctx.tenant is not None and self.tenants is not None:
            limiter = self.tenants.limiters.get(ctx.tenant.id)
            if limiter is not None:
                try:
                    limiter.acquire()
                except GatewayError:
                    self.metrics.rejected.labels("tenant_limit", _tenant_label(ctx)).inc()
                    raise
        self.in_flight += 1
        self.metrics.in_flight.inc()
        return limiter

    async def open(
        self, ctx: RequestContext, engine_request: dict[str, Any], adapter: str | None
    ) -> EngineStream:
        """Admit and start one engine request; raise its error if the engine refuses it."""
        parent = self.tracing.extract(ctx.headers)
        request_span = self.tracing.tracer.start_span(
            f"request {ctx.route}", context=parent, kind=SpanKind.SERVER
        )
        request_span.set_attribute("lorax.request_id", ctx.request_id)
        request_span.set_attribute("lorax.adapter_id", adapter or "")
        if ctx.tenant is not None:
            request_span.set_attribute("lorax.tenant", ctx.tenant.id)
        child_ctx = trace.set_span_in_context(request_span)
        validation = self.tracing.tracer.start_span("validation", context=child_ctx)
        try:
            limiter = self._admit(ctx)
        except GatewayError as exc:
            validation.end()
            _fail_span(request_span, exc.error_type)
            request_span.end()
            self.metrics.observe_request(ctx.route, adapter, _tenant_id(ctx), exc.error_type)
            raise
        validation.end()
        stream = EngineStream(self, ctx, adapter, limiter, request_span)
        await stream.start(engine_request)
        return stream


def _tenant_id(ctx: RequestContext) -> str | None:
    return ctx.tenant.id if ctx.tenant is not None else None


def _tenant_label(ctx: RequestContext) -> str:
    return ctx.tenant.id if ctx.tenant is not None else "anonymous"


def _fail_span(span: Span, error_type: str) -> None:
    span.set_status(Status(StatusCode.ERROR, error_type))
    span.set_attribute("lorax.error_type", error_type)


class EngineStream:
    """One admitted engine request. Iterate it once; it finalizes itself exactly once."""

    def __init__(
        self,
        service: GenerationService,
        ctx: RequestContext,
        adapter: str | None,
        limiter: TenantLimiter | None,
        request_span: Span,
    ) -> None:
        self._svc = service
        self.ctx = ctx
        self.adapter = adapter
        self._limiter = limiter
        self._request_span = request_span
        self._span_ctx = trace.set_span_in_context(request_span)
        self._queue_span: Span | None = None
        self._inference_span: Span | None = None
        self._events: AsyncIterator[EngineEvent] | None = None
        self._first: EngineEvent | None = None
        self._finalized = False
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None
        self.generated = 0
        self.end: EngineEvent | None = None
        self.outcome = "cancelled"

    async def start(self, engine_request: dict[str, Any]) -> None:
        """Call the backend and wait for the first event (raises GatewayError on refusal)."""
        tracer = self._svc.tracing.tracer
        self._queue_span = tracer.start_span("queue", context=self._span_ctx)
        trace_headers = self._svc.tracing.inject(self._queue_span, self.ctx.headers)
        try:
            self._events = self._svc.backend.generate(engine_request, trace_headers)
            first = await anext(self._events)
        except BackendUnavailableError as exc:
            await self._finalize("unavailable")
            raise GatewayError("unavailable", str(exc) or "no engine available") from exc
        except StopAsyncIteration as exc:
            await self._finalize("generation")
            raise GatewayError("generation", "engine closed the stream without a result") from exc
        except BaseException:
            await self._finalize("internal")
            raise
        if first.get("type") == "error":
            err = error_event_to_exception(first)
            await self._finalize(err.error_type)
            raise err
        self._first = first

    def _on_event(self, event: EngineEvent) -> None:
        kind = event.get("type")
        if kind == "token":
            now = time.monotonic()
            if self._first_token_at is None:
                self._first_token_at = now
                self._svc.metrics.ttft.observe(now - self.ctx.started)
                if self._queue_span is not None:
                    self._queue_span.end()
                    self._queue_span = None
                self._inference_span = self._svc.tracing.tracer.start_span(
                    "inference", context=self._span_ctx
                )
            self._last_token_at = now
            self.generated += 1
        elif kind == "end":
            self.end = event
            self.outcome = "success"
        elif kind == "error":
            self.outcome = str(event.get("error_type") or "generation")

    async def events(self) -> AsyncGenerator[EngineEvent, None]:
        """All events, starting with the one :meth:`start` read. Finalizes on exit."""
        assert self._events is not None
        assert self._first is not None
        try:
            self._on_event(self._first)
            yield self._first
            if self._first.get("type") in ("end", "error"):
                return
            async for event in self._events:
                self._on_event(event)
                yield event
                if event.get("type") in ("end", "error"):
                    return
            self.outcome = "generation"
            yield {
                "type": "error",
                "error": "engine closed the stream without a result",
                "error_type": "generation",
            }
        except BackendUnavailableError as exc:
            self.outcome = "unavailable"
            yield {
                "type": "error",
                "error": str(exc) or "engine unavailable",
                "error_type": "unavailable",
            }
        finally:
            await self._finalize(self.outcome)

    async def collect(self) -> GenerationResult:
        """Run to the end; raise the engine's error as a GatewayError."""
        prefill: list[dict[str, Any]] = []
        tokens: list[dict[str, Any]] = []
        gen = self.events()
        try:
            async for event in gen:
                kind = event.get("type")
                if kind == "token":
                    tokens.append(event["token"])
                elif kind == "prefill":
                    prefill = list(event.get("tokens") or [])
                elif kind == "error":
                    raise error_event_to_exception(event)
        finally:
            await gen.aclose()
        assert self.end is not None
        return GenerationResult(prefill=prefill, tokens=tokens, end=self.end)

    async def close(self) -> None:
        """Finalize a stream that will not be iterated (e.g. a sibling choice failed)."""
        await self._finalize(self.outcome)

    async def _finalize(self, outcome: str) -> None:
        if self._finalized:
            return
        self._finalized = True
        svc = self._svc
        if self._events is not None:
            # Shielded: on client disconnect we run inside a cancelled scope, and the engine
            # must still hear that the request is gone so it frees the KV blocks.
            with anyio.CancelScope(shield=True):
                aclose = getattr(self._events, "aclose", None)
                if aclose is not None:
                    await aclose()
        end = self.end or {}
        prompt_tokens = int(end.get("prompt_tokens") or 0)
        generated = int(end.get("generated_tokens") or self.generated)
        if self._limiter is not None:
            self._limiter.release(prompt_tokens, generated)
        svc.in_flight -= 1
        svc.metrics.in_flight.dec()
        metrics = svc.metrics
        tenant = _tenant_id(self.ctx)
        metrics.observe_request(self.ctx.route, self.adapter, tenant, outcome)
        metrics.observe_tokens(self.adapter, tenant, prompt_tokens, generated)
        metrics.duration.labels(self.ctx.route).observe(time.monotonic() - self.ctx.started)
        if "queue_time_s" in end:
            metrics.queue_time.observe(float(end["queue_time_s"]))
        if self._first_token_at is not None and self._last_token_at is not None and generated > 1:
            metrics.tpot.observe((self._last_token_at - self._first_token_at) / (generated - 1))
        for span in (self._queue_span, self._inference_span):
            if span is not None:
                span.end()
        span = self._request_span
        span.set_attribute("lorax.prompt_tokens", prompt_tokens)
        span.set_attribute("lorax.generated_tokens", generated)
        if outcome != "success":
            _fail_span(span, outcome)
        span.end()
        logger.info(
            "request finished",
            extra={
                "request_id": self.ctx.request_id,
                "route": self.ctx.route,
                "tenant": tenant,
                "adapter_id": self.adapter,
                "outcome": outcome,
                "prompt_tokens": prompt_tokens,
                "generated_tokens": generated,
                "duration_s": round(time.monotonic() - self.ctx.started, 6),
            },
        )
