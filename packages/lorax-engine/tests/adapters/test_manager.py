"""The manager: background loads, slot residency with eviction, failures, tenant scoping."""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lorax_engine.adapters import (
    AdapterHandle,
    AdapterLoader,
    AdapterManager,
    AdapterRef,
    AdapterState,
    HostAdapterCache,
    LoadLimits,
    LocalSource,
    LoraWeights,
    ManagerConfig,
    MergeSpec,
    SourceRegistry,
    load_peft_lora,
)

from .conftest import Spec


class FakeSlots:
    """Records what each slot holds; refuses to overwrite a slot a running request uses."""

    def __init__(self, num_slots: int) -> None:
        self.held: list[LoraWeights | None] = [None] * num_slots
        self.in_use: set[int] = set()
        self.writes = 0

    def write_(self, slot: int, weights: LoraWeights) -> None:
        assert slot not in self.in_use, f"slot {slot} overwritten while a running request uses it"
        self.held[slot] = LoraWeights(
            weights.adapter_key,
            weights.rank,
            weights.scale,
            {k: (a.clone(), b.clone()) for k, (a, b) in weights.modules.items()},
        )
        self.writes += 1


def _manager(
    root: Path, spec: Spec, num_slots: int, *, host_bytes: int = 1 << 30, **config: float
) -> tuple[AdapterManager, FakeSlots]:
    loader = AdapterLoader(
        SourceRegistry({"local": LocalSource([root])}),
        spec,
        LoadLimits(max_rank=16),
        HostAdapterCache(host_bytes),
    )
    slots = FakeSlots(num_slots)
    return AdapterManager(loader, slots, ManagerConfig(num_slots=num_slots, **config)), slots  # type: ignore[arg-type]


def _wait_ready(manager: AdapterManager, handles: list[AdapterHandle], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(manager.state(h) is AdapterState.LOADING for h in handles):
        assert time.monotonic() < deadline, "adapters never became ready"
        manager.step()
        time.sleep(0.005)


def _ref(name: str, **kw: object) -> AdapterRef:
    return AdapterRef(name, source="local", **kw)  # type: ignore[arg-type]


def test_request_is_non_blocking_and_becomes_ready(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("a")
    manager, slots = _manager(tmp_path, spec, 2)
    handle = manager.request(_ref("a"))
    assert manager.state(handle) is AdapterState.LOADING  # nothing is loaded on the caller's thread
    _wait_ready(manager, [handle])
    slot = manager.acquire(handle)
    held = slots.held[slot]
    assert held is not None
    assert held.equal(load_peft_lora(tmp_path / "a", held.adapter_key, spec, LoadLimits()))
    manager.release(handle)
    base = manager.request(AdapterRef())
    assert manager.state(base) is AdapterState.READY
    assert manager.acquire(base) == -1
    manager.shutdown()


def test_wake_is_called_when_a_load_finishes(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("a")
    woken = threading.Event()
    loader = AdapterLoader(
        SourceRegistry({"local": LocalSource([tmp_path])}),
        spec,
        LoadLimits(),
        HostAdapterCache(1 << 30),
    )
    manager = AdapterManager(loader, FakeSlots(1), ManagerConfig(num_slots=1), wake=woken.set)  # type: ignore[arg-type]
    manager.request(_ref("a"))
    assert woken.wait(timeout=30)  # an idle loop blocked on its inbox would be woken here
    manager.shutdown()


def test_more_adapters_than_slots_under_concurrent_requests(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    """A scheduler-like loop: 6 adapters, 2 slots, 60 requests; all finish, none is evicted in use."""
    names = [f"a{i}" for i in range(6)]
    for i, n in enumerate(names):
        make_adapter(n, r=4 + 4 * (i % 3), seed=i)
    manager, slots = _manager(tmp_path, spec, 2, cycle_time_s=0.0)
    rng = random.Random(0)
    pending = [manager.request(_ref(rng.choice(names))) for _ in range(60)]
    running: dict[int, tuple[AdapterHandle, int, int]] = {}  # handle id -> handle, slot, steps left
    finished = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        manager.step()
        for hid, (h, slot, left) in list(running.items()):
            held = slots.held[slot]
            assert held is not None
            assert held.adapter_key == h.key  # the slot still holds this request's adapter
            if left == 0:
                del running[hid]
                manager.release(h)
                finished += 1
                if all(r[1] != slot for r in running.values()):
                    slots.in_use.discard(slot)
            else:
                running[hid] = (h, slot, left - 1)
        for h in list(pending):
            if manager.state(h) is AdapterState.READY and len(running) < 4:
                slot = manager.acquire(h)
                slots.in_use.add(slot)
                running[h.id] = (h, slot, rng.randint(0, 3))
                pending.remove(h)
        if not pending and not running:
            break
        time.sleep(0.001)
    assert finished == 60
    assert manager.stats["evictions"] > 0
    assert manager.stats["load_failures"] == 0
    manager.shutdown()


def test_evicted_then_promoted_weights_are_bit_identical(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("a", seed=1)
    make_adapter("b", seed=2)
    manager, slots = _manager(tmp_path, spec, 1)
    ha = manager.request(_ref("a"))
    _wait_ready(manager, [ha])
    first = slots.held[manager.acquire(ha)]
    assert first is not None
    manager.release(ha)
    hb = manager.request(_ref("b"))
    _wait_ready(manager, [hb])  # b takes the only slot: a goes back to the CPU tier
    assert set(manager.resident()) == {hb.key}
    assert ha.key in manager.loader.host_cache
    manager.acquire(hb)
    manager.release(hb)
    shutil.rmtree(tmp_path / "a")  # so "a" can only come back from the CPU tier
    ha2 = manager.request(_ref("a"))
    _wait_ready(manager, [ha2])
    again = slots.held[manager.acquire(ha2)]
    assert again is not None
    assert again.equal(first)
    manager.shutdown()


def test_a_slot_in_use_is_never_evicted(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("a", seed=1)
    make_adapter("b", seed=2)
    manager, _ = _manager(tmp_path, spec, 1, cycle_time_s=0.0)
    ha = manager.request(_ref("a"))
    _wait_ready(manager, [ha])
    manager.acquire(ha)
    hb = manager.request(_ref("b"))
    _wait_loaded(manager, 2)  # b is in the CPU tier, so only the slot rule can hold it back
    manager.step()
    assert manager.state(hb) is AdapterState.LOADING  # waits: the only slot is in use
    assert set(manager.resident()) == {ha.key}
    manager.release(ha)
    _wait_ready(manager, [hb])
    assert set(manager.resident()) == {hb.key}
    manager.shutdown()


def test_waiting_adapter_keeps_its_slot_for_a_cycle(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("a", seed=1)
    make_adapter("b", seed=2)
    now = [0.0]
    manager, _ = _manager(tmp_path, spec, 1, cycle_time_s=5.0)
    manager._clock = lambda: now[0]
    ha1, ha2 = manager.request(_ref("a")), manager.request(_ref("a"))
    _wait_ready(manager, [ha1])
    manager.acquire(ha1)  # one of a's requests ran; the other still waits
    manager.release(ha1)
    hb = manager.request(_ref("b"))
    _wait_loaded(manager, 2)
    manager.step()
    assert manager.state(hb) is AdapterState.LOADING
    now[0] = 5.0  # a's slice is over while it still has waiting requests: b may take the slot
    manager.step()
    assert manager.state(hb) is AdapterState.READY
    assert manager.state(ha2) is AdapterState.LOADING  # back in the CPU tier, promoted on its turn
    manager.shutdown()


def test_a_promotion_is_not_undone_before_its_requests_ran(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("a", seed=1)
    make_adapter("b", seed=2)
    manager, _ = _manager(tmp_path, spec, 1, cycle_time_s=0.0)
    ha = manager.request(_ref("a"))
    _wait_ready(manager, [ha])
    hb = manager.request(_ref("b"))
    _wait_loaded(manager, 2)
    for _ in range(5):
        manager.step()
    # The batch was full, so a's request has not run yet: b waits rather than thrash the slot.
    assert manager.state(ha) is AdapterState.READY
    assert manager.state(hb) is AdapterState.LOADING
    manager.acquire(ha)
    manager.release(ha)
    manager.step()
    assert manager.state(hb) is AdapterState.READY
    manager.shutdown()


def _wait_loaded(manager: AdapterManager, loads: int) -> None:
    deadline = time.monotonic() + 30
    while manager.stats["loads"] < loads:
        assert time.monotonic() < deadline, "loads did not finish"
        manager.step()
        time.sleep(0.005)


def test_a_bad_adapter_fails_only_its_own_requests(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("good")
    bad = make_adapter("bad")
    (bad / "adapter_config.json").write_text("{")
    manager, _ = _manager(tmp_path, spec, 2)
    handles = [manager.request(_ref(n)) for n in ("good", "bad", "missing", "../escape")]
    _wait_ready(manager, handles)
    states = [manager.state(h) for h in handles]
    assert states == [
        AdapterState.READY,
        AdapterState.FAILED,
        AdapterState.FAILED,
        AdapterState.FAILED,
    ]
    codes = [e.code for h in handles[1:] if (e := manager.error(h)) is not None]
    assert codes == ["corrupt_config", "not_found", "path_escape"]
    event = manager.error(handles[1]).to_event()  # type: ignore[union-attr]
    assert event["error_type"] == "generation"
    assert manager.error(handles[3]).to_event()["error_type"] == "validation"  # type: ignore[union-attr]
    # Within the failure TTL a new request fails at once, without reloading.
    again = manager.request(_ref("bad"))
    assert manager.state(again) is AdapterState.FAILED
    manager.shutdown()


def test_failed_load_is_retried_after_the_ttl(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    manager, _ = _manager(tmp_path, spec, 1, failure_ttl_s=0.0)
    h = manager.request(_ref("late"))
    _wait_ready(manager, [h])
    assert manager.state(h) is AdapterState.FAILED
    manager.release(h)
    make_adapter("late")  # the adapter appears
    h2 = manager.request(_ref("late"))
    _wait_ready(manager, [h2])
    assert manager.state(h2) is AdapterState.READY
    manager.shutdown()


def test_credentialed_adapters_are_scoped(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("a")
    manager, _ = _manager(tmp_path, spec, 4)
    refs = [
        _ref("a"),
        _ref("a", api_token="secret-1", tenant="t1"),
        _ref("a", api_token="secret-2", tenant="t1"),
        _ref("a", api_token="secret-1", tenant="t2"),
    ]
    handles = [manager.request(r) for r in refs]
    assert len({h.key for h in handles}) == 4  # nobody is served another's credentialed copy
    same = manager.request(_ref("a", api_token="secret-1", tenant="t1"))
    assert same.key == handles[1].key
    assert all("secret" not in h.key for h in handles)
    assert all("secret" not in repr(r) for r in refs)
    _wait_ready(manager, handles)
    manager.shutdown()


def test_merged_adapter_is_loaded_merged_and_cached(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("x", seed=1)
    make_adapter("y", seed=2)
    manager, slots = _manager(tmp_path, spec, 2)
    merge = MergeSpec(("x", "y"), (0.5, 0.5), "ties", 0.5)
    h = manager.request(AdapterRef(merged=merge, source="local"))
    _wait_ready(manager, [h])
    held = slots.held[manager.acquire(h)]
    assert held is not None
    assert held.scale == 1.0
    cache = manager.loader.host_cache
    assert all(AdapterRef(n, source="local").cache_key() in cache for n in ("x", "y"))
    assert manager.loader.load(AdapterRef(merged=merge, source="local")) is not None
    manager.shutdown()


def test_preload_fills_slots_and_fails_loudly(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("a")
    make_adapter("b")
    manager, _ = _manager(tmp_path, spec, 1)
    manager.preload([_ref("a"), _ref("b")], timeout_s=30)
    assert list(manager.resident()) == [_ref("a").cache_key()]  # one slot; b waits in the CPU tier
    assert _ref("b").cache_key() in manager.loader.host_cache
    with pytest.raises(Exception, match="not found"):
        manager.preload([_ref("nope")], timeout_s=30)
    manager.shutdown()


def test_host_cache_is_an_lru_bounded_in_bytes(tmp_path: Path) -> None:
    def w(key: str) -> LoraWeights:
        return LoraWeights(key, 2, 1.0, {(0, "q_proj"): (torch.zeros(2, 8), torch.zeros(8, 2))})

    size = w("x").nbytes
    cache = HostAdapterCache(3 * size)
    for k in "abc":
        cache.put(w(k))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put(w("d"))
    assert "b" not in cache
    assert all(k in cache for k in "acd")
    assert cache.nbytes == 3 * size
    assert cache.evictions == 1
    assert cache.pop("a") is not None
    assert cache.nbytes == 2 * size
    big = LoraWeights("big", 2, 1.0, {(0, "q_proj"): (torch.zeros(2, 64), torch.zeros(64, 2))})
    cache.put(big)
    assert "big" not in cache  # larger than the whole tier: not kept, nothing else evicted
    assert len(cache) == 2
    assert cache.get("b") is None
    assert (cache.hits, cache.misses) == (1, 1)  # the lookups of "a" (hit) and "b" (miss)


def test_with_fair_queues_every_adapter_is_served(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    """The scheduler pattern: AdapterQueues decide who is admitted, the manager who is resident.

    One slot, a hot adapter with a steady stream of requests and two cold ones: the cold ones are
    served within a few cycles instead of waiting for the hot stream to end.
    """
    from lorax_engine.adapters import AdapterQueues

    for name in ("hot", "cold1", "cold2"):
        make_adapter(name, seed=len(name))
    now = [0.0]
    manager, slots = _manager(tmp_path, spec, 1, cycle_time_s=1.0)
    manager._clock = lambda: now[0]
    real_load = manager.loader.load

    def slow_hot(ref: AdapterRef) -> LoraWeights:
        # The hot adapter loads last, so a cold one is prefetched into the only slot first and
        # must give it up to the adapter the queues admit.
        if ref.adapter_id == "hot":
            time.sleep(0.3)
        return real_load(ref)

    manager.loader.load = slow_hot  # type: ignore[method-assign]
    queues: AdapterQueues[AdapterHandle] = AdapterQueues(
        max_active=1, cycle_time_s=1.0, clock=lambda: now[0]
    )

    woken = threading.Event()
    manager._wake = woken.set  # what the engine loop's idle wait listens to

    def submit(name: str) -> None:
        h = manager.request(_ref(name))
        queues.push(h.key, h)

    for _ in range(3):
        submit("hot")
    now[0] = 0.05  # the cold ones arrive just after the hot ones
    submit("cold1")
    submit("cold2")
    served: list[str] = []
    deadline = time.monotonic() + 60
    while not {"cold1", "cold2"} <= set(served):
        assert time.monotonic() < deadline, f"cold adapters not served; served {served}"
        manager.step(priority=queues.active_keys())
        item = queues.pop(manager.ready)
        if item is None:
            # Nothing admissible until a load or promotion finishes: sleep until the manager says
            # one did (the timeout only bounds a missed wake-up).
            woken.wait(0.05)
            woken.clear()
            continue
        key, h = item
        slot = manager.acquire(h)
        slots.in_use.add(slot)
        held = slots.held[slot]
        assert held is not None
        assert held.adapter_key == key
        served.append(key.split(":")[1].split("#")[0])
        manager.release(h)  # a one-step request
        slots.in_use.discard(slot)
        now[0] += 0.1  # the clock is the work done: 100 ms per request served
        if len(served) < 300:
            submit("hot")  # a steady hot stream: its queue never runs dry
    assert served[0] == "hot"
    assert manager.stats["evictions"] >= 1
    assert served.index("cold2") < 20  # after about one hot cycle, not after its 300 requests
    manager.shutdown()


def test_idle_entries_are_forgotten_and_failures_after_their_ttl(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    """The step keeps its own books (what to collect, promote, forget) instead of rescanning
    every adapter: idle entries still go, failed ones only once their failure expired."""
    make_adapter("a")
    now = [0.0]
    loader = AdapterLoader(
        SourceRegistry({"local": LocalSource([tmp_path])}),
        spec,
        LoadLimits(max_rank=16),
        HostAdapterCache(1 << 30),
    )
    manager = AdapterManager(
        loader,
        FakeSlots(1),  # type: ignore[arg-type]
        ManagerConfig(num_slots=1, failure_ttl_s=10.0),
        clock=lambda: now[0],
    )
    key_a, key_bad = _ref("a").cache_key(), _ref("bad").cache_key()
    manager.prefetch(_ref("a"))
    deadline = time.monotonic() + 30
    while manager.usage().loading:
        assert time.monotonic() < deadline
        manager.step()
    manager.step()
    assert key_a not in manager._entries  # loaded for nobody: forgotten, kept in the CPU tier
    assert key_a in loader.host_cache
    bad = manager.request(_ref("bad"))
    reported: set[str] = set()
    while manager.state(bad) is AdapterState.LOADING:
        assert time.monotonic() < deadline
        reported |= manager.step()
    assert manager.state(bad) is AdapterState.FAILED
    assert reported == {key_bad}  # the step says whose waiting requests to fail, once
    manager.release(bad)
    assert manager.step() == frozenset()
    assert key_bad in manager._entries  # still answers new requests at once
    again = manager.request(_ref("bad"))
    assert manager.state(again) is AdapterState.FAILED
    assert manager.step() == {key_bad}
    now[0] = 10.0
    manager.step()
    assert key_bad in manager._entries  # expired, but a request still holds it
    manager.release(again)
    manager.step()
    assert key_bad not in manager._entries  # expired and idle: the next request reloads it
    # Two waiting adapters, one slot: one promoted, the other stays a candidate.
    h1, h2 = manager.request(_ref("a")), manager.request(_ref("a"))
    _wait_ready(manager, [h1, h2])
    assert manager.state(h1) is AdapterState.READY
    assert not manager._candidates
    manager.release(h1)
    manager.release(h2)
    manager.step()
    assert key_a in manager._entries  # resident: kept
    manager.shutdown()
