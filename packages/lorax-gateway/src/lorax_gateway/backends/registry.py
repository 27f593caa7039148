"""Find engine backends by name in the ``lorax_gateway.backends`` entry-point group."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from lorax_gateway.backends.base import EngineBackend

GROUP = "lorax_gateway.backends"

#: The gateway's own backends, also usable from a source checkout without installed metadata
#: (e.g. ``PYTHONPATH=packages/lorax-gateway/src``). Installed entry points take precedence.
BUILTIN = {
    "local": "lorax_gateway.backends.local:LocalBackend",
    "http": "lorax_gateway.backends.http:HttpBackend",
    "openai": "lorax_gateway.backends.openai_upstream:OpenAIBackend",
    "synthetic": "lorax_gateway.backends.synthetic:SyntheticBackend",
}


def available_backends() -> list[str]:
    """Names of the installed backends."""
    return sorted({ep.name for ep in entry_points(group=GROUP)} | set(BUILTIN))


def _load(name: str) -> Any:
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if matches:
        return matches[0].load()
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise ValueError(f"unknown backend {name!r}; installed: {', '.join(available_backends())}")


def load_backend(name: str, options: Mapping[str, Any]) -> EngineBackend:
    """Build the backend ``name`` with its ``from_options(options)`` constructor.

    The module is imported only here, so e.g. torch is loaded only when ``local`` is chosen.
    """
    factory = _load(name)
    backend = factory.from_options(dict(options))
    if not isinstance(backend, EngineBackend):
        raise TypeError(f"backend {name!r} does not implement EngineBackend")
    return backend
