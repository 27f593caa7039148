"""Turns the bytes of a `generate_stream` body into `StreamResponse`s (sans-IO).

Shared by the sync and async clients: they only move bytes from the network into `feed`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pydantic

from lorax.errors import (
    APIResponseValidationError,
    IncompleteGenerationError,
    error_from_payload,
    json_object,
)
from lorax.sse import ServerSentEvent, SSEDecoder
from lorax.types import StreamResponse

__all__ = ["StreamParser"]

# OpenAI-style terminator; LoRAX does not send it, proxies in front of it sometimes do.
_DONE = "[DONE]"


class StreamParser:
    """Parses one streaming response. `feed` each chunk, then `close` at the end of the body.

    Raises the mapped :class:`lorax.errors.APIStatusError` for an error event (which ends the
    stream), and :class:`lorax.errors.IncompleteGenerationError` when the body ends before the
    event that carries `generated_text`.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._decoder = SSEDecoder()
        self._finished = False

    def feed(self, chunk: bytes) -> Iterator[StreamResponse]:
        """Parse the next piece of the body. Lazy, so that the tokens before an error event in
        the same piece are still delivered before the error is raised."""
        for event in self._decoder.feed(chunk):
            if event.data != _DONE:
                yield self._parse(event)

    def close(self) -> Iterator[StreamResponse]:
        """End of body: parse what is left and check that the stream ended properly."""
        for event in self._decoder.close():
            if event.data != _DONE:
                yield self._parse(event)
        if not self._finished:
            raise IncompleteGenerationError(
                "the stream ended before its final event", self._response, body=None
            )

    def _parse(self, event: ServerSentEvent) -> StreamResponse:
        try:
            payload: object = json.loads(event.data)
        except json.JSONDecodeError as exc:
            raise APIResponseValidationError(
                f"stream event is not JSON: {event.data[:200]!r}", self._response, body=event.data
            ) from exc
        fields = json_object(payload)
        if fields is not None and "error" in fields and "token" not in fields:
            raise error_from_payload(self._response, fields)
        try:
            item = StreamResponse.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise APIResponseValidationError(
                f"stream event has an unexpected shape: {exc}", self._response, body=payload
            ) from exc
        if item.generated_text is not None:
            self._finished = True
        return item
