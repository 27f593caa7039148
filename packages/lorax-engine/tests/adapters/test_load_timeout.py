"""A stalled source is bounded by the loader's deadline and blocks nothing else."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lorax_engine.adapters import (
    AdapterLoader,
    AdapterLoadError,
    AdapterManager,
    AdapterRef,
    AdapterState,
    HostAdapterCache,
    LoadLimits,
    LocalSource,
    ManagerConfig,
    SourceRegistry,
    load_peft_lora,
)
from lorax_engine.adapters.sources import FetchedAdapter

from .conftest import Spec
from .test_manager import FakeSlots, _wait_ready

TIMEOUT_S = 0.5


class StallingSource:
    """Blocks its first ``stalls`` fetches until ``release`` is set, then answers ``directory``
    as it is at that moment (a later fetch may see other files)."""

    def __init__(self, directory: Path, stalls: int = 1) -> None:
        self.directory = directory
        self.release = threading.Event()
        self.returned = threading.Event()  # a stalled fetch came back
        self._stalls = stalls
        self._lock = threading.Lock()

    def fetch(self, ref: AdapterRef) -> FetchedAdapter:
        with self._lock:
            stall, self._stalls = self._stalls > 0, self._stalls - 1
        if not stall:
            return FetchedAdapter(self.directory)
        self.release.wait(30)
        fetched = FetchedAdapter(self.directory)
        self.returned.set()
        return fetched


def _manager(
    sources: dict[str, object], spec: Spec, *, loader_threads: int = 4, failure_ttl_s: float = 30.0
) -> tuple[AdapterManager, FakeSlots]:
    loader = AdapterLoader(
        SourceRegistry(sources),  # type: ignore[arg-type]
        spec,
        LoadLimits(max_rank=16),
        HostAdapterCache(1 << 30),
        timeout_s=TIMEOUT_S,
    )
    slots = FakeSlots(2)
    config = ManagerConfig(num_slots=2, loader_threads=loader_threads, failure_ttl_s=failure_ttl_s)
    return AdapterManager(loader, slots, config), slots  # type: ignore[arg-type]


def _wait(event: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not event():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_stalled_load_fails_after_the_deadline_and_frees_its_loader_thread(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    make_adapter("good")
    stalling = StallingSource(make_adapter("stalled"))
    # One loader thread: the good adapter can only load once the stalled one gave it back.
    manager, _ = _manager(
        {"hub": stalling, "local": LocalSource([tmp_path])}, spec, loader_threads=1
    )
    try:
        started = time.monotonic()
        stalled = manager.request(AdapterRef("org/stalled", source="hub", api_token="hf_secret"))
        good = manager.request(AdapterRef("good", source="local"))
        _wait_ready(manager, [stalled, good], timeout=10)
        elapsed = time.monotonic() - started
        assert manager.state(stalled) is AdapterState.FAILED
        assert manager.state(good) is AdapterState.READY
        assert not stalling.release.is_set()  # the stalled fetch is still stuck: it was abandoned
        error = manager.error(stalled)
        assert isinstance(error, AdapterLoadError)
        assert error.code == "load_timeout"
        assert error.to_event()["error_type"] == "generation"
        assert error.status == 424
        assert "org/stalled" in error.message
        assert "hf_secret" not in error.message
        assert TIMEOUT_S <= elapsed < TIMEOUT_S + 5, elapsed
        # Within the failure TTL a new request for it fails at once instead of stalling again.
        again = manager.request(AdapterRef("org/stalled", source="hub", api_token="hf_secret"))
        assert manager.state(again) is AdapterState.FAILED
    finally:
        stalling.release.set()
        manager.shutdown()


def test_a_late_stale_worker_does_not_clobber_a_newer_load(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    directory = make_adapter("a", r=4, seed=1)
    stalling = StallingSource(directory)
    manager, slots = _manager({"hub": stalling}, spec, failure_ttl_s=0.0)
    ref = AdapterRef("org/a", source="hub")
    try:
        first = manager.request(ref)
        _wait_ready(manager, [first], timeout=10)
        assert manager.state(first) is AdapterState.FAILED
        manager.release(first)
        # The adapter changes on its source; the retry (TTL 0) loads the new version.
        make_adapter("a", r=8, seed=2)
        second = manager.request(ref)
        _wait_ready(manager, [second], timeout=10)
        slot = manager.acquire(second)
        newer = load_peft_lora(directory, ref.cache_key(), spec, LoadLimits())
        held = slots.held[slot]
        assert held is not None
        assert held.equal(newer)
        # Now the stale worker finishes: it reads the same files, but its result must go nowhere.
        stalling.release.set()
        assert stalling.returned.wait(10)
        _wait(
            lambda: not any(t.name.startswith("adapter-fetch") for t in threading.enumerate()),
            "the stale worker never finished",
        )
        manager.step()
        assert ref.cache_key() not in manager.loader.host_cache  # resident: the slot owns it
        assert manager.state(second) is AdapterState.READY
        assert manager.stats["loads"] == 1
        manager.release(second)
    finally:
        stalling.release.set()
        manager.shutdown()


def test_chat_template_fetch_is_bounded(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    stalling = StallingSource(make_adapter("t"))
    manager, _ = _manager({"hub": stalling}, spec)
    try:
        started = time.monotonic()
        with pytest.raises(AdapterLoadError) as info:
            manager.loader.chat_template(AdapterRef("org/t", source="hub"))
        assert info.value.code == "load_timeout"
        assert "org/t" in info.value.message
        assert time.monotonic() - started < TIMEOUT_S + 5
    finally:
        stalling.release.set()
        manager.shutdown()


def test_timeout_must_be_positive(spec: Spec) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        AdapterLoader(SourceRegistry({}), spec, LoadLimits(), HostAdapterCache(0), timeout_s=0)
