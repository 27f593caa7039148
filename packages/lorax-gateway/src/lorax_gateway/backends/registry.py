"""Find engine backends by name in the ``lorax_gateway.backends`` entry-point group."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from lorax_gateway.backends.base import EngineBackend

GROUP = "lorax_gateway.backends"


def available_backends() -> list[str]:
    """Names of the installed backends."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load_backend(name: str, options: Mapping[str, Any]) -> EngineBackend:
    """Build the backend ``name`` with its ``from_options(options)`` constructor.

    The module is imported only here, so e.g. torch is loaded only when ``local`` is chosen.
    """
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        raise ValueError(f"unknown backend {name!r}; installed: {', '.join(available_backends())}")
    factory: Any = matches[0].load()
    backend = factory.from_options(dict(options))
    if not isinstance(backend, EngineBackend):
        raise TypeError(f"backend {name!r} does not implement EngineBackend")
    return backend
