"""The ``EngineBackend`` protocol (docs/internals.md section 2, seen from the gateway).

A backend turns an engine request dict into an async iterator of event dicts:
``prefill`` (optional, first) → ``token``* → exactly one ``end`` or ``error``. Closing the iterator
early cancels the request in the engine. Backends are found by name in the
``lorax_gateway.backends`` entry-point group; each entry point names a class with a
``from_options(options)`` constructor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

EngineEvent = dict[str, Any]


class BackendUnavailableError(Exception):
    """No engine could take the request (all down, or the connection failed before any event)."""


@runtime_checkable
class EngineBackend(Protocol):
    """What the gateway needs from an engine, wherever it runs."""

    #: Name of the backend (the entry-point name), shown in ``/info``.
    name: str
    #: True when the upstream renders chat messages itself (``openai``): the gateway then sends
    #: ``messages`` in the request instead of calling :meth:`apply_chat_template`.
    renders_chat: bool

    async def start(self) -> None:
        """Connect / load; called once at application start-up."""
        ...

    async def close(self) -> None:
        """Release connections and the engine; called once at shutdown."""
        ...

    def generate(
        self, request: dict[str, Any], trace_headers: Mapping[str, str]
    ) -> AsyncIterator[EngineEvent]:
        """Run one request; yields engine events. ``trace_headers`` carry W3C trace context.

        Raises :class:`BackendUnavailableError` before the first event when no engine can take it.
        """
        ...

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[dict[str, Any]]:
        """``[{id, text, start, stop}]`` for ``text``."""
        ...

    async def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        adapter_id: str | None,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> str:
        """The prompt for a chat, rendered with the adapter's or the model's chat template."""
        ...

    async def info(self) -> dict[str, Any]:
        """Engine facts: model_id, dtype, device, limits, version."""
        ...

    async def health(self) -> bool:
        """True when at least one engine answers."""
        ...

    async def metrics_texts(self) -> list[tuple[str, str]]:
        """``(engine label, Prometheus text)`` of each reachable engine."""
        ...
