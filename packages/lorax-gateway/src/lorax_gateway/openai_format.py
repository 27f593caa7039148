"""OpenAI response pieces: finish reasons, usage, logprobs and tool calls (pure functions)."""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

from lorax_gateway.service import GenerationResult

#: Engine finish reasons as OpenAI names them.
FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def finish_reason(engine_reason: object) -> str:
    """OpenAI ``finish_reason`` of an engine ``finish_reason``."""
    return FINISH_REASONS.get(str(engine_reason), "stop")


def usage(results: list[GenerationResult], n: int) -> dict[str, int]:
    """OpenAI ``usage`` of ``results`` (``n`` choices per prompt, in prompt order).

    The prompt is counted once per prompt, not once per choice.
    """
    prompt = sum(int(r.end.get("prompt_tokens") or 0) for r in results[::n])
    completion = sum(int(r.end.get("generated_tokens") or 0) for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_logprobs(tokens: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Completions ``logprobs`` of engine tokens; ``offset`` is the first token's text offset."""
    texts = [str(t.get("text", "")) for t in tokens]
    offsets: list[int] = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [t.get("logprob") for t in tokens],
        "top_logprobs": [
            {a["text"]: a["logprob"] for a in t.get("alternative_tokens", [])} or None
            for t in tokens
        ],
        "text_offset": offsets,
    }


def chat_logprobs(tokens: list[dict[str, Any]]) -> dict[str, Any]:
    """Chat ``logprobs.content`` of engine tokens (special tokens left out)."""

    def entry(t: dict[str, Any]) -> dict[str, Any]:
        text = str(t.get("text", ""))
        return {"token": text, "logprob": t.get("logprob"), "bytes": list(text.encode())}

    return {
        "content": [
            {**entry(t), "top_logprobs": [entry(a) for a in t.get("alternative_tokens", [])]}
            for t in tokens
            if not t.get("special")
        ]
    }


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """A JSON tool call (``{"name", "arguments"}`` or a list of them) in the model's output."""
    try:
        parsed = json.loads(text.strip())
    except ValueError:
        return None
    parsed_any: Any = parsed
    items = cast(list[Any], parsed_any) if isinstance(parsed_any, list) else [parsed_any]
    calls: list[dict[str, Any]] = []
    for raw in items:
        if not isinstance(raw, dict):
            return None
        item = cast(dict[str, Any], raw)
        if not isinstance(item.get("name"), str):
            return None
        args: Any = item.get("arguments", item.get("parameters", {}))
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": item["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
        )
    return calls or None
