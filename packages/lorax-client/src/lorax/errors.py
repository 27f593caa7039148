"""The error tree of the client, and the mapping from a server's error body to it.

Everything the client raises on purpose derives from :class:`LoraxError`::

    LoraxError
    ├── ValidationError                 a request the server would refuse (client- or server-side)
    └── APIError                        anything that involved the network
        ├── APIResponseValidationError  a success response whose body is not what LoRAX sends
        ├── APIConnectionError          no HTTP answer (refused, reset, DNS, ...)
        │   └── APITimeoutError
        └── APIStatusError              the server answered with an error (status or stream event)
            ├── BadRequestError                 400
            ├── AuthenticationError             401
            ├── PermissionDeniedError           403
            ├── NotFoundError                   404
            ├── UnprocessableEntityError        422 / error_type "validation" (also a ValidationError)
            ├── GenerationError                 424 / error_type "generation"
            ├── IncompleteGenerationError       error_type "incomplete_generation", or a cut stream
            ├── RateLimitExceededError          429
            │   └── OverloadedError             error_type "overloaded"
            ├── ShardNotReadyError              503 / error_type "healthcheck"
            ├── ShardTimeoutError               504
            └── UnknownError                    any other status

The upstream lorax-client names (`ValidationError`, `GenerationError`, `OverloadedError`, ...) are
kept so that `except lorax.errors.GenerationError` works unchanged after switching clients.
"""

from __future__ import annotations

from typing import Any, cast

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "GenerationError",
    "IncompleteGenerationError",
    "LoraxError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitExceededError",
    "ShardNotReadyError",
    "ShardTimeoutError",
    "UnknownError",
    "UnprocessableEntityError",
    "ValidationError",
    "error_from_payload",
    "json_object",
]


class LoraxError(Exception):
    """Base class of every error this package raises on purpose."""

    message: str

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(LoraxError):
    """The request is invalid. Raised before any network I/O when the client can tell on its own
    (then it carries no request or response), or as :class:`UnprocessableEntityError` when the
    server says so."""


class APIError(LoraxError):
    """An error that involved talking to the server.

    Attributes:
        request: the request that failed.
        body: the decoded JSON body of the error (or its raw text, or None).
    """

    request: httpx.Request
    body: object | None

    def __init__(self, message: str, request: httpx.Request, *, body: object | None = None) -> None:
        super().__init__(message)
        self.request = request
        self.body = body


class APIResponseValidationError(APIError):
    """The server answered 2xx, but the body does not have the shape of the LoRAX API."""

    response: httpx.Response
    status_code: int

    def __init__(self, message: str, response: httpx.Response, *, body: object | None) -> None:
        super().__init__(message, response.request, body=body)
        self.response = response
        self.status_code = response.status_code


class APIConnectionError(APIError):
    """No HTTP answer: the connection failed, was reset, or the stream was cut mid-way."""

    def __init__(self, message: str, request: httpx.Request) -> None:
        super().__init__(message, request)


class APITimeoutError(APIConnectionError):
    """The call did not finish within its timeout."""


class APIStatusError(APIError):
    """The server answered with an error: an HTTP error status, or an error event in a stream
    that had started with 200 (then `status_code` is 200 and `error_type` tells what failed).

    Attributes:
        response: the HTTP response (its body already read for non-streaming errors).
        status_code: the HTTP status.
        error_type: the server's `error_type` field, when it sent one.
        request_id: the `x-request-id` response header, to quote when reporting a problem.
        retry_after: seconds the server asked to wait (`Retry-After`), when it said so.
    """

    response: httpx.Response
    status_code: int
    error_type: str | None
    request_id: str | None
    retry_after: float | None

    def __init__(
        self,
        message: str,
        response: httpx.Response,
        *,
        body: object | None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, response.request, body=body)
        self.response = response
        self.status_code = response.status_code
        self.error_type = error_type
        self.request_id = response.headers.get("x-request-id")
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status_code}"
        if self.request_id:
            where += f", request id {self.request_id}"
        return f"{self.message} ({where})"


class BadRequestError(APIStatusError):
    """400: the server could not read the request."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403: the API key may not do this."""


class NotFoundError(APIStatusError):
    """404: unknown route, or an adapter this caller may not see."""


class UnprocessableEntityError(APIStatusError, ValidationError):
    """422 or `error_type: validation`: the server refused the request's parameters."""


class GenerationError(APIStatusError):
    """424 or `error_type: generation`: generation failed (adapter load failures included)."""


class IncompleteGenerationError(APIStatusError):
    """The generation stopped before its end: the server said so, or the stream closed before its
    final event."""


class RateLimitExceededError(APIStatusError):
    """429: a rate or concurrency limit was hit. `retry_after` says how long to wait."""


class OverloadedError(RateLimitExceededError):
    """`error_type: overloaded`: the server's queue is full."""


class ShardNotReadyError(APIStatusError):
    """503: the engine is not (yet) able to serve."""


class ShardTimeoutError(APIStatusError):
    """504: the engine did not answer in time."""


class UnknownError(APIStatusError):
    """Any other error status."""


def json_object(value: object) -> dict[str, Any] | None:
    """`value` (decoded JSON) as a JSON object, or None when it is something else."""
    if isinstance(value, dict):
        return cast("dict[str, Any]", value)
    return None


# error_type wins over the status: a 200 stream can carry a "generation" error event.
_BY_ERROR_TYPE: dict[str, type[APIStatusError]] = {
    "validation": UnprocessableEntityError,
    "generation": GenerationError,
    "incomplete_generation": IncompleteGenerationError,
    "overloaded": OverloadedError,
    "healthcheck": ShardNotReadyError,
    "not_found": NotFoundError,
}

_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: UnprocessableEntityError,
    424: GenerationError,
    429: RateLimitExceededError,
    503: ShardNotReadyError,
    504: ShardTimeoutError,
}


def error_from_payload(
    response: httpx.Response, body: object | None, *, retry_after: float | None = None
) -> APIStatusError:
    """Map an error body (`{"error": str, "error_type": str}` from LoRAX, or anything else a proxy
    in front of it sent) and the response's status to the matching :class:`APIStatusError`."""
    message: str | None = None
    error_type: str | None = None
    fields = json_object(body)
    if fields is not None:
        raw_message = fields.get("error", fields.get("message", fields.get("detail")))
        if isinstance(raw_message, str):
            message = raw_message
        elif raw_message is not None:
            message = str(raw_message)
        raw_type = fields.get("error_type")
        if isinstance(raw_type, str):
            error_type = raw_type
    elif isinstance(body, str) and body.strip():
        message = body.strip()
    if message is None:
        message = response.reason_phrase or f"HTTP {response.status_code}"
    cls = _BY_ERROR_TYPE.get(error_type or "") or _BY_STATUS.get(response.status_code, UnknownError)
    return cls(message, response, body=body, error_type=error_type, retry_after=retry_after)
