"""Per-adapter request queues with time-sliced fairness, for the scheduler.

LoRAX's exchange scheduling: at most ``max_active`` adapters admit new requests at a time (the
base model, key ``""``, always may). An active adapter whose queue empties leaves the active set
at once; one that has admitted requests for ``cycle_time_s`` while other adapters wait is
rotated out, so a hot adapter cannot starve cold ones. The slice starts at an adapter's first
admission in its turn, not when the turn begins: an adapter still loading, or waiting for a slot
whose requests drain, keeps its turn (a slice counted from activation ran out under a loaded
host before the cold adapter ever ran, and the hot one took the turn back, again and again).
Waiting adapters enter in the order of their oldest request, and among active adapters the oldest
request goes first.
"""

from __future__ import annotations

import itertools
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
    serving_since: float | None = None  # first admission in the current turn


class AdapterQueues(Generic[T]):
    """FIFO queues of requests (any item type) keyed by adapter cache key.

    Every operation costs O(1) or O(``max_active``), never O(adapters with queued requests): the
    engine calls them several times per step with thousands of adapters waiting.
    """

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
        self._queues: dict[str, _Queue[T]] = {}
        # Adapters (base model excluded) with queued requests, in their turn order: a queue joins
        # the back when created or rotated out, both at the clock's current time.
        self._inactive: OrderedDict[str, None] = OrderedDict()
        self._active: OrderedDict[str, None] = OrderedDict()  # in activation order
        # The active adapters that have admitted in their turn, in order of that first admission
        # (so the expired slices are always at the front).
        self._serving: OrderedDict[str, None] = OrderedDict()
        self._count = 0
        # Lowest arrival time handed out so far (every queued head is at or above it): a put-back
        # request goes just below it.
        self._floor = math.inf

    def push(self, key: str, item: T) -> None:
        """Queue a request for adapter ``key`` ("" = the base model)."""
        now = self._clock()
        self._floor = min(self._floor, now)
        self._queue(key).items.append((now, item))
        self._count += 1

    def push_front(self, key: str, item: T) -> None:
        """Put a preempted request (or one that did not fit this step) back at the head of its
        adapter's queue. It counts as older than every queued request: it was admitted once
        already, so it goes first as soon as its adapter may admit."""
        q = self._queue(key)
        self._floor = math.nextafter(min(self._floor, self._clock()), -math.inf)
        q.items.appendleft((self._floor, item))  # strictly the oldest
        self._count += 1

    def peek(self, key: str) -> T | None:
        """The next request of adapter ``key`` without removing it; None when none is queued."""
        q = self._queues.get(key)
        return q.items[0][1] if q is not None and q.items else None

    def _queue(self, key: str) -> _Queue[T]:
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue()
            if key:
                self._inactive[key] = None
        return q

    def _drop(self, key: str) -> None:
        del self._queues[key]
        self._inactive.pop(key, None)
        self._active.pop(key, None)
        self._serving.pop(key, None)

    def remove(self, key: str, item: T) -> bool:
        """Drop a queued request (cancelled); False if it was not queued."""
        q = self._queues.get(key)
        if q is None:
            return False
        for i, (_, queued) in enumerate(q.items):
            if queued is item:
                del q.items[i]
                self._count -= 1
                if not q.items:
                    self._drop(key)
                return True
        return False

    def active_keys(self) -> list[str]:
        """Adapters allowed to admit requests now (after rotating), base model excluded."""
        self._rotate()
        return list(self._active)

    def waiting_keys(self) -> list[str]:
        """Every adapter with queued requests, oldest request first (for prefetching; O(n log n))."""
        heads = [(q.items[0][0], k) for k, q in self._queues.items() if k and q.items]
        return [k for _, k in sorted(heads)]

    def pop(self, ready: Callable[[str], bool]) -> tuple[str, T] | None:
        """The oldest request among the base model and the active adapters that ``ready`` accepts."""
        self._rotate()
        best: tuple[float, str] | None = None
        for key in ("", *self._active):
            q = self._queues.get(key)
            if q is None:
                continue
            since = q.items[0][0]
            if (best is None or since < best[0]) and ready(key):
                best = (since, key)
        if best is None:
            return None
        key = best[1]
        q = self._queues[key]
        if key and q.serving_since is None:
            q.serving_since = self._clock()
            self._serving[key] = None
        _, item = q.items.popleft()
        self._count -= 1
        if not q.items:
            self._drop(key)
        return key, item

    def _rotate(self) -> None:
        now = self._clock()
        free = self.max_active - len(self._active)
        # Expired slices give way, longest-serving first, one per adapter waiting beyond the
        # free places; serving adapters are in the order their slices began, so the expired
        # ones come first.
        out: list[str] = []
        excess = len(self._inactive) - max(free, 0)
        for key in self._serving:
            if len(out) >= excess:
                break
            since = self._queues[key].serving_since
            assert since is not None
            if now - since < self.cycle_time_s:
                break
            out.append(key)
        for key in out:
            del self._active[key]
            del self._serving[key]
            self._queues[key].serving_since = None
        free += len(out)
        # The waiting adapters enter in turn order; the ones just rotated out queue behind them.
        entering = list(itertools.islice(self._inactive, max(free, 0)))
        for key in entering:
            del self._inactive[key]
            self._active[key] = None
        for key in out:
            self._inactive[key] = None

    def __len__(self) -> int:
        return self._count
