"""Per-adapter queues: FIFO within an adapter, time-sliced fairness across adapters."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from lorax_engine.adapters import AdapterQueues


def _always(_key: str) -> bool:
    return True


def test_fifo_across_base_and_active_adapters() -> None:
    now = [0.0]
    q: AdapterQueues[str] = AdapterQueues(max_active=2, cycle_time_s=10, clock=lambda: now[0])
    for i, key in enumerate(["a", "", "b", "a"]):
        now[0] = float(i)
        q.push(key, f"{key or 'base'}{i}")
    popped = [q.pop(_always) for _ in range(4)]
    assert [p[1] for p in popped if p] == ["a0", "base1", "b2", "a3"]
    assert q.pop(_always) is None
    assert len(q) == 0


def test_a_hot_adapter_cannot_starve_cold_ones() -> None:
    now = [0.0]
    q: AdapterQueues[int] = AdapterQueues(max_active=1, cycle_time_s=1.0, clock=lambda: now[0])
    for i in range(100):
        q.push("hot", i)
    q.push("cold", -1)
    served: list[str] = []
    for _ in range(20):
        item = q.pop(_always)
        assert item is not None
        served.append(item[0])
        now[0] += 0.25  # each admission takes a quarter of a second
        q.push("hot", 1000)  # the hot adapter keeps receiving traffic
    assert "cold" in served
    assert served.index("cold") <= 5  # within one cycle (4 admissions) plus the switch


def test_a_turn_starts_at_its_first_admission() -> None:
    """An adapter whose turn came while it still loads keeps the turn until it has admitted for
    a whole slice: the hot adapter that had the turn does not take it back meanwhile."""
    now = [0.0]
    q: AdapterQueues[str] = AdapterQueues(max_active=1, cycle_time_s=1.0, clock=lambda: now[0])
    q.push("hot", "h0")
    q.push("hot", "h1")
    assert q.pop(_always) == ("hot", "h0")  # hot's slice starts
    q.push("cold", "c0")
    now[0] = 1.5  # hot's slice is over and cold waits: cold's turn
    loading = {"cold"}
    for t in (1.5, 3.0, 10.0):  # a slow load: nothing else may admit in cold's turn
        now[0] = t
        assert q.pop(lambda key: key not in loading) is None
        assert q.active_keys() == ["cold"]
    loading.clear()
    q.push("cold", "c1")
    assert q.pop(_always) == ("cold", "c0")  # cold's slice starts now (t = 10)
    now[0] = 10.5
    assert q.pop(_always) == ("cold", "c1")  # still within its slice although hot waits
    q.push("cold", "c2")
    now[0] = 11.0
    assert q.pop(_always) == ("hot", "h1")  # the slice is over: hot's turn again


def test_not_ready_adapters_are_skipped_and_waiting_order_is_kept() -> None:
    now = [0.0]
    q: AdapterQueues[str] = AdapterQueues(max_active=3, cycle_time_s=5, clock=lambda: now[0])
    q.push("a", "a0")
    now[0] = 1
    q.push("b", "b0")
    assert q.waiting_keys() == ["a", "b"]
    assert q.pop(lambda key: key != "a") == ("b", "b0")  # a is still loading: b goes first
    assert q.remove("a", "a0")
    assert not q.remove("a", "a0")
    assert len(q) == 0


def test_preempted_request_goes_back_to_the_head() -> None:
    q: AdapterQueues[str] = AdapterQueues(max_active=1, cycle_time_s=1)
    q.push("a", "second")
    q.push_front("a", "first")
    assert q.pop(_always) == ("a", "first")


def test_empty_adapter_leaves_the_active_set_at_once() -> None:
    q: AdapterQueues[str] = AdapterQueues(max_active=1, cycle_time_s=100)
    q.push("a", "a0")
    q.push("b", "b0")
    assert q.active_keys() == ["a"]
    assert q.pop(_always) == ("a", "a0")
    assert q.active_keys() == ["b"]


@pytest.mark.parametrize(("max_active", "cycle"), [(0, 1.0), (1, -1.0)])
def test_bad_settings(max_active: int, cycle: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        AdapterQueues(max_active, cycle)


def test_a_request_put_back_goes_first_once_its_adapter_may_admit() -> None:
    now = [0.0]
    q: AdapterQueues[str] = AdapterQueues(max_active=2, cycle_time_s=5, clock=lambda: now[0])
    q.push("", "base0")
    now[0] = 1
    q.push("a", "a1")
    assert q.peek("a") == "a1"
    assert q.peek("b") is None
    q.push_front("a", "preempted")  # newer than base0 by the clock, but it already ran once
    assert q.peek("a") == "preempted"
    assert [q.pop(_always) for _ in range(3)] == [("a", "preempted"), ("", "base0"), ("a", "a1")]


class _ReferenceQueues:
    """The plain O(adapters) definition the queues must agree with: rescan and sort every time."""

    def __init__(self, max_active: int, cycle: float, clock: Callable[[], float]) -> None:
        self.max_active, self.cycle, self.clock = max_active, cycle, clock
        # key -> [items [(since, item)], turn (waiting_since, seq), active, serving_since]
        self.queues: dict[str, list[Any]] = {}
        self.seq = itertools.count()

    def _queue(self, key: str) -> list[Any]:
        if key not in self.queues:
            self.queues[key] = [[], (self.clock(), next(self.seq)), False, None]
        return self.queues[key]

    def push(self, key: str, item: int) -> None:
        self._queue(key)[0].append((self.clock(), item))

    def push_front(self, key: str, item: int) -> None:
        q = self._queue(key)
        heads = [v[0][0][0] for v in self.queues.values() if v[0]]
        q[0].insert(0, (math.nextafter(min([self.clock(), *heads]), -math.inf), item))

    def remove(self, key: str, item: int) -> None:
        q = self.queues[key]
        q[0] = [(s, i) for s, i in q[0] if i != item]
        if not q[0]:
            del self.queues[key]

    def active(self) -> set[str]:
        self._rotate()
        return {k for k, v in self.queues.items() if k and v[2]}

    def pop(self, ready: Callable[[str], bool]) -> tuple[str, int] | None:
        active = self.active()
        heads = [(v[0][0][0], k) for k, v in self.queues.items() if k == "" or k in active]
        heads = [(s, k) for s, k in heads if ready(k)]
        if not heads:
            return None
        key = min(heads)[1]
        if key and self.queues[key][3] is None:
            self.queues[key][3] = self.clock()  # the turn's slice starts at its first admission
        _, item = self.queues[key][0].pop(0)
        if not self.queues[key][0]:
            del self.queues[key]
        return key, item

    def _rotate(self) -> None:
        now = self.clock()
        active = [(v[3], k) for k, v in self.queues.items() if k and v[2]]
        waiting = sorted((v[1], k) for k, v in self.queues.items() if k and not v[2])
        expired = sorted((t, k) for t, k in active if t is not None and now - t >= self.cycle)
        free = self.max_active - len(active)
        rotated = [k for _, k in expired[: max(0, len(waiting) - max(free, 0))]]
        for key in rotated:
            self.queues[key][2:] = [False, None]
            self.queues[key][1] = (now, next(self.seq))
        for _, key in waiting[: max(free + len(rotated), 0)]:
            self.queues[key][2] = True


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_the_rescanning_reference(seed: int) -> None:
    rng = random.Random(seed)
    now = [0.0]
    q: AdapterQueues[int] = AdapterQueues(max_active=3, cycle_time_s=1.0, clock=lambda: now[0])
    ref = _ReferenceQueues(3, 1.0, lambda: now[0])
    keys = ["", "a", "b", "c", "d", "e", "f"]
    queued: list[tuple[str, int]] = []
    for n in range(600):
        op = rng.random()
        if op < 0.35:
            key = rng.choice(keys)
            q.push(key, n)
            ref.push(key, n)
            queued.append((key, n))
        elif op < 0.42:
            key = rng.choice(keys)
            q.push_front(key, n)
            ref.push_front(key, n)
            queued.append((key, n))
        elif op < 0.47 and queued:
            key, item = queued.pop(rng.randrange(len(queued)))
            assert q.remove(key, item)
            ref.remove(key, item)
        elif op < 0.85:
            loading = frozenset(rng.sample(keys, 2))
            got = q.pop(loading.isdisjoint)
            assert got == ref.pop(loading.isdisjoint), n
            if got is not None:
                queued.remove(got)
        else:
            assert set(q.active_keys()) == ref.active(), n
        now[0] += rng.choice([1e-3, 0.1, 0.3])  # distinct arrival times: no ties to break
        assert len(q) == len(queued)
