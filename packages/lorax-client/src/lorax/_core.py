"""The sans-IO core shared by `Client` and `AsyncClient`.

It builds every request, parses every response, maps every error and decides every retry. The
two clients only send what it builds and sleep as long as it says, so each operation is defined
once here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

import httpx
import pydantic

from lorax._stream import StreamParser
from lorax._version import __version__
from lorax.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    error_from_payload,
    json_object,
)
from lorax.parameters import GenerateParams, StreamParams, build_request
from lorax.retry import RetryConfig, parse_retry_after
from lorax.types import Info, Model, Response, SimpleToken

__all__ = ["NOT_GIVEN", "Call", "ClientCore", "NotGiven", "TimeoutArg"]

T = TypeVar("T")

TimeoutArg = float | httpx.Timeout | None
"""Seconds (for connect, read, write and pool alike), an `httpx.Timeout`, or None for none."""


class NotGiven(Enum):
    """Type of :data:`NOT_GIVEN`."""

    NOT_GIVEN = "NOT_GIVEN"


NOT_GIVEN = NotGiven.NOT_GIVEN
"""Default of a call's `timeout`: use the client's (None would mean no timeout at all)."""

# The server turned the request away before doing any work: safe even for generation.
_RETRY_NOT_STARTED = frozenset({429, 503})
# Gateways in front of the server say 502/504 when it is briefly away: fine for idempotent calls.
_RETRY_IDEMPOTENT = frozenset({429, 502, 503, 504})

_RESPONSE = pydantic.TypeAdapter(Response | list[Response])
_INFO = pydantic.TypeAdapter(Info)
_TOKENS = pydantic.TypeAdapter(list[SimpleToken])
_MODELS = pydantic.TypeAdapter(list[Model])


@dataclass(slots=True, frozen=True)
class Call(Generic[T]):
    """One operation, ready to send.

    Attributes:
        request: the HTTP request (it can be sent again as is).
        parse: turns a successful (or `accept_statuses`) response, body read, into the result.
        idempotent: sending it twice does no harm, so it may be retried after a broken connection
            even if the server could have started on it.
        retry_statuses: error statuses after which it is retried.
        accept_statuses: error statuses that are answers rather than errors (`/health`'s 503).
    """

    request: httpx.Request
    parse: Callable[[httpx.Response], T]
    idempotent: bool
    retry_statuses: frozenset[int]
    accept_statuses: frozenset[int] = frozenset()


@dataclass(slots=True)
class ClientCore:
    """Everything a client knows that does not need I/O.

    Attributes:
        base_url: the server's root URL; routes are appended to it.
        headers: sent with every request (api_key's Authorization included).
        cookies: sent with every request.
        timeout: default timeout of every call.
        retry: the retry policy.
    """

    base_url: str
    headers: httpx.Headers
    cookies: dict[str, str]
    timeout: httpx.Timeout
    retry: RetryConfig

    @classmethod
    def create(
        cls,
        base_url: str,
        headers: dict[str, str] | None,
        cookies: dict[str, str] | None,
        timeout: TimeoutArg,
        api_key: str | None,
        retry: RetryConfig,
    ) -> ClientCore:
        """Validate a client's constructor arguments into a core."""
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        # httpx.Headers: a caller's "user-agent" replaces ours whatever its case.
        merged = httpx.Headers({"User-Agent": f"lorax-client-python/{__version__}"})
        merged.update(headers or {})
        if api_key is not None:
            # An explicit api_key wins over an Authorization header given in `headers`.
            merged["Authorization"] = f"Bearer {api_key}"
        return cls(
            base_url=base_url.rstrip("/"),
            headers=merged,
            cookies=dict(cookies or {}),
            timeout=_as_timeout(timeout),
            retry=retry,
        )

    # --- operations -------------------------------------------------------------------------

    def generate(
        self, prompt: str, params: GenerateParams, timeout: TimeoutArg | NotGiven
    ) -> Call[Response]:
        """`POST /generate`. Validates the parameters before anything is sent."""
        body = build_request(prompt, params, stream=False).wire_body()
        return Call(
            self._request("POST", "/generate", timeout, json_body=body),
            _parse_generate,
            idempotent=False,
            retry_statuses=_RETRY_NOT_STARTED,
        )

    def generate_stream(
        self, prompt: str, params: StreamParams, timeout: TimeoutArg | NotGiven
    ) -> Call[StreamParser]:
        """`POST /generate_stream`. Its `parse` gives the parser for the body that follows."""
        body = build_request(prompt, params, stream=True).wire_body()
        request = self._request(
            "POST", "/generate_stream", timeout, json_body=body, accept="text/event-stream"
        )
        return Call(request, StreamParser, idempotent=False, retry_statuses=_RETRY_NOT_STARTED)

    def tokenize(
        self, text: str, add_special_tokens: bool, timeout: TimeoutArg | NotGiven
    ) -> Call[list[SimpleToken]]:
        """`POST /tokenize`."""
        body = {"inputs": text, "add_special_tokens": add_special_tokens}
        return Call(
            self._request("POST", "/tokenize", timeout, json_body=body),
            lambda r: _validate(r, _TOKENS),
            idempotent=True,
            retry_statuses=_RETRY_IDEMPOTENT,
        )

    def health(self, timeout: TimeoutArg | NotGiven) -> Call[bool]:
        """`GET /health`: True when it answers 2xx, False for 503 (up, but cannot serve)."""
        return Call(
            self._request("GET", "/health", timeout),
            lambda r: r.is_success,
            idempotent=True,
            # A 503 is the answer here, not a reason to wait.
            retry_statuses=frozenset({429}),
            accept_statuses=frozenset({503}),
        )

    def info(self, timeout: TimeoutArg | NotGiven) -> Call[Info]:
        """`GET /info`."""
        return Call(
            self._request("GET", "/info", timeout),
            lambda r: _validate(r, _INFO),
            idempotent=True,
            retry_statuses=_RETRY_IDEMPOTENT,
        )

    def models(self, timeout: TimeoutArg | NotGiven) -> Call[list[Model]]:
        """`GET /v1/models` (OpenAI shape: `{"object": "list", "data": [...]}`)."""
        return Call(
            self._request("GET", "/v1/models", timeout),
            _parse_models,
            idempotent=True,
            retry_statuses=_RETRY_IDEMPOTENT,
        )

    # --- outcomes ---------------------------------------------------------------------------

    def status_error(self, response: httpx.Response) -> APIStatusError:
        """The error for an error response whose body has been read."""
        return error_from_payload(
            response, _body(response), retry_after=parse_retry_after(response)
        )

    def retry_or_raise(
        self, call: Call[Any], attempt: int, outcome: httpx.Response | httpx.TransportError
    ) -> float:
        """Seconds to wait before attempt `attempt + 1` of `call`, which just failed with
        `outcome` (an error response, body read, or a transport error); raises the mapped error
        when it must not be retried."""
        if isinstance(outcome, httpx.Response):
            delay = self.retry.delay_after_status(attempt, outcome, call.retry_statuses)
            if delay is None:
                raise self.status_error(outcome)
            return delay
        delay = self.retry.delay_after_error(attempt, outcome, call.idempotent)
        if delay is None:
            raise self.connection_error(outcome, call.request) from outcome
        return delay

    def connection_error(
        self, error: httpx.TransportError, request: httpx.Request
    ) -> APIConnectionError:
        """The error for a failed exchange."""
        if isinstance(error, httpx.TimeoutException):
            return APITimeoutError(f"request timed out: {error!r}", request)
        return APIConnectionError(f"connection failed: {error!r}", request)

    # --- helpers ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        timeout: TimeoutArg | NotGiven,
        *,
        json_body: dict[str, Any] | None = None,
        accept: str = "application/json",
    ) -> httpx.Request:
        # The per-call timeout travels in the request, as httpx's own clients do it.
        chosen = self.timeout if timeout is NOT_GIVEN else _as_timeout(timeout)
        headers = httpx.Headers({"Accept": accept})
        headers.update(self.headers)
        return httpx.Request(
            method,
            self.base_url + path,
            headers=headers,
            cookies=self.cookies,
            json=json_body,
            extensions={"timeout": chosen.as_dict()},
        )


def _as_timeout(timeout: TimeoutArg) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
    return httpx.Timeout(timeout)


def _body(response: httpx.Response) -> object | None:
    if not response.content:
        return None
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text


def _validate(response: httpx.Response, adapter: pydantic.TypeAdapter[T]) -> T:
    body = _body(response)
    try:
        return adapter.validate_python(body)
    except pydantic.ValidationError as exc:
        raise APIResponseValidationError(
            f"unexpected response from {response.request.url.path}: {exc}", response, body=body
        ) from exc


def _parse_generate(response: httpx.Response) -> Response:
    parsed = _validate(response, _RESPONSE)
    # `POST /` answers with a one-element list; some proxies forward that shape for /generate.
    if isinstance(parsed, list):
        if not parsed:
            raise APIResponseValidationError("empty response list", response, body=[])
        return parsed[0]
    return parsed


def _parse_models(response: httpx.Response) -> list[Model]:
    body = _body(response)
    fields = json_object(body)
    data = fields.get("data") if fields is not None else body
    try:
        return _MODELS.validate_python(data)
    except pydantic.ValidationError as exc:
        raise APIResponseValidationError(
            f"unexpected response from /v1/models: {exc}", response, body=body
        ) from exc
