"""LoRAX REST routes: ``POST /generate``, ``POST /generate_stream`` and ``POST /``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post
from litestar.params import JSONBody
from litestar.response import Stream

from lorax_gateway.errors import GatewayError
from lorax_gateway.openapi import (
    GENERATION_ERRORS,
    SSE_MEDIA_TYPE,
    JsonOperation,
    StreamOrJsonOperation,
    error_responses,
)
from lorax_gateway.routes.common import context_of, service_of, sse, sse_stream, timing_headers
from lorax_gateway.schemas import CompatGenerateRequest, GenerateRequest, Parameters
from lorax_gateway.service import EngineStream, GenerationResult, GenerationService, RequestContext

_DOCS = "LoRAX text generation"


def _adapter_of(params: Parameters) -> str | None:
    return params.adapter_id or None


async def _open(
    svc: GenerationService, ctx: RequestContext, body: GenerateRequest, stream: bool
) -> EngineStream:
    params = body.parameters
    if stream and params.decoder_input_details:
        raise GatewayError("validation", "decoder_input_details is not supported when streaming")
    if stream and params.best_of is not None and params.best_of > 1:
        raise GatewayError("validation", "best_of > 1 is not supported when streaming")
    adapters = [params.adapter_id] if params.adapter_id else []
    if params.merged_adapters is not None:
        adapters += params.merged_adapters.ids
    svc.check_adapters(ctx, adapters)
    engine_params = params.engine_dict()
    if params.adapter_id == "":
        engine_params.pop("adapter_id")  # "" means the base model, same as null
    svc.check_response_format(engine_params.get("response_format"))
    request = {
        "request_id": ctx.engine_request_id(),
        "inputs": body.inputs,
        "parameters": engine_params,
        "tenant": ctx.tenant.id if ctx.tenant else None,
    }
    return await svc.open(ctx, request, _adapter_of(params))


def _details(result: GenerationResult) -> dict[str, Any]:
    end = result.end
    details: dict[str, Any] = {
        "finish_reason": end.get("finish_reason"),
        "prompt_tokens": end.get("prompt_tokens"),
        "generated_tokens": end.get("generated_tokens"),
        "seed": end.get("seed"),
        "prefill": result.prefill,
        "tokens": result.tokens,
    }
    best_of = end.get("best_of_sequences")
    if best_of:
        details["best_of_sequences"] = [{"prefill": [], "tokens": [], **seq} for seq in best_of]
    return details


def _generate_response(body: GenerateRequest, result: GenerationResult) -> dict[str, Any]:
    params = body.parameters
    text = str(result.end.get("generated_text") or "")
    if params.return_full_text:
        text = body.inputs + text
    out: dict[str, Any] = {"generated_text": text}
    if params.details:
        out["details"] = _details(result)
    return out


async def _run_generate(
    request: Request[Any, Any, Any], body: GenerateRequest, route: str
) -> tuple[dict[str, Any], dict[str, str]]:
    svc = service_of(request)
    stream = await _open(svc, context_of(request, route), body, stream=False)
    result = await stream.collect()
    return _generate_response(body, result), timing_headers(result.end, stream.adapter)


async def _relay(stream: EngineStream, body: GenerateRequest) -> AsyncIterator[bytes]:
    """Engine events as LoRAX ``StreamResponse`` events.

    LoRAX puts ``generated_text`` and ``details`` on the last token's event, while the engine
    closes with a separate ``end``. A token that is certainly last (special, i.e. EOS; the
    ``max_new_tokens``-th; or one completing a stop sequence) is held back the few microseconds
    until ``end`` follows, and sent merged; no other token waits. If ``end`` arrives with nothing
    held (e.g. ``max_new_tokens`` was left to the engine), it rides on an empty special token.
    """
    params = body.parameters
    held: dict[str, Any] | None = None
    stops = params.stop
    # Only the tail can complete a stop sequence: keep as many characters as the longest one.
    keep = max((len(s) for s in stops), default=0)
    tail = ""
    count = 0
    last_count = params.max_new_tokens
    events = stream.events()
    try:
        async for event in events:
            kind = event.get("type")
            if kind == "token":
                if held is not None:
                    yield sse({"token": held, "generated_text": None, "details": None})
                    held = None
                token: dict[str, Any] = event["token"]
                count += 1
                special = token.get("special")
                stopped = False
                if keep and not special:
                    tail = tail[-keep:] + str(token.get("text", ""))
                    stopped = any(s in tail for s in stops)
                if special or count == last_count or stopped:
                    held = token
                    continue
                yield sse({"token": token, "generated_text": None, "details": None})
            elif kind == "end":
                last = held or {"id": 0, "text": "", "logprob": 0.0, "special": True}
                held = None
                generated = str(event.get("generated_text") or "")
                if params.return_full_text:
                    generated = body.inputs + generated
                details = {
                    "finish_reason": event.get("finish_reason"),
                    "prompt_tokens": event.get("prompt_tokens"),
                    "generated_tokens": event.get("generated_tokens"),
                    "seed": event.get("seed"),
                }
                yield sse({"token": last, "generated_text": generated, "details": details})
            elif kind == "error":
                if held is not None:
                    yield sse({"token": held, "generated_text": None, "details": None})
                    held = None
                yield sse({"error": event.get("error"), "error_type": event.get("error_type")})
    finally:
        await events.aclose()


async def _stream_response(
    request: Request[Any, Any, Any], body: GenerateRequest, route: str
) -> Stream:
    svc = service_of(request)
    stream = await _open(svc, context_of(request, route), body, stream=True)
    return sse_stream(_relay(stream, body), {"x-adapter-id": stream.adapter or ""})


@post(
    "/generate",
    summary="Generate text",
    tags=[_DOCS],
    status_code=200,
    responses=error_responses(GENERATION_ERRORS),
    operation_class=JsonOperation,
)
async def generate(
    request: Request[Any, Any, Any], data: JSONBody[GenerateRequest]
) -> Response[dict[str, Any]]:
    """Generate a completion for ``inputs`` (LoRAX ``GenerateResponse``)."""
    content, headers = await _run_generate(request, data, "generate")
    return Response(content, headers=headers)


@post(
    "/generate_stream",
    summary="Generate text as Server-Sent Events",
    tags=[_DOCS],
    status_code=200,
    media_type=SSE_MEDIA_TYPE,
    responses=error_responses(GENERATION_ERRORS),
    operation_class=JsonOperation,
)
async def generate_stream(
    request: Request[Any, Any, Any], data: JSONBody[GenerateRequest]
) -> Stream:
    """Stream tokens as SSE ``StreamResponse`` events; the last carries the full text."""
    return await _stream_response(request, data, "generate_stream")


@post(
    "/",
    summary="Generate (compat route)",
    tags=[_DOCS],
    status_code=200,
    responses=error_responses(GENERATION_ERRORS),
    operation_class=StreamOrJsonOperation,
)
async def compat_generate(
    request: Request[Any, Any, Any], data: JSONBody[CompatGenerateRequest]
) -> Response[list[dict[str, Any]]] | Stream:
    """``stream: false`` → ``[GenerateResponse]``; ``stream: true`` → SSE like /generate_stream."""
    if data.stream:
        return await _stream_response(request, data, "compat")
    content, headers = await _run_generate(request, data, "compat")
    return Response([content], headers=headers)


ROUTES = [generate, generate_stream, compat_generate]
