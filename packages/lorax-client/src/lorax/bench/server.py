"""What lorax-bench asks the server before a run: who it is (recorded in the results) and how it
tokenizes (to build prompts of a target length)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from lorax.bench.prompts import TokenSpans
from lorax.client import AsyncClient
from lorax.errors import LoraxError, json_object
from lorax.retry import RetryConfig

__all__ = ["describe", "token_counter", "token_spans"]

TokenCounter = Callable[[str], Awaitable[int]]
"""``count(text)``: how many tokens ``text`` is on the server, special tokens included."""


def _client(http: httpx.AsyncClient) -> AsyncClient:
    # The bench's own connection pool; no retries, so a failing route is reported at once.
    return AsyncClient(str(http.base_url), session=http, retry=RetryConfig(max_retries=0))


async def describe(http: httpx.AsyncClient) -> dict[str, Any]:
    """``GET /info`` (LoRAX) and ``GET /v1/models`` (OpenAI), whichever answer, for the record."""
    found: dict[str, Any] = {}
    client = _client(http)
    try:
        found["info"] = (await client.info(timeout=30)).model_dump(mode="json")
    except LoraxError as exc:
        found["info_error"] = str(exc)
    try:
        found["models"] = [m.id for m in await client.models(timeout=30)]
    except LoraxError as exc:
        found["models_error"] = str(exc)
    return found


async def token_counter(http: httpx.AsyncClient, model: str) -> TokenCounter | None:
    """A function that counts the tokens of a text on the server (special tokens included):
    LoRAX's ``POST /tokenize {inputs}``, else vLLM's ``POST /tokenize {model, prompt}``, else
    None when the server has neither."""
    client = _client(http)

    async def lorax_count(text: str) -> int:
        return len(await client.tokenize(text, True, timeout=60))

    async def vllm_count(text: str) -> int:
        response = await http.post("/tokenize", json={"model": model, "prompt": text}, timeout=60)
        response.raise_for_status()
        fields = json_object(response.json())
        count = None if fields is None else fields.get("count")
        if not isinstance(count, int):
            raise ValueError(f"unexpected /tokenize answer: {response.text[:200]}")
        return count

    for counter in (lorax_count, vllm_count):
        try:
            await counter("hello world")
        except (LoraxError, httpx.HTTPError, ValueError):
            continue
        return counter
    return None


async def token_spans(http: httpx.AsyncClient) -> TokenSpans | None:
    """Character spans of a text's tokens from LoRAX's ``POST /tokenize``, or None when the
    server has no such route or its spans are empty (then prompts cannot be cut exactly)."""
    client = _client(http)

    async def spans(text: str) -> list[tuple[int, int]]:
        return [(t.start, t.stop) for t in await client.tokenize(text, True, timeout=60)]

    try:
        probe = await spans("hello world")
    except LoraxError:
        return None
    return spans if any(stop > 0 for _, stop in probe) else None
