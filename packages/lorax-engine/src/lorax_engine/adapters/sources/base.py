"""The source interface, and the registry that dispatches a reference to its source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lorax_engine.adapters.errors import AdapterRequestError
from lorax_engine.adapters.ref import AdapterRef


@dataclass(slots=True, frozen=True)
class FetchedAdapter:
    """An adapter's files on local disk, ready for the PEFT loader."""

    directory: Path


class AdapterSource(Protocol):
    """Fetches one adapter's files to local disk. Blocking: called on the loader thread pool."""

    def fetch(self, ref: AdapterRef) -> FetchedAdapter:
        """Return the directory holding ``adapter_config.json`` and the weights, or raise an
        :class:`~lorax_engine.adapters.errors.AdapterError`."""
        ...


class SourceRegistry:
    """Maps ``adapter_source`` names to configured sources; a missing name is a 422."""

    def __init__(self, sources: Mapping[str, AdapterSource]) -> None:
        self._sources = dict(sources)

    def fetch(self, ref: AdapterRef) -> FetchedAdapter:
        source = self._sources.get(ref.source)
        if source is None:
            raise AdapterRequestError(
                f"adapter source {ref.source!r} is not enabled on this server", code="bad_source"
            )
        return source.fetch(ref)
