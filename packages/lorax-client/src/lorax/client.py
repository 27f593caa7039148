"""`Client` and `AsyncClient`: thin I/O shells around the sans-IO `ClientCore`.

Each method asks the core for a `Call` (request + parser + retry rules, validated before any
I/O), sends it, and lets the core decide whether to wait and retry or which error to raise. The
two shells differ only in `await`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Generator
from types import TracebackType
from typing import Self, TypeVar, Unpack

import anyio
import httpx

from lorax._core import NOT_GIVEN, Call, ClientCore, NotGiven, TimeoutArg
from lorax._stream import StreamParser
from lorax.parameters import GenerateParams, StreamParams
from lorax.retry import RetryConfig
from lorax.types import Info, Model, Response, SimpleToken, StreamResponse

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    await anyio.sleep(seconds)


class _Base:
    _core: ClientCore

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None,
        cookies: dict[str, str] | None,
        timeout: TimeoutArg,
        max_session_retries: int,
        api_key: str | None,
        retry: RetryConfig | None,
    ) -> None:
        policy = retry if retry is not None else RetryConfig(max_retries=max_session_retries)
        self._core = ClientCore.create(base_url, headers, cookies, timeout, api_key, policy)

    @property
    def base_url(self) -> str:
        """The server's root URL."""
        return self._core.base_url

    @property
    def headers(self) -> dict[str, str]:
        """Headers sent with every request (a copy)."""
        return dict(self._core.headers.items())

    @property
    def retry(self) -> RetryConfig:
        """The retry policy."""
        return self._core.retry


class Client(_Base):
    """Synchronous client of a LoRAX-compatible server.

    Example::

        from lorax import Client

        client = Client("http://127.0.0.1:8080", api_key="...")
        print(client.generate("Why is the sky blue?", adapter_id="some/adapter").generated_text)
        for event in client.generate_stream("Why is the sky blue?", max_new_tokens=32):
            if not event.token.special:
                print(event.token.text, end="")

    Args:
        base_url: the server's root URL (`http://host:port`, or a prefix such as
            `https://host/v1/llms/name`).
        headers: extra headers sent with every request.
        cookies: cookies sent with every request.
        timeout: default timeout in seconds of every network operation (connect, each read,
            write); an `httpx.Timeout` for finer control; None for none. Each method also takes
            `timeout=` for that call.
        session: an `httpx.Client` to send through (connection pool, proxies, transport). The
            client does not close a session it was given. Its own `base_url` and default
            headers are not used.
        max_session_retries: retries after a failed attempt (upstream's name); see `retry`.
        api_key: sent as `Authorization: Bearer <api_key>`.
        retry: the full retry policy; overrides `max_session_retries`.
    """

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
        timeout: TimeoutArg = 60,
        session: httpx.Client | None = None,
        max_session_retries: int = 2,
        *,
        api_key: str | None = None,
        retry: RetryConfig | None = None,
    ) -> None:
        super().__init__(base_url, headers, cookies, timeout, max_session_retries, api_key, retry)
        self._owns_http = session is None
        self._http = session if session is not None else httpx.Client()

    def generate(
        self,
        prompt: str,
        *,
        timeout: TimeoutArg | NotGiven = NOT_GIVEN,
        **params: Unpack[GenerateParams],
    ) -> Response:
        """Generate text for `prompt` (`POST /generate`).

        Keyword arguments are those of :class:`lorax.parameters.GenerateParams` (the
        `parameters` of API.md, `stop_sequences` for `stop`); they are validated before anything
        is sent. `details` defaults to True.

        Raises:
            ValidationError: a parameter breaks a rule (nothing was sent).
            APIStatusError: the server refused or failed (a subclass per error type).
            APIConnectionError: no answer (after the retries that were safe).
        """
        return self._execute(self._core.generate(prompt, params, timeout))

    def generate_stream(
        self,
        prompt: str,
        *,
        timeout: TimeoutArg | NotGiven = NOT_GIVEN,
        **params: Unpack[StreamParams],
    ) -> Generator[StreamResponse, None, None]:
        """Stream the generation token by token (`POST /generate_stream`).

        Parameters are validated now; the request is sent when iteration starts. Leaving the loop
        early closes the connection, which cancels the generation on the server. An error event
        in the stream is raised as the mapped error; a stream that ends without its final event
        raises `IncompleteGenerationError`.
        """
        return self._iterate(self._core.generate_stream(prompt, params, timeout))

    def tokenize(
        self,
        text: str,
        add_special_tokens: bool = True,
        *,
        timeout: TimeoutArg | NotGiven = NOT_GIVEN,
    ) -> list[SimpleToken]:
        """Tokenize `text` with the server's tokenizer (`POST /tokenize`)."""
        return self._execute(self._core.tokenize(text, add_special_tokens, timeout))

    def health(self, *, timeout: TimeoutArg | NotGiven = NOT_GIVEN) -> bool:
        """True when the server can serve, False when it answers 503 (`GET /health`)."""
        return self._execute(self._core.health(timeout))

    def info(self, *, timeout: TimeoutArg | NotGiven = NOT_GIVEN) -> Info:
        """The served model and the server's limits (`GET /info`)."""
        return self._execute(self._core.info(timeout))

    def models(self, *, timeout: TimeoutArg | NotGiven = NOT_GIVEN) -> list[Model]:
        """The base model and the adapters this caller may use (`GET /v1/models`)."""
        return self._execute(self._core.models(timeout))

    def close(self) -> None:
        """Close the connection pool (unless it was passed in as `session`)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _execute(self, call: Call[T]) -> T:
        response = self._send(call, stream=False)
        return call.parse(response)

    def _send(self, call: Call[T], *, stream: bool) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.send(call.request, stream=stream)
                if response.is_success or response.status_code in call.accept_statuses:
                    return response
                try:
                    response.read()  # the error body, also for a stream
                finally:
                    response.close()
            except httpx.TransportError as exc:
                delay = self._core.retry_or_raise(call, attempt, exc)
            else:
                delay = self._core.retry_or_raise(call, attempt, response)
            _sleep(delay)
            attempt += 1

    def _iterate(self, call: Call[StreamParser]) -> Generator[StreamResponse, None, None]:
        response = self._send(call, stream=True)
        try:
            parser = call.parse(response)
            try:
                for chunk in response.iter_bytes():
                    yield from parser.feed(chunk)
            except httpx.TransportError as exc:
                # Never retried: tokens may have been delivered already.
                raise self._core.connection_error(exc, call.request) from exc
            yield from parser.close()
        finally:
            response.close()


class AsyncClient(_Base):
    """Asynchronous client of a LoRAX-compatible server; the same arguments and methods as
    :class:`Client`, awaited (`generate_stream` is an async iterator).

    Example::

        async with AsyncClient("http://127.0.0.1:8080") as client:
            response = await client.generate("Why is the sky blue?", adapter_id="some/adapter")
            async for event in client.generate_stream("Why is the sky blue?"):
                print(event.token.text, end="")

    `session` is an `httpx.AsyncClient`. An `async for` left early keeps the connection until
    the iterator is closed: wrap it in `contextlib.aclosing(...)` to cancel promptly.
    """

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
        timeout: TimeoutArg = 60,
        session: httpx.AsyncClient | None = None,
        max_session_retries: int = 2,
        *,
        api_key: str | None = None,
        retry: RetryConfig | None = None,
    ) -> None:
        super().__init__(base_url, headers, cookies, timeout, max_session_retries, api_key, retry)
        self._owns_http = session is None
        self._http = session if session is not None else httpx.AsyncClient()

    async def generate(
        self,
        prompt: str,
        *,
        timeout: TimeoutArg | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[GenerateParams],
    ) -> Response:
        """See :meth:`Client.generate`."""
        return await self._execute(self._core.generate(prompt, params, timeout))

    def generate_stream(
        self,
        prompt: str,
        *,
        timeout: TimeoutArg | NotGiven = NOT_GIVEN,
        **params: Unpack[StreamParams],
    ) -> AsyncGenerator[StreamResponse, None]:
        """See :meth:`Client.generate_stream`. Parameters are validated now, before iterating."""
        return self._iterate(self._core.generate_stream(prompt, params, timeout))

    async def tokenize(
        self,
        text: str,
        add_special_tokens: bool = True,
        *,
        timeout: TimeoutArg | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> list[SimpleToken]:
        """See :meth:`Client.tokenize`."""
        return await self._execute(self._core.tokenize(text, add_special_tokens, timeout))

    async def health(
        self,
        *,
        timeout: TimeoutArg | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> bool:
        """See :meth:`Client.health`."""
        return await self._execute(self._core.health(timeout))

    async def info(
        self,
        *,
        timeout: TimeoutArg | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> Info:
        """See :meth:`Client.info`."""
        return await self._execute(self._core.info(timeout))

    async def models(
        self,
        *,
        timeout: TimeoutArg | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> list[Model]:
        """See :meth:`Client.models`."""
        return await self._execute(self._core.models(timeout))

    async def close(self) -> None:
        """Close the connection pool (unless it was passed in as `session`)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _execute(self, call: Call[T]) -> T:
        response = await self._send(call, stream=False)
        return call.parse(response)

    async def _send(self, call: Call[T], *, stream: bool) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.send(call.request, stream=stream)
                if response.is_success or response.status_code in call.accept_statuses:
                    return response
                try:
                    await response.aread()  # the error body, also for a stream
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                delay = self._core.retry_or_raise(call, attempt, exc)
            else:
                delay = self._core.retry_or_raise(call, attempt, response)
            await _async_sleep(delay)
            attempt += 1

    async def _iterate(self, call: Call[StreamParser]) -> AsyncGenerator[StreamResponse, None]:
        response = await self._send(call, stream=True)
        try:
            parser = call.parse(response)
            try:
                async for chunk in response.aiter_bytes():
                    for item in parser.feed(chunk):
                        yield item
            except httpx.TransportError as exc:
                raise self._core.connection_error(exc, call.request) from exc
            for item in parser.close():
                yield item
        finally:
            await response.aclose()
