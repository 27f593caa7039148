"""Helpers shared by the route modules: request context, SSE framing, response headers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import msgspec
from litestar import Request
from litestar.response import Stream

from lorax_gateway.errors import GatewayError
from lorax_gateway.service import GenerationService, RequestContext
from lorax_gateway.tenants import Tenant

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_encoder = msgspec.json.Encoder()
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def request_id_of(scope: Mapping[str, Any]) -> str:
    """The caller's ``x-request-id`` when it is sane (≤128 safe chars), else a new one; memoized."""
    state = cast(dict[str, Any], cast(Any, scope).setdefault("state", {}))
    rid = state.get("request_id")
    if rid is None:
        rid = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if 0 < len(candidate) <= 128 and set(candidate) <= _ID_CHARS:
                    rid = candidate
                break
        rid = rid or uuid.uuid4().hex
        state["request_id"] = rid
    return str(rid)


def service_of(request: Request[Any, Any, Any]) -> GenerationService:
    """The app's generation service."""
    return cast(GenerationService, request.app.state["service"])


def context_of(request: Request[Any, Any, Any], route: str) -> RequestContext:
    """Request id, tenant and trace headers of ``request``."""
    tenant = cast(Tenant | None, request.scope["state"].get("tenant"))
    headers = {k: v for k, v in request.headers.items() if k in ("traceparent", "tracestate")}
    return RequestContext(
        request_id=request_id_of(request.scope), route=route, tenant=tenant, headers=headers
    )


def sse(obj: Any) -> bytes:
    """One Server-Sent Event carrying ``obj`` as JSON."""
    return b"data:" + _encoder.encode(obj) + b"\n\n"


def sse_stream(body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> Stream:
    """A ``text/event-stream`` response that relays ``body``."""
    return Stream(body, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})


def timing_headers(end: Mapping[str, Any], adapter: str | None) -> dict[str, str]:
    """The ``x-*`` headers of a finished request (times in milliseconds, like LoRAX)."""
    generated = int(end.get("generated_tokens") or 0)
    queue_s = float(end.get("queue_time_s") or 0.0)
    inference_s = float(end.get("inference_time_s") or 0.0)
    return {
        "x-prompt-tokens": str(int(end.get("prompt_tokens") or 0)),
        "x-generated-tokens": str(generated),
        "x-queue-time": str(round(queue_s * 1000)),
        "x-inference-time": str(round(inference_s * 1000)),
        "x-time-per-token": str(round(inference_s * 1000 / generated) if generated else 0),
        "x-adapter-id": adapter or "",
    }


def engine_error_event(exc: GatewayError) -> dict[str, str]:
    """A streaming error as the final SSE event's body."""
    return exc.body()
