"""When and how long to wait before trying a call again.

Two kinds of failure are retried:

- the connection: always when the request provably never reached the server (refused, DNS,
  connect timeout, no free pool connection); for idempotent calls (everything except generation)
  also when it broke later.
- the status: 429 and 503 mean the server turned the request away before doing any work, so even
  generation is safe to retry; idempotent calls also retry 502 and 504.

A stream is never retried once its 200 response has arrived: tokens may already have been
delivered, and a second attempt would generate (and bill) them again.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

__all__ = ["RetryConfig", "parse_retry_after"]

# Errors raised before a single byte of the request left this process.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(slots=True, frozen=True)
class RetryConfig:
    """Retry policy of a client.

    Attributes:
        max_retries: attempts after the first one (0 turns retries off).
        initial_backoff: seconds before the first retry; doubles with every further retry.
        max_backoff: ceiling of the computed backoff.
        jitter: scale each backoff by a random factor in [0.5, 1] so that many clients that
            failed together do not retry together.
        max_retry_after: longest `Retry-After` (seconds) the client waits for; when the server
            asks for more, the error is raised at once instead (with `retry_after` set).
    """

    max_retries: int = 2
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: bool = True
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff times must be >= 0")
        if self.max_retry_after < 0:
            raise ValueError(f"max_retry_after must be >= 0, got {self.max_retry_after}")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt + 1` when the server gave no hint."""
        delay = min(self.max_backoff, self.initial_backoff * (2.0**attempt))
        if self.jitter:
            delay *= 0.5 + random.random() / 2  # not cryptographic: spreading retries only
        return delay

    def delay_after_error(
        self, attempt: int, error: httpx.TransportError, idempotent: bool
    ) -> float | None:
        """Seconds to wait before retrying after a transport error, or None to give up."""
        if attempt >= self.max_retries:
            return None
        if isinstance(error, _NOT_SENT) or idempotent:
            return self.backoff(attempt)
        return None

    def delay_after_status(
        self, attempt: int, response: httpx.Response, retry_statuses: frozenset[int]
    ) -> float | None:
        """Seconds to wait before retrying after an error status, or None to give up."""
        if attempt >= self.max_retries or response.status_code not in retry_statuses:
            return None
        retry_after = parse_retry_after(response)
        if retry_after is None:
            return self.backoff(attempt)
        return retry_after if retry_after <= self.max_retry_after else None


def parse_retry_after(response: httpx.Response, now: datetime | None = None) -> float | None:
    """The `Retry-After` header in seconds (delta-seconds or an HTTP date), None if absent or
    unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
