"""The ``local`` backend: ``lorax_engine.AsyncEngine`` in the gateway's own process.

This is the only module of the gateway that imports ``lorax_engine`` (and so torch); it is
loaded only when ``local`` is the chosen backend (``lorax-launcher``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from lorax_gateway.backends.base import EngineEvent


def _engine_config(options: Mapping[str, Any]) -> Any:
    """An ``EngineConfig`` from flat options; LoRAX limit flags go to its ``Limits``."""
    from lorax_engine.config import EngineConfig
    from lorax_engine.params import Limits

    config_fields = {f.name for f in dataclasses.fields(EngineConfig)}
    limit_fields = {f.name for f in dataclasses.fields(Limits)}
    unknown = set(options) - config_fields - limit_fields
    if unknown:
        raise ValueError(f"the local engine does not support: {', '.join(sorted(unknown))}")
    limits = Limits(**{k: v for k, v in options.items() if k in limit_fields})
    return EngineConfig(
        limits=limits, **{k: v for k, v in options.items() if k in config_fields and k != "limits"}
    )


class LocalBackend:
    """Wraps an in-process ``AsyncEngine``; its events pass through unchanged."""

    name = "local"
    renders_chat = False

    def __init__(self, options: Mapping[str, Any], engine: Any = None) -> None:
        self.options = dict(options)
        self._engine: Any = engine

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LocalBackend:
        """Options: ``EngineConfig`` and ``Limits`` field names (``model_id``, ``dtype``, ...)."""
        _engine_config(options)  # validate flags now, before the server starts
        return cls(options)

    @property
    def engine(self) -> Any:
        """The ``AsyncEngine`` (loaded in :meth:`start`)."""
        if self._engine is None:
            raise RuntimeError("LocalBackend.start() was not called")
        return self._engine

    async def start(self) -> None:
        """Load the model off the event loop (it can take a while)."""
        if self._engine is None:
            from lorax_engine.async_engine import AsyncEngine

            config = _engine_config(self.options)
            self._engine = await asyncio.to_thread(AsyncEngine.from_config, config)

    async def close(self) -> None:
        """Stop the engine's core thread."""
        if self._engine is not None:
            await self._engine.shutdown()

    def generate(
        self, request: dict[str, Any], trace_headers: Mapping[str, str]
    ) -> AsyncIterator[EngineEvent]:
        """``AsyncEngine.generate`` (same process: trace context stays in the gateway's spans)."""
        del trace_headers
        events: AsyncIterator[EngineEvent] = self.engine.generate(request)
        return events

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[dict[str, Any]]:
        """``AsyncEngine.tokenize``."""
        tokens: list[dict[str, Any]] = await self.engine.tokenize(text, add_special_tokens)
        return tokens

    async def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        adapter_id: str | None,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> str:
        """``AsyncEngine.apply_chat_template``."""
        prompt: str = await self.engine.apply_chat_template(
            [dict(m) for m in messages], adapter_id, [dict(t) for t in tools] if tools else None
        )
        return prompt

    async def info(self) -> dict[str, Any]:
        """``AsyncEngine.info()``."""
        info: dict[str, Any] = dict(self.engine.info())
        return info

    async def health(self) -> bool:
        """``AsyncEngine.health()``."""
        ok: bool = bool(await self.engine.health())
        return ok

    async def metrics_texts(self) -> list[tuple[str, str]]:
        """The in-process engine's Prometheus text."""
        text: str = self.engine.metrics_text()
        return [("local", text)]
