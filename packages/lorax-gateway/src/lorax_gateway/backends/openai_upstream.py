"""The ``openai`` backend: any OpenAI-compatible server (e.g. vLLM) as the engine.

Engine requests become streamed ``/v1/completions`` calls (``/v1/chat/completions`` for chat,
whose messages the upstream renders itself), and the upstream's chunks become engine events.
The upstream does not expose token ids, so token events carry ``id: 0``; ``/tokenize`` is not
available. The base model is the upstream's first listed model; an adapter id is sent as
``model`` (vLLM serves LoRA adapters under their names).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx

from lorax_gateway.backends.base import BackendUnavailableError, EngineEvent
from lorax_gateway.errors import GatewayError

_FINISH = {"stop": "eos_token", "length": "length"}


@dataclass(slots=True)
class OpenAIBackendConfig:
    """Where the upstream is."""

    base_url: str
    api_key: str | None = None
    model: str | None = None  # default: the upstream's first model
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        self.base_url = self.base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"


class OpenAIBackend:
    """An OpenAI-compatible upstream (see module docstring)."""

    name = "openai"
    renders_chat = True

    def __init__(self, config: OpenAIBackendConfig) -> None:
        self.config = config
        self._client: httpx.AsyncClient | None = None
        self._model: str | None = config.model

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> OpenAIBackend:
        """Options: ``base_url``, ``api_key``, ``model``, ``timeout_s``."""
        return cls(OpenAIBackendConfig(**dict(options)))

    @property
    def client(self) -> httpx.AsyncClient:
        """The connection pool (created in :meth:`start`)."""
        if self._client is None:
            raise RuntimeError("OpenAIBackend.start() was not called")
        return self._client

    async def start(self) -> None:
        """Open the connection pool."""
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.config.base_url,
            headers=headers,
            timeout=httpx.Timeout(self.config.timeout_s, connect=5.0),
        )

    async def close(self) -> None:
        """Close the pool."""
        if self._client is not None:
            await self._client.aclose()

    async def _base_model(self) -> str:
        if self._model is None:
            r = await self.client.get("/models")
            r.raise_for_status()
            self._model = str(r.json()["data"][0]["id"])
        return self._model

    def generate(
        self, request: dict[str, Any], trace_headers: Mapping[str, str]
    ) -> AsyncIterator[EngineEvent]:
        """Stream the request from the upstream."""
        return self._generate(request, dict(trace_headers))

    async def _generate(
        self, request: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[EngineEvent]:
        p: dict[str, Any] = request.get("parameters") or {}
        try:
            model = p.get("adapter_id") or await self._base_model()
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(f"upstream unavailable: {exc}") from exc
        body: dict[str, Any] = {
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": p.get("max_new_tokens"),
            "temperature": p.get("temperature", 0.0 if not p.get("do_sample") else None),
            "top_p": p.get("top_p"),
            "seed": p.get("seed"),
            "stop": p.get("stop") or None,
            "frequency_penalty": p.get("frequency_penalty"),
            "presence_penalty": p.get("presence_penalty"),
        }
        chat = "messages" in request
        if chat:
            body["messages"] = request["messages"]
            if request.get("tools"):
                body["tools"] = request["tools"]
                body["tool_choice"] = request.get("tool_choice")
        else:
            body["prompt"] = request.get("inputs", "")
        body = {k: v for k, v in body.items() if v is not None}
        path = "/chat/completions" if chat else "/completions"
        try:
            response = await self.client.send(
                self.client.build_request("POST", path, json=body, headers=headers), stream=True
            )
        except httpx.TransportError as exc:
            raise BackendUnavailableError(f"upstream unavailable: {exc}") from exc
        try:
            async for event in self._events(response, chat):
                yield event
        finally:
            await response.aclose()

    async def _events(self, response: httpx.Response, chat: bool) -> AsyncIterator[EngineEvent]:
        if response.status_code != 200:
            raw = await response.aread()
            error_type = {400: "validation", 404: "not_found", 422: "validation", 429: "overloaded"}
            yield {
                "type": "error",
                "error": f"upstream answered {response.status_code}: {raw.decode(errors='replace')[:500]}",
                "error_type": error_type.get(response.status_code, "generation"),
            }
            return
        text, reason, usage = "", "length", {}
        generated = 0
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk: dict[str, Any] = json.loads(data)
                if chunk.get("usage"):
                    usage = cast(dict[str, Any], chunk["usage"])
                for choice in cast(list[dict[str, Any]], chunk.get("choices") or []):
                    delta = cast(dict[str, Any], choice.get("delta") or {})
                    piece = str((delta.get("content") if chat else choice.get("text")) or "")
                    if piece:
                        text += piece
                        generated += 1
                        yield {
                            "type": "token",
                            "token": {"id": 0, "text": piece, "logprob": None, "special": False},
                        }
                    if choice.get("finish_reason"):
                        reason = _FINISH.get(str(choice["finish_reason"]), "eos_token")
        except httpx.HTTPError as exc:
            yield {
                "type": "error",
                "error": f"upstream connection lost: {exc}",
                "error_type": "unavailable",
            }
            return
        yield {
            "type": "end",
            "generated_text": text,
            "finish_reason": reason,
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "generated_tokens": int(usage.get("completion_tokens") or generated),
            "seed": None,
        }

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[dict[str, Any]]:
        """Not offered by OpenAI-compatible servers."""
        raise GatewayError("not_supported", "tokenize is not available with the openai backend")

    async def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        adapter_id: str | None,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> str:
        """Not used: the upstream renders chats itself (``renders_chat``)."""
        raise GatewayError("not_supported", "the openai backend renders chats upstream")

    async def info(self) -> dict[str, Any]:
        """The upstream's base model."""
        try:
            return {"model_id": await self._base_model(), "upstream": self.config.base_url}
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(str(exc)) from exc

    async def health(self) -> bool:
        """True when the upstream lists its models."""
        try:
            r = await self.client.get("/models", timeout=2.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def metrics_texts(self) -> list[tuple[str, str]]:
        """The upstream's metrics are its own business."""
        return []
