"""Per-adapter queues: FIFO within an adapter, time-sliced fairness across adapters."""

from __future__ import annotations

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
