"""OpenAI-compatible routes: ``/v1/completions`` and ``/v1/chat/completions``.

Each choice (``n``, and each prompt of a prompt list) is one engine request. Streams of several
choices are merged as their chunks arrive; the stream ends with ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
from litestar import Request, Response, post
from litestar.params import JSONBody
from litestar.response import Stream

from lorax_gateway.backends.base import BackendUnavailableError
from lorax_gateway.errors import STATUS_BY_ERROR_TYPE, GatewayError
from lorax_gateway.openai_format import (
    chat_logprobs,
    completion_logprobs,
    finish_reason,
    parse_tool_calls,
    usage,
)
from lorax_gateway.openai_schemas import ChatCompletionRequest, CommonFields, CompletionRequest
from lorax_gateway.openapi import GENERATION_ERRORS, StreamOrJsonOperation, error_responses
from lorax_gateway.routes.common import context_of, service_of, sse, sse_stream
from lorax_gateway.service import EngineStream, GenerationResult, GenerationService, RequestContext

_TAG = ["OpenAI"]


def _adapter(svc: GenerationService, model: str) -> str | None:
    return None if model in ("", svc.base_model_id) else model


def _engine_params(
    body: CommonFields, svc: GenerationService, max_new: int | None
) -> dict[str, Any]:
    try:
        stops = body.stop_list()
        response_format = body.response_format.to_engine() if body.response_format else None
    except ValueError as exc:
        raise GatewayError("validation", str(exc)) from exc
    params: dict[str, Any] = {
        "adapter_id": _adapter(svc, body.model),
        "adapter_source": body.adapter_source,
        "api_token": body.api_token,
        "max_new_tokens": max_new,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "repetition_penalty": body.repetition_penalty,
        "frequency_penalty": body.frequency_penalty,
        "presence_penalty": body.presence_penalty,
        "seed": body.seed,
        "stop": stops,
        "ignore_eos_token": body.ignore_eos_token,
    }
    if body.temperature is not None:
        params["temperature"] = body.temperature
        params["do_sample"] = body.temperature > 0
    if response_format is not None:
        params["response_format"] = response_format.model_dump(by_alias=True, exclude_none=True)
    return {k: v for k, v in params.items() if v is not None}


async def _open_all(
    svc: GenerationService, ctx: RequestContext, requests: list[dict[str, Any]], adapter: str | None
) -> list[EngineStream]:
    streams: list[EngineStream] = []
    try:
        for request in requests:
            streams.append(await svc.open(ctx, request, adapter))
    except BaseException:
        for stream in streams:
            await stream.close()
        raise
    return streams


def _requests(
    ctx: RequestContext, prompts: list[str], n: int, params: dict[str, Any], extra: dict[str, Any]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p, prompt in enumerate(prompts):
        for i in range(n):
            choice_params = dict(params)
            if n > 1 and "seed" in params:
                choice_params["seed"] = params["seed"] + i  # distinct but reproducible choices
            out.append(
                {
                    "request_id": ctx.engine_request_id(
                        p * n + i if len(prompts) * n > 1 else None
                    ),
                    "inputs": prompt,
                    "parameters": choice_params,
                    "tenant": ctx.tenant.id if ctx.tenant else None,
                    **extra,
                }
            )
    return out


async def _events(
    streams: list[EngineStream],
) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
    """(choice index, event) pairs of all streams as they arrive.

    Several streams are pumped by plain tasks into a queue (no task group spans the ``yield``, so
    a client disconnect that closes this generator cannot leave a cancel scope half-exited); on
    exit the tasks are cancelled and awaited, which finalizes every stream and cancels its engine
    request.
    """
    if len(streams) == 1:
        events = streams[0].events()
        try:
            async for event in events:
                yield 0, event
        finally:
            await events.aclose()
        return
    queue: asyncio.Queue[tuple[int, dict[str, Any] | None]] = asyncio.Queue()

    async def pump(index: int, stream: EngineStream) -> None:
        events = stream.events()
        try:
            async for event in events:
                queue.put_nowait((index, event))
        finally:
            await events.aclose()
            queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, event = await queue.get()
            if event is None:
                remaining -= 1
            else:
                yield index, event
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)


async def _stream_body(
    streams: list[EngineStream],
    chat: bool,
    model: str,
    include_usage: bool,
    n: int,
    echo_prompts: list[str] | None,
    logprobs: bool,
) -> AsyncIterator[bytes]:
    cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"
    usage_field: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(choice: dict[str, Any]) -> bytes:
        return sse(
            {
                "id": cid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice],
                **usage_field,
            }
        )

    prompt_tokens = completion_tokens = 0
    if chat:
        for i in range(len(streams)):
            yield chunk(
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
    elif echo_prompts is not None:
        for i in range(len(streams)):
            yield chunk(
                {"index": i, "text": echo_prompts[i // n], "logprobs": None, "finish_reason": None}
            )
    async for index, event in _events(streams):
        kind = event.get("type")
        if kind == "token":
            token = event["token"]
            if token.get("special"):
                continue
            text = str(token.get("text", ""))
            if chat:
                lp = chat_logprobs([token]) if logprobs else None
                yield chunk(
                    {
                        "index": index,
                        "delta": {"content": text},
                        "logprobs": lp,
                        "finish_reason": None,
                    }
                )
            else:
                lp = completion_logprobs([token], 0) if logprobs else None
                yield chunk({"index": index, "text": text, "logprobs": lp, "finish_reason": None})
        elif kind == "end":
            if index % n == 0:
                prompt_tokens += int(event.get("prompt_tokens") or 0)
            completion_tokens += int(event.get("generated_tokens") or 0)
            reason = finish_reason(event.get("finish_reason"))
            if chat:
                yield chunk(
                    {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
                )
            else:
                yield chunk({"index": index, "text": "", "logprobs": None, "finish_reason": reason})
        elif kind == "error":
            yield sse({"error": event.get("error"), "error_type": event.get("error_type")})
            return
    if include_usage:
        totals = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        yield sse(
            {
                "id": cid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [],
                "usage": totals,
            }
        )
    yield b"data: [DONE]\n\n"


async def _collect(streams: list[EngineStream]) -> list[GenerationResult]:
    results: list[GenerationResult | None] = [None] * len(streams)
    try:
        async with anyio.create_task_group() as tg:

            async def run(i: int, stream: EngineStream) -> None:
                results[i] = await stream.collect()

            for i, stream in enumerate(streams):
                tg.start_soon(run, i, stream)
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        raise first if isinstance(first, Exception) else group from None
    finally:
        for stream in streams:
            await stream.close()
    return [r for r in results if r is not None]


def _prepare(
    request: Request[Any, Any, Any],
    route: str,
    data: CompletionRequest | ChatCompletionRequest,
    max_tokens: int | None,
    logprobs: bool,
    top_k: int | None,
) -> tuple[GenerationService, RequestContext, str | None, dict[str, Any]]:
    """What both OpenAI routes do before opening engine streams: resolve and authorise the
    adapter, build the engine parameters, check ``response_format``, ask for logprobs."""
    svc = service_of(request)
    ctx = context_of(request, route)
    adapter = _adapter(svc, data.model)
    svc.check_adapters(ctx, [adapter] if adapter else [])
    params = _engine_params(data, svc, max_tokens)
    svc.check_response_format(params.get("response_format"))
    if logprobs:
        params["details"] = True
        if top_k:
            params["return_k_alternatives"] = top_k
    return svc, ctx, adapter, params


# Both OpenAI routes are annotated with response classes: with `Any`, Litestar fixes the route's
# media type to JSON, which overrides a stream's text/event-stream.
@post(
    "/v1/completions",
    summary="Completions (OpenAI)",
    tags=_TAG,
    status_code=200,
    responses=error_responses(GENERATION_ERRORS),
    operation_class=StreamOrJsonOperation,
)
async def completions(
    request: Request[Any, Any, Any], data: JSONBody[CompletionRequest]
) -> Response[dict[str, Any]] | Stream:
    """OpenAI text completions, streaming or not."""
    svc, ctx, adapter, params = _prepare(
        request, "completions", data, data.max_tokens, data.logprobs is not None, data.logprobs
    )
    if data.best_of is not None and data.best_of > 1:
        params["best_of"] = data.best_of
    prompts = data.prompts()
    streams = await _open_all(svc, ctx, _requests(ctx, prompts, data.n, params, {}), adapter)
    model = data.model or svc.base_model_id
    if data.stream:
        body = _stream_body(
            streams,
            False,
            model,
            data.include_usage,
            data.n,
            prompts if data.echo else None,
            data.logprobs is not None,
        )
        return sse_stream(body, {"x-adapter-id": adapter or ""})
    results = await _collect(streams)
    choices: list[dict[str, Any]] = []
    for i, result in enumerate(results):
        prefix = prompts[i // data.n] if data.echo else ""
        text = prefix + str(result.end.get("generated_text") or "")
        tokens = [t for t in result.tokens if not t.get("special")]
        choices.append(
            {
                "index": i,
                "text": text,
                "logprobs": completion_logprobs(tokens, len(prefix))
                if data.logprobs is not None
                else None,
                "finish_reason": finish_reason(result.end.get("finish_reason")),
            }
        )
    return Response(
        {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage(results, data.n),
        }
    )


@post(
    "/v1/chat/completions",
    summary="Chat completions (OpenAI)",
    tags=_TAG,
    status_code=200,
    responses=error_responses(GENERATION_ERRORS),
    operation_class=StreamOrJsonOperation,
)
async def chat_completions(
    request: Request[Any, Any, Any], data: JSONBody[ChatCompletionRequest]
) -> Response[dict[str, Any]] | Stream:
    """OpenAI chat completions through the model's (or the adapter's) chat template."""
    svc, ctx, adapter, params = _prepare(
        request,
        "chat_completions",
        data,
        data.max_new_tokens,
        bool(data.logprobs),
        data.top_logprobs,
    )
    try:
        messages = [m.engine_dict() for m in data.messages]
    except ValueError as exc:
        raise GatewayError("validation", str(exc)) from exc
    tools = data.tools if data.tool_choice != "none" else None
    extra: dict[str, Any] = {}
    if svc.backend.renders_chat:
        prompt = ""
        extra = {"messages": messages, "tools": tools, "tool_choice": data.tool_choice}
    else:
        try:
            prompt = await svc.backend.apply_chat_template(messages, adapter, tools)
        except GatewayError:
            raise
        except BackendUnavailableError as exc:
            raise GatewayError("unavailable", str(exc) or "no engine available") from exc
        except Exception as exc:
            # Engine errors carry their public error_type (e.g. an adapter that cannot load is
            # `generation`); anything else is a template the messages do not fit.
            error_type = getattr(exc, "error_type", None)
            if isinstance(error_type, str) and error_type in STATUS_BY_ERROR_TYPE:
                raise GatewayError(error_type, str(exc)) from exc
            raise GatewayError("validation", f"chat template failed: {exc}") from exc
    streams = await _open_all(svc, ctx, _requests(ctx, [prompt], data.n, params, extra), adapter)
    model = data.model or svc.base_model_id
    if data.stream:
        body = _stream_body(streams, True, model, data.include_usage, data.n, None, data.logprobs)
        return sse_stream(body, {"x-adapter-id": adapter or ""})
    results = await _collect(streams)
    choices: list[dict[str, Any]] = []
    for i, result in enumerate(results):
        text = str(result.end.get("generated_text") or "")
        reason = finish_reason(result.end.get("finish_reason"))
        message: dict[str, Any] = {"role": "assistant", "content": text}
        calls = parse_tool_calls(text) if tools else None
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            reason = "tool_calls"
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": chat_logprobs(result.tokens) if data.logprobs else None,
                "finish_reason": reason,
            }
        )
    return Response(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage(results, data.n),
        }
    )


ROUTES = [completions, chat_completions]
