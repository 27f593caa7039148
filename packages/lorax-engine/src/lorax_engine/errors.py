"""Errors the engine reports as ``error`` events (their ``error_type`` is the wire value)."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: ``error_type`` goes on the wire."""

    error_type = "generation"


class ValidationError(EngineError):
    """The request breaks a rule (limits, parameter ranges): HTTP 422."""

    error_type = "validation"


class OverloadedError(EngineError):
    """Too many concurrent requests: HTTP 429."""

    error_type = "overloaded"


class NotFoundError(EngineError):
    """An adapter the caller may not see or that does not exist: HTTP 404."""

    error_type = "not_found"


def from_error_type(message: str, error_type: str) -> EngineError:
    """The engine error for a wire ``error_type`` (e.g. from an adapter failure)."""
    classes: dict[str, type[EngineError]] = {
        "validation": ValidationError,
        "overloaded": OverloadedError,
        "not_found": NotFoundError,
    }
    return classes.get(error_type, GenerationError)(message)


class GenerationError(EngineError):
    """The engine could not produce the output (adapters not enabled, internal failure): HTTP 424."""

    error_type = "generation"
