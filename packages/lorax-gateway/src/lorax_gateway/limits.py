"""Per-tenant limits: concurrent requests, requests per minute, tokens per minute.

Windows are sliding 60-second windows kept as deques of timestamps, so a burst is refused
exactly until its oldest entry ages out, and ``Retry-After`` says when that is.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from lorax_gateway.errors import GatewayError

WINDOW_S = 60.0


@dataclass(slots=True, frozen=True)
class TenantLimits:
    """Limits of one tenant; None means unlimited."""

    max_concurrent_requests: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_concurrent_requests", "requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")


@dataclass(slots=True)
class TenantUsage:
    """Totals since start-up (kept across tenants-file reloads)."""

    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    rejected: int = 0


@dataclass(slots=True)
class TenantLimiter:
    """Admission state of one tenant. Single-threaded (the event loop), so no locks."""

    limits: TenantLimits
    in_flight: int = 0
    usage: TenantUsage = field(default_factory=TenantUsage)
    _request_times: deque[float] = field(default_factory=deque[float])
    _token_events: deque[tuple[float, int]] = field(default_factory=deque[tuple[float, int]])
    _tokens_in_window: int = 0

    def _expire(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self._request_times and self._request_times[0] <= horizon:
            self._request_times.popleft()
        while self._token_events and self._token_events[0][0] <= horizon:
            self._tokens_in_window -= self._token_events.popleft()[1]

    def acquire(self, now: float | None = None) -> None:
        """Admit one request or raise 429 ``overloaded`` with ``Retry-After``."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        lim = self.limits
        if (
            lim.max_concurrent_requests is not None
            and self.in_flight >= lim.max_concurrent_requests
        ):
            self._reject("too many concurrent requests for this tenant", 1.0)
        if (
            lim.requests_per_minute is not None
            and len(self._request_times) >= lim.requests_per_minute
        ):
            self._reject(
                "requests per minute limit reached", self._request_times[0] + WINDOW_S - now
            )
        if lim.tokens_per_minute is not None and self._tokens_in_window >= lim.tokens_per_minute:
            # Wait until enough of the window's tokens age out to get back under the limit.
            excess = self._tokens_in_window - lim.tokens_per_minute
            freed = 0
            retry = WINDOW_S
            for ts, tokens in self._token_events:
                freed += tokens
                if freed > excess:
                    retry = ts + WINDOW_S - now
                    break
            self._reject("tokens per minute limit reached", retry)
        self._request_times.append(now)
        self.in_flight += 1
        self.usage.requests += 1

    def _reject(self, message: str, retry_after_s: float) -> None:
        self.usage.rejected += 1
        raise GatewayError(
            "overloaded", message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))}
        )

    def release(self, prompt_tokens: int, generated_tokens: int, now: float | None = None) -> None:
        """End one admitted request and charge its tokens to the window and the usage."""
        now = time.monotonic() if now is None else now
        self.in_flight -= 1
        tokens = prompt_tokens + generated_tokens
        if tokens:
            self._token_events.append((now, tokens))
            self._tokens_in_window += tokens
        self.usage.prompt_tokens += prompt_tokens
        self.usage.generated_tokens += generated_tokens

    def with_limits(self, limits: TenantLimits) -> TenantLimiter:
        """The same state under new limits (a tenants-file reload keeps windows and usage)."""
        self.limits = limits
        return self
