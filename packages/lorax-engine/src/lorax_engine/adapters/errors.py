"""Adapter errors, each mapped to the API's status code and ``error_type`` (API.md "Errors").

Messages name the adapter and the reason, never a credential: an error travels to the client, the
logs and the traces unchanged.
"""

from __future__ import annotations


class AdapterError(Exception):
    """Base of every adapter failure; ``status`` and ``error_type`` follow API.md.

    ``code`` is a stable machine-readable reason (``"path_escape"``, ``"rank_too_large"``, ...) that
    tests and metrics can key on without parsing the message.
    """

    status: int = 424
    error_type: str = "generation"

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def to_event(self) -> dict[str, str]:
        """The engine wire protocol's error event (docs/internals.md section 2)."""
        return {"type": "error", "error": self.message, "error_type": self.error_type}


class AdapterRequestError(AdapterError):
    """The request's adapter reference itself is invalid (bad id, path escape, source disabled)."""

    status = 422
    error_type = "validation"


class AdapterNotFoundError(AdapterError):
    """The source has no such adapter, or the caller's credential cannot see it.

    Both cases answer the same way so that a private adapter's existence is not disclosed.
    """

    status = 404
    error_type = "not_found"


class AdapterLoadError(AdapterError):
    """Fetching or reading the adapter failed: missing or corrupt files, pickles, I/O errors."""

    status = 424
    error_type = "generation"


class AdapterIncompatibleError(AdapterError):
    """The adapter is well formed but cannot run on this server (architecture, shapes, rank, size)."""

    status = 422
    error_type = "validation"
