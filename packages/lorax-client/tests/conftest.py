"""Fixtures: a fake LoRAX server (httpx.MockTransport) behind either client, so every test that
takes `make_api` runs once with `Client` and once with `AsyncClient`."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest

import lorax.client
from lorax import AsyncClient, Client, StreamResponse

BASE_URL = "http://lorax.test:8080"

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ChunkStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body delivered in the given pieces, to both clients; an exception among the
    pieces is raised at that point (a connection cut mid-body)."""

    def __init__(self, pieces: Iterable[bytes | Exception]) -> None:
        self._pieces = list(pieces)

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._pieces:
            if isinstance(piece, Exception):
                raise piece
            yield piece

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            if isinstance(piece, Exception):
                raise piece
            yield piece


class Wire:
    """Builders of fake server bodies (a fixture, since test modules cannot import conftest)."""

    chunks = ChunkStream

    @staticmethod
    def sse(*payloads: dict[str, Any] | str) -> bytes:
        return sse(*payloads)

    @staticmethod
    def token(i: int, text: str, **extra: Any) -> dict[str, Any]:
        return token(i, text, **extra)

    @staticmethod
    def stream_body(texts: list[str]) -> bytes:
        return stream_body(texts)


@pytest.fixture
def wire() -> type[Wire]:
    return Wire


def sse(*payloads: dict[str, Any] | str) -> bytes:
    """An SSE body: one `data:` event per payload (dicts as JSON, strings verbatim)."""
    out = b""
    for payload in payloads:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        out += f"data: {data}\n\n".encode()
    return out


def token(i: int, text: str, **extra: Any) -> dict[str, Any]:
    return {"id": i, "text": text, "logprob": -0.5, "special": False, **extra}


def stream_body(texts: list[str]) -> bytes:
    """A complete, well-formed stream of `texts`."""
    events: list[dict[str, Any]] = [
        {"token": token(i, t), "generated_text": None, "details": None}
        for i, t in enumerate(texts[:-1])
    ]
    events.append(
        {
            "token": token(len(texts) - 1, texts[-1]),
            "generated_text": "".join(texts),
            "details": {
                "finish_reason": "length",
                "prompt_tokens": 3,
                "generated_tokens": len(texts),
                "seed": None,
            },
        }
    )
    return sse(*events)


class Api:
    """One client (sync or async) over a mock transport, driven with the same awaitable calls."""

    def __init__(self, mode: str, handler: Handler, **client_kwargs: Any) -> None:
        self.mode = mode
        self.requests: list[httpx.Request] = []

        def recording(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return handler(request)

        transport = httpx.MockTransport(recording)
        self.client: Client | AsyncClient
        if mode == "sync":
            self.client = Client(
                BASE_URL, session=httpx.Client(transport=transport), **client_kwargs
            )
        else:
            self.client = AsyncClient(
                BASE_URL, session=httpx.AsyncClient(transport=transport), **client_kwargs
            )

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def stream(self, *args: Any, **kwargs: Any) -> list[StreamResponse]:
        items, error = await self.stream_until_error(*args, **kwargs)
        if error is not None:
            raise error
        return items

    async def stream_until_error(
        self, *args: Any, **kwargs: Any
    ) -> tuple[list[StreamResponse], Exception | None]:
        """The events received before the stream raised, and what it raised (or None)."""
        items: list[StreamResponse] = []
        iterator = self.client.generate_stream(*args, **kwargs)
        try:
            if isinstance(iterator, Iterator):
                for item in iterator:
                    items.append(item)
            else:
                async for item in iterator:
                    items.append(item)
        except Exception as exc:
            return items, exc
        return items, None


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_api(mode: str) -> Callable[..., Api]:
    """`make_api(handler, **client_kwargs)` -> Api, parametrized over Client and AsyncClient."""

    def make(handler: Handler, **client_kwargs: Any) -> Api:
        return Api(mode, handler, **client_kwargs)

    return make


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits are recorded instead of slept, so retry tests are instant and can check them."""
    waited: list[float] = []

    def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    async def fake_async_sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(lorax.client, "_sleep", fake_sleep)
    monkeypatch.setattr(lorax.client, "_async_sleep", fake_async_sleep)
    return waited
