"""Engine backends: the gateway's only way to reach an engine (see ``base.EngineBackend``)."""

from lorax_gateway.backends.base import BackendUnavailableError, EngineBackend, EngineEvent
from lorax_gateway.backends.registry import available_backends, load_backend

__all__ = [
    "BackendUnavailableError",
    "EngineBackend",
    "EngineEvent",
    "available_backends",
    "load_backend",
]
