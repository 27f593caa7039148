"""The two wire protocols lorax-bench speaks (sans-IO): request bodies and stream parsing.

- ``lorax``: ``POST /generate_stream`` (LoRAX, TGI): the adapter is ``parameters.adapter_id``;
  one SSE event per token; the last carries ``generated_text`` and ``details``.
- ``openai``: ``POST /v1/completions`` with ``stream: true`` (vLLM, SGLang, our gateway): the
  adapter is ``model``; one chunk per token (or a few); ``usage`` on the final chunk;
  ``data: [DONE]`` ends the body.
- ``openai-chat``: ``POST /v1/chat/completions``, the prompt as one user message (the server's
  chat template adds its own tokens to the prompt); the text comes in ``choices[].delta``.

Both ask for exactly ``output_len`` new tokens with EOS ignored (``ignore_eos_token`` for LoRAX;
for OpenAI servers both the vLLM spelling ``ignore_eos`` and ours, since servers ignore unknown
fields), greedy decoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, cast

from lorax.errors import json_object

__all__ = ["PROTOCOLS", "Endpoint", "Protocol", "StreamTracker"]

Protocol = Literal["lorax", "openai", "openai-chat"]
PROTOCOLS: tuple[Protocol, ...] = ("lorax", "openai", "openai-chat")
_PATHS: dict[Protocol, str] = {
    "lorax": "/generate_stream",
    "openai": "/v1/completions",
    "openai-chat": "/v1/chat/completions",
}


@dataclass(slots=True, frozen=True)
class Endpoint:
    """Where and how requests are sent.

    Attributes:
        protocol: ``lorax``, ``openai`` or ``openai-chat``.
        model: OpenAI ``model`` for base-model requests (the base model's id, or ``""`` for our
            gateway); ignored by ``lorax``.
        adapter_source: LoRAX ``adapter_source`` (``hub``, ``local``, ``s3``), or None for the
            server's default.
    """

    protocol: Protocol = "lorax"
    model: str = ""
    adapter_source: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}")

    @property
    def path(self) -> str:
        """The streaming route."""
        return _PATHS[self.protocol]

    def body(self, prompt: str, adapter_id: str | None, max_new_tokens: int) -> dict[str, Any]:
        """The JSON body of one request (``adapter_id`` None = the base model)."""
        if self.protocol == "lorax":
            parameters: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "ignore_eos_token": True,
                "details": True,
            }
            if adapter_id:
                parameters["adapter_id"] = adapter_id
                if self.adapter_source:
                    parameters["adapter_source"] = self.adapter_source
            return {"inputs": prompt, "parameters": parameters}
        body: dict[str, Any] = {"model": adapter_id or self.model}
        if self.protocol == "openai":
            body["prompt"] = prompt
        else:
            body["messages"] = [{"role": "user", "content": prompt}]
        body |= {
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
            "ignore_eos_token": True,
        }
        if adapter_id and self.adapter_source:
            body["adapter_source"] = self.adapter_source
        return body

    def tracker(self) -> StreamTracker:
        """A parser for one response body of this protocol."""
        return StreamTracker(self.protocol)


class StreamTracker:
    """Follows one streaming response, event by event (the ``data`` of each SSE event).

    Attributes:
        tokens: token events seen (for OpenAI: chunks that carried text, or a chat delta's
            content).
        finished: the final event arrived (LoRAX: ``generated_text``; OpenAI: a
            ``finish_reason``).
        prompt_tokens / generated_tokens: what the server reported, when it did.
        error: ``(error_type, message)`` of an error event.
    """

    def __init__(self, protocol: Protocol) -> None:
        self._protocol: Protocol = protocol
        self.tokens = 0
        self.finished = False
        self.prompt_tokens: int | None = None
        self.generated_tokens: int | None = None
        self.error: tuple[str, str] | None = None

    @property
    def output_tokens(self) -> int:
        """Generated tokens: the server's count when it gave one, else the token events."""
        return self.generated_tokens if self.generated_tokens is not None else self.tokens

    def feed(self, data: str) -> int:
        """Parse one event; returns how many tokens it delivered (0 or 1)."""
        if data == "[DONE]":
            return 0
        try:
            fields = json_object(json.loads(data))
        except json.JSONDecodeError:
            fields = None
        if fields is None:
            self.error = ("invalid_response", f"stream event is not a JSON object: {data[:200]!r}")
            return 0
        if "error" in fields and "token" not in fields and "choices" not in fields:
            self.error = _error_of(fields)
            return 0
        if self._protocol == "lorax":
            return self._lorax(fields)
        return self._openai(fields)

    def _lorax(self, fields: dict[str, Any]) -> int:
        new = 1 if fields.get("token") is not None else 0
        self.tokens += new
        if fields.get("generated_text") is not None:
            self.finished = True
            details = json_object(fields.get("details"))
            if details is not None:
                self.prompt_tokens = _int_or_none(details.get("prompt_tokens"))
                self.generated_tokens = _int_or_none(details.get("generated_tokens"))
        return new

    def _openai(self, fields: dict[str, Any]) -> int:
        usage = json_object(fields.get("usage"))
        if usage is not None:
            self.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
            self.generated_tokens = _int_or_none(usage.get("completion_tokens"))
        new = 0
        choices: object = fields.get("choices")
        if isinstance(choices, list):
            for raw in cast("list[object]", choices):
                choice = json_object(raw)
                if choice is None:
                    continue
                delta = json_object(choice.get("delta"))
                if choice.get("text") or (delta is not None and delta.get("content")):
                    new = 1
                if choice.get("finish_reason") is not None:
                    self.finished = True
        self.tokens += new
        return new


def _error_of(fields: dict[str, Any]) -> tuple[str, str]:
    error: object = fields.get("error")
    nested = json_object(error)
    if nested is not None:  # OpenAI style: {"error": {"message", "type"}}
        return (str(nested.get("type") or "stream_error"), str(nested.get("message") or ""))
    return (str(fields.get("error_type") or "stream_error"), str(error))


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None
