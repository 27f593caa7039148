"""Operational routes: ``/health``, ``/info``, ``/v1/models``, ``/tokenize``, ``/metrics``, ``/usage``."""

from __future__ import annotations

import time
from typing import Any, cast

from litestar import MediaType, Request, Response, get, post
from litestar.params import JSONBody

from lorax_gateway import __version__
from lorax_gateway.errors import GatewayError
from lorax_gateway.metrics import GatewayMetrics
from lorax_gateway.openapi import COMMON_ERRORS, JsonOperation, error_responses
from lorax_gateway.routes.common import context_of, service_of
from lorax_gateway.schemas import TokenizeRequest
from lorax_gateway.settings import GatewaySettings

_TAG = ["Operations"]
#: A read-only route that asks the engine: auth errors, or 503 when no engine answers.
_ENGINE_READ_ERRORS = error_responses((401, 403, 503))


@get("/health", summary="Health", tags=_TAG, responses=_ENGINE_READ_ERRORS)
async def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """200 when an engine answers, else 503 ``healthcheck``."""
    svc = service_of(request)
    try:
        ok = await svc.backend.health()
    except Exception:
        ok = False
    if not ok:
        raise GatewayError("healthcheck", "engine is not healthy")
    return Response({}, status_code=200)


@get("/info", summary="Model and server info", tags=_TAG, responses=_ENGINE_READ_ERRORS)
async def info(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The engine's model facts and limits, with the gateway's own limits and versions."""
    svc = service_of(request)
    settings = cast(GatewaySettings, request.app.state["settings"])
    engine_info: dict[str, Any] = {}
    try:
        engine_info = await svc.backend.info()
    except Exception as exc:
        raise GatewayError("unavailable", "engine info unavailable") from exc
    out = {k: v for k, v in engine_info.items() if k != "adapters"}
    # API.md names these `dtype` and `device`; LoRAX engines call them model_dtype/model_device_type.
    out.setdefault("dtype", engine_info.get("model_dtype"))
    out.setdefault("device", engine_info.get("model_device_type"))
    out["engine_version"] = engine_info.get("version")
    out.update(
        {
            "version": __version__,
            "backend": svc.backend.name,
            "max_concurrent_requests": settings.admission.max_concurrent_requests,
            "max_client_body_bytes": settings.admission.max_body_bytes,
            "auth": svc.tenants is not None,
        }
    )
    return out


@get(
    "/v1/models",
    summary="Models the caller may use (OpenAI)",
    tags=["OpenAI"],
    responses=_ENGINE_READ_ERRORS,
)
async def models(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The base model, then the public adapters and the caller's own private adapters."""
    svc = service_of(request)
    settings = cast(GatewaySettings, request.app.state["settings"])
    ctx = context_of(request, "models")
    try:
        engine_info = await svc.backend.info()
    except Exception as exc:
        raise GatewayError("unavailable", "engine info unavailable") from exc
    base = str(engine_info.get("model_id") or svc.base_model_id)
    candidates: list[str] = [*settings.public_adapters, *engine_info.get("adapters", [])]
    if svc.tenants is not None:
        candidates += list(svc.tenants.public_adapters)
        if ctx.tenant is not None:
            candidates += list(ctx.tenant.adapters)
        adapters = svc.tenants.visible(ctx.tenant, candidates)
    else:
        adapters = list(dict.fromkeys(candidates))
    created = int(request.app.state["started_at"])
    data = [{"id": base, "object": "model", "created": created, "owned_by": "lorax"}]
    data += [
        {"id": a, "object": "model", "created": created, "owned_by": "lorax", "parent": base}
        for a in adapters
        if a != base
    ]
    return {"object": "list", "data": data}


@post(
    "/tokenize",
    summary="Tokenize",
    tags=_TAG,
    status_code=200,
    responses=error_responses((*COMMON_ERRORS, 503)),
    operation_class=JsonOperation,
)
async def tokenize(
    request: Request[Any, Any, Any], data: JSONBody[TokenizeRequest]
) -> list[dict[str, Any]]:
    """``[{id, text, start, stop}]`` for ``inputs``."""
    svc = service_of(request)
    try:
        return await svc.backend.tokenize(data.inputs, data.add_special_tokens)
    except GatewayError:
        raise
    except Exception as exc:
        raise GatewayError("unavailable", "engine unavailable") from exc


@get(
    "/metrics",
    summary="Prometheus metrics",
    tags=_TAG,
    media_type=MediaType.TEXT,
    responses=error_responses((401, 403)),
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The gateway's metrics and, labelled by engine, the engines' gauges."""
    svc = service_of(request)
    gateway_metrics = cast(GatewayMetrics, request.app.state["metrics"])
    engine_texts: list[tuple[str, str]] = []
    if gateway_metrics.config.scrape_engine:
        try:
            engine_texts = await svc.backend.metrics_texts()
        except Exception:
            engine_texts = []  # the gateway's own metrics are still worth serving
    return Response(
        gateway_metrics.render(engine_texts),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


@get(
    "/usage",
    summary="The caller's usage",
    tags=_TAG,
    responses=error_responses((401, 403, 404)),
)
async def usage(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Requests and tokens of the calling tenant since the gateway started."""
    svc = service_of(request)
    ctx = context_of(request, "usage")
    if svc.tenants is None or ctx.tenant is None:
        raise GatewayError("not_found", "usage is tracked per tenant; auth is off")
    limiter = svc.tenants.limiters[ctx.tenant.id]
    u = limiter.usage
    return {
        "tenant": ctx.tenant.id,
        "requests": u.requests,
        "rejected": u.rejected,
        "prompt_tokens": u.prompt_tokens,
        "generated_tokens": u.generated_tokens,
        "in_flight": limiter.in_flight,
        "as_of": int(time.time()),
    }


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The OpenAPI document (also under ``/docs/openapi.json``)."""
    return request.app.openapi_schema.to_schema()


ROUTES = [health, info, models, tokenize, metrics, usage, openapi_json]
