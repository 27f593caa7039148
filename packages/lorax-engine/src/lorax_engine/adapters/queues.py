"""Per-adapter request queues with time-sliced fairness, for the scheduler.

LoRAX's exchange scheduling: at most ``max_active`` adapters admit new requests at a time (the
base model, key ``""``, always may). An active adapter whose queue empties leaves the active set
at once; one that has been active for ``cycle_time_s`` while other adapters wait is rotated out,
so a hot adapter cannot starve cold ones. Waiting adapters enter in the order of their oldest
request, and among active adapters the oldest request goes first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Queue(Generic[T]):
    items: deque[tuple[float, T]] = field(default_factory=deque[tuple[float, T]])
    waiting_since: float = 0.0  # when it was queued, or last rotated out: its turn order
    activated_at: float | None = None


class AdapterQueues(Generic[T]):
    """FIFO queues of requests (any item type) keyed by adapter cache key."""

    def __init__(
        self, max_active: int, cycle_time_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_active <= 0:
            raise ValueError("max_active must be positive")
        if cycle_time_s < 0:
            raise ValueError("cycle_time_s must be >= 0")
        self.max_active = max_active
        self.cycle_time_s = cycle_time_s
        self._clock = clock
        self._queues: OrderedDict[str, _Queue[T]] = OrderedDict()

    def push(self, key: str, item: T) -> None:
        """Queue a request for adapter ``key`` ("" = the base model)."""
        self._queue(key).items.append((self._clock(), item))

    def push_front(self, key: str, item: T) -> None:
        """Put a preempted request (or one that did not fit this step) back at the head of its
        adapter's queue. It counts as older than every queued request: it was admitted once
        already, so it goes first as soon as its adapter may admit."""
        q = self._queue(key)
        oldest = min((since for since, _ in q.items), default=self._clock())
        first = min([oldest, *(head for _, head in self._heads())])
        q.items.appendleft((math.nextafter(first, -math.inf), item))  # strictly the oldest

    def peek(self, key: str) -> T | None:
        """The next request of adapter ``key`` without removing it; None when none is queued."""
        q = self._queues.get(key)
        return q.items[0][1] if q is not None and q.items else None

    def _queue(self, key: str) -> _Queue[T]:
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue(waiting_since=self._clock())
        return q

    def remove(self, key: str, item: T) -> bool:
        """Drop a queued request (cancelled); False if it was not queued."""
        q = self._queues.get(key)
        if q is None:
            return False
        for i, (_, queued) in enumerate(q.items):
            if queued is item:
                del q.items[i]
                if not q.items:
                    del self._queues[key]
                return True
        return False

    def active_keys(self) -> list[str]:
        """Adapters allowed to admit requests now (after rotating), base model excluded."""
        self._rotate()
        return [k for k, q in self._queues.items() if k and q.activated_at is not None]

    def waiting_keys(self) -> list[str]:
        """Every adapter with queued requests, oldest request first (for prefetching)."""
        return [k for k, _ in sorted(self._heads(), key=lambda kv: kv[1]) if k]

    def pop(self, ready: Callable[[str], bool]) -> tuple[str, T] | None:
        """The oldest request among the base model and the active adapters that ``ready`` accepts."""
        active = set(self.active_keys())
        best: tuple[float, str] | None = None
        for key, since in self._heads():
            if (key == "" or key in active) and ready(key) and (best is None or since < best[0]):
                best = (since, key)
        if best is None:
            return None
        key = best[1]
        q = self._queues[key]
        _, item = q.items.popleft()
        if not q.items:
            del self._queues[key]
        return key, item

    def _heads(self) -> list[tuple[str, float]]:
        return [(k, q.items[0][0]) for k, q in self._queues.items() if q.items]

    def _rotate(self) -> None:
        now = self._clock()
        active = [
            (q.activated_at, k) for k, q in self._queues.items() if k and q.activated_at is not None
        ]
        waiting = sorted(
            (q.waiting_since, k) for k, q in self._queues.items() if k and q.activated_at is None
        )
        # Expired slices give way, longest-active first, one per waiting adapter.
        expired = sorted(
            (t, k) for t, k in active if t is not None and now - t >= self.cycle_time_s
        )
        free = self.max_active - len(active)
        for (_, key), _ in zip(expired, waiting[max(free, 0) :], strict=False):
            q = self._queues[key]
            q.activated_at = None
            q.waiting_since = now  # to the back of the line: it waits behind the others now
            free += 1
        for _, key in waiting[: max(free, 0)]:
            self._queues[key].activated_at = now

    def __len__(self) -> int:
        return sum(len(q.items) for q in self._queues.values())
