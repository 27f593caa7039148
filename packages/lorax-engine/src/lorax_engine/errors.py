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


class GenerationError(EngineError):
    """The engine could not produce the output (adapters not enabled, internal failure): HTTP 424."""

    error_type = "generation"
