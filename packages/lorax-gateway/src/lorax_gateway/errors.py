"""The one error shape of the public API: ``{"error": str, "error_type": str}``.

Every failure, whether raised by our code, by Litestar (malformed JSON, unknown route, body too
large) or by an engine event, ends up as a :class:`GatewayError` so that clients see a single
shape and status mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

logger = logging.getLogger("lorax_gateway.errors")

#: HTTP status of each error type (API.md "Errors").
STATUS_BY_ERROR_TYPE: dict[str, int] = {
    "validation": 422,
    "generation": 424,
    "overloaded": 429,
    "not_found": 404,
    "authentication": 401,
    "forbidden": 403,
    "payload_too_large": 413,
    "unavailable": 503,
    "healthcheck": 503,
    "not_supported": 501,
    "internal": 500,
}


class GatewayError(Exception):
    """An error with its public ``error_type``, HTTP status and optional response headers."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status_code = status_code or STATUS_BY_ERROR_TYPE.get(error_type, 500)
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, str]:
        """The wire body of this error."""
        return {"error": self.message, "error_type": self.error_type}


def error_event_to_exception(event: Mapping[str, Any]) -> GatewayError:
    """Turn an engine ``error`` event into a :class:`GatewayError`."""
    error_type = str(event.get("error_type") or "generation")
    return GatewayError(error_type, str(event.get("error") or "generation failed"))


def _validation_message(exc: ValidationException) -> str:
    # Litestar puts pydantic's per-field errors in `extra`; name the field so the caller can fix it.
    extra: Any = exc.extra
    if isinstance(extra, list) and extra:
        parts: list[str] = []
        for item in extra[:5]:  # pyright: ignore[reportUnknownVariableType]
            if isinstance(item, dict):
                key = item.get("key")  # pyright: ignore[reportUnknownMemberType,reportUnknownVariableType]
                message = item.get("message")  # pyright: ignore[reportUnknownMemberType,reportUnknownVariableType]
                parts.append(f"{key}: {message}" if key else str(message))  # pyright: ignore[reportUnknownArgumentType]
        if parts:
            return "; ".join(parts)
    return str(exc.detail)


def to_gateway_error(exc: Exception) -> GatewayError:
    """Map any exception raised while serving a request to a :class:`GatewayError`."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ValidationException):
        return GatewayError("validation", _validation_message(exc))
    if isinstance(exc, HTTPException):
        status = exc.status_code
        detail = str(exc.detail)
        if status == 400:
            # Malformed JSON and bad parameters are client input errors: same contract as 422.
            return GatewayError("validation", detail)
        if status == 413:
            return GatewayError("payload_too_large", "request body too large")
        error_type = {404: "not_found", 401: "authentication", 403: "forbidden", 429: "overloaded"}
        return GatewayError(
            error_type.get(status, "validation" if status < 500 else "internal"),
            detail,
            status_code=status,
            headers=exc.headers or None,
        )
    logger.exception("unhandled error")
    return GatewayError("internal", "internal server error")


def exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Litestar exception handler that always answers ``{error, error_type}``."""
    del request
    err = to_gateway_error(exc)
    return Response(
        content=err.body(),
        status_code=err.status_code,
        headers=err.headers,
        media_type=MediaType.JSON,
    )
