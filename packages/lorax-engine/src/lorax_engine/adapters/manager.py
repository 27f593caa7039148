"""The adapter manager: background loading and GPU slot residency (docs/internals.md section 4).

Tiers: disk (the sources' caches) -> CPU (:class:`HostAdapterCache`) -> GPU slots (the runner's
``LoraSlots``). ``request`` starts loading in the background and returns at once; ``step`` (on
the engine thread, once per step) collects finished loads, finishes promotions and starts new
ones. An adapter is READY once its slot holds it; a slot that a running request has acquired is
never evicted, and eviction moves the adapter back to the CPU tier.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lorax_engine.adapters.errors import AdapterError, AdapterLoadError
from lorax_engine.adapters.loader import AdapterLoader
from lorax_engine.adapters.ref import AdapterRef
from lorax_engine.adapters.weights import LoraWeights

log = logging.getLogger(__name__)


class AdapterState(enum.Enum):
    """Where a request's adapter stands. READY: in a GPU slot, ``acquire`` gives the slot."""

    READY = "ready"
    LOADING = "loading"
    FAILED = "failed"


class SlotWriter(Protocol):
    """What the manager needs of the runner's ``LoraSlots``."""

    def write_(self, slot: int, weights: LoraWeights) -> None: ...


@dataclass(slots=True)
class ManagerConfig:
    """Residency settings.

    ``num_slots``: GPU slots (``--max-active-adapters``, bounded by ``--adapter-memory-fraction``).
    ``cycle_time_s``: how long an adapter that still has waiting requests keeps its slot before
    another adapter's waiting requests may take it (``--adapter-cycle-time-s``).
    ``failure_ttl_s``: how long a failed load answers new requests before it is tried again.
    """

    num_slots: int
    cycle_time_s: float = 2.0
    loader_threads: int = 4
    failure_ttl_s: float = 30.0

    def __post_init__(self) -> None:
        if self.num_slots <= 0:
            raise ValueError("num_slots must be positive")
        if self.cycle_time_s < 0 or self.failure_ttl_s < 0:
            raise ValueError("cycle_time_s and failure_ttl_s must be >= 0")
        if self.loader_threads <= 0:
            raise ValueError("loader_threads must be positive")


@dataclass(slots=True, eq=False)
class _Entry:
    """One adapter (one cache key) that someone wants or that occupies a slot."""

    key: str
    ref: AdapterRef
    future: Future[LoraWeights] | None = None
    weights: LoraWeights | None = None
    error: AdapterError | None = None
    failed_at: float = 0.0
    slot: int | None = None
    # The slot write in flight on the promoter thread; resolves to the copy's CUDA event.
    promoting: Future[Any] | None = None
    promoted_at: float = 0.0
    served: bool = False  # a request acquired it since its promotion
    last_used: float = 0.0
    waiting: dict[int, float] = field(default_factory=dict[int, float])  # handle id -> since
    running: int = 0


@dataclass(slots=True, eq=False)
class AdapterHandle:
    """One request's claim on an adapter; ``key`` is its loggable cache key ("" = base model)."""

    key: str
    id: int
    _entry: _Entry | None = field(repr=False)
    acquired: bool = False
    released: bool = False


class AdapterManager:
    """Turns requests' adapter references into GPU slots without blocking the step loop.

    ``request``/``state``/``acquire``/``release``/``step`` are meant for the engine thread;
    ``prefetch`` and ``preload`` may be called from any thread. ``wake`` is called from a worker
    thread whenever a load or a promotion finishes, so an idle engine loop can wake up and call
    ``step``.

    ``step`` costs O(what changed since the last step + slots), not O(adapters known): finished
    loads and promotions report themselves, the entries that may be promoted or forgotten are
    kept in sets updated where they change, and the adapters waiting outside the scheduler's
    priority are only ranked when a slot can actually be had.
    """

    def __init__(
        self,
        loader: AdapterLoader,
        slots: SlotWriter,
        config: ManagerConfig,
        *,
        device: torch.device | str = "cpu",
        wake: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loader = loader
        self.config = config
        self._slots = slots
        self._device = torch.device(device)
        self._wake = wake
        self._clock = clock
        self._pool = ThreadPoolExecutor(config.loader_threads, thread_name_prefix="adapter-load")
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._owners: list[_Entry | None] = [None] * config.num_slots
        self._ids = itertools.count(1)
        # Entries whose load or promotion finished (appended by the futures' callbacks, from any
        # thread: deque appends are atomic), collected by the next step.
        self._finished: deque[_Entry] = deque()
        # Loaded, not resident, not failed, with waiting requests: what a step may promote.
        self._candidates: dict[_Entry, None] = {}
        # Entries that may have become idle since the last step, and failed idle ones by the time
        # their failure expires: what a step may forget.
        self._touched: set[_Entry] = set()
        self._expiring: list[tuple[float, int, _Entry]] = []
        # Keys whose waiting requests must be failed: the next step reports them once.
        self._failed_keys: set[str] = set()
        self._seq = itertools.count()  # heap tie-breaker: entries do not compare
        # On CUDA, promotions run on their own thread and stream: the copies overlap the forward
        # pass on the main stream, and waiting for them to land never stalls the step loop.
        self._stream: Any = None
        self._promoter: ThreadPoolExecutor | None = None
        if self._device.type == "cuda":
            self._stream = torch.cuda.Stream(self._device)
            self._promoter = ThreadPoolExecutor(1, thread_name_prefix="adapter-promote")
        self.stats = {"loads": 0, "load_failures": 0, "promotions": 0, "evictions": 0}
        # Seconds spent in promotions since start-up: launching the slot writes (host time, the
        # part that competes with the step loop for the GIL), and from a promotion's start until
        # its copy landed (including the wait for the step that last read the slot).
        self.promotion_host_s = 0.0
        self.promotion_wall_s = 0.0

    # ---- requests -------------------------------------------------------------------------

    def request(self, ref: AdapterRef) -> AdapterHandle:
        """Register one request's need for ``ref`` and start loading it if needed. Non-blocking."""
        if ref.is_base:
            return AdapterHandle("", next(self._ids), None)
        with self._lock:
            entry = self._entry_for(ref)
            handle = AdapterHandle(entry.key, next(self._ids), entry)
            entry.waiting[handle.id] = self._clock()
            self._refresh(entry)
            if entry.error is not None:
                self._failed_keys.add(entry.key)
            return handle

    def prefetch(self, ref: AdapterRef) -> None:
        """Start loading ``ref`` into the CPU tier (e.g. for a request still in the gateway)."""
        if ref.is_base:
            return
        with self._lock:
            self._entry_for(ref)

    def state(self, handle: AdapterHandle) -> AdapterState:
        entry = handle._entry
        if entry is None:
            return AdapterState.READY
        with self._lock:
            if entry.error is not None:
                return AdapterState.FAILED
            if entry.slot is not None and entry.promoting is None:
                return AdapterState.READY
            return AdapterState.LOADING

    def ready(self, key: str) -> bool:
        """Whether the adapter with cache key ``key`` ("" = base model) can run now.

        For ``AdapterQueues.pop``, which works on keys.
        """
        if key == "":
            return True
        with self._lock:
            entry = self._entries.get(key)
            return (
                entry is not None
                and entry.error is None
                and entry.slot is not None
                and entry.promoting is None
            )

    def error(self, handle: AdapterHandle) -> AdapterError | None:
        """The load failure of a FAILED handle (answer its request with ``error.to_event()``)."""
        return None if handle._entry is None else handle._entry.error

    def acquire(self, handle: AdapterHandle) -> int:
        """Pin the adapter's slot for a request entering the running batch; -1 for the base model."""
        entry = handle._entry
        if entry is None:
            return -1
        with self._lock:
            if handle.acquired:
                raise RuntimeError(f"handle {handle.id} is already acquired")
            if self.state(handle) is not AdapterState.READY or entry.slot is None:
                raise RuntimeError(f"adapter {entry.key} is not ready")
            entry.waiting.pop(handle.id, None)
            self._refresh(entry)
            entry.running += 1
            entry.served = True
            entry.last_used = self._clock()
            handle.acquired = True
            return entry.slot

    def release(self, handle: AdapterHandle, *, requeue: bool = False) -> None:
        """The request no longer runs: finished or cancelled, or (``requeue``) preempted.

        A preempted request keeps its claim, so its adapter stays wanted, but unpins the slot.
        """
        entry = handle._entry
        if entry is None or handle.released:
            return
        with self._lock:
            if handle.acquired:
                entry.running -= 1
                entry.last_used = self._clock()
                handle.acquired = False
            if requeue:
                entry.waiting.setdefault(handle.id, self._clock())
            else:
                entry.waiting.pop(handle.id, None)
                handle.released = True
            self._refresh(entry)
            self._touched.add(entry)

    # ---- the step loop --------------------------------------------------------------------

    def step(self, priority: Sequence[str] = ()) -> frozenset[str]:
        """Collect finished loads, finish promotions and start new ones. Never blocks on I/O.

        ``priority``: cache keys the scheduler wants first (e.g. its active adapters); the rest
        follow by how long their oldest request has waited.

        Returns the cache keys whose waiting requests are FAILED since the last step (a load or
        a promotion failed, or a request arrived for an adapter that failed recently), so the
        caller only looks through its waiting requests when there is something to fail.
        """
        with self._lock:
            now = self._clock()
            while self._finished:
                self._collect(self._finished.popleft(), now)
            self._promote_wanted(priority, now)
            self._forget_idle(now)
            failed, self._failed_keys = frozenset(self._failed_keys), set()
            return failed

    def _collect(self, entry: _Entry, now: float) -> None:
        if entry.future is not None and entry.future.done():
            future, entry.future = entry.future, None
            exc = future.exception()
            self._touched.add(entry)
            if exc is None:
                entry.weights = future.result()
                self.stats["loads"] += 1
            else:
                entry.error = (
                    exc
                    if isinstance(exc, AdapterError)
                    else AdapterLoadError(
                        f"loading adapter {entry.key} failed ({exc.__class__.__name__})",
                        code="load_failed",
                    )
                )
                entry.failed_at = now
                self._failed_keys.add(entry.key)
                self.stats["load_failures"] += 1
                # Our own errors say everything; anything else is a bug worth its traceback.
                trace = None if isinstance(exc, AdapterError) else exc
                log.warning(
                    "adapter %s failed to load: %s", entry.key, entry.error.message, exc_info=trace
                )
            self._refresh(entry)
        if entry.promoting is not None and entry.promoting.done():
            promotion, entry.promoting = entry.promoting, None
            exc = promotion.exception()
            if exc is not None:  # a bug, not the adapter's fault: free the slot, fail the requests
                log.error("writing adapter %s into slot %s failed: %r", entry.key, entry.slot, exc)
                if entry.slot is not None:
                    self._owners[entry.slot] = None
                    entry.slot = None
                entry.error = AdapterLoadError(
                    f"activating adapter {entry.key} failed", code="load_failed"
                )
                entry.failed_at = now
                self._failed_keys.add(entry.key)
                self._touched.add(entry)
                return
            # The copy is complete; this keeps later main-stream kernels ordered after it anyway.
            torch.cuda.current_stream(self._device).wait_event(promotion.result())

    def _refresh(self, entry: _Entry) -> None:
        """Keep ``entry``'s membership of the promotion candidates up to date after a change."""
        wanted = (
            entry.weights is not None
            and entry.slot is None
            and entry.error is None
            and bool(entry.waiting)
        )
        if wanted:
            self._candidates[entry] = None
        else:
            self._candidates.pop(entry, None)

    def _promote_wanted(self, priority: Sequence[str], now: float) -> None:
        """Promote candidates while slots can be had: the scheduler's adapters first, in its
        order, then the others by their oldest waiting request."""
        first = frozenset(priority)
        for key in priority:
            entry = self._entries.get(key)
            if entry is None or entry not in self._candidates:
                continue
            if not self._promote(entry, now, first):
                return
        if not self._candidates:
            return
        # Only the priority's adapters (or all, without one) may take a slot others wait for.
        available = len(self._victims(now, urgent=not priority, priority=first))
        available += sum(1 for o in self._owners if o is None)
        if available == 0:
            return  # the common case with many adapters waiting: no ranking of them all
        # A handle's wait starts when it is added, so each entry's first waiting time is its oldest.
        for entry in heapq.nsmallest(
            available, self._candidates, key=lambda e: next(iter(e.waiting.values()))
        ):
            if not self._promote(entry, now, first):
                return

    def _promote(self, entry: _Entry, now: float, priority: frozenset[str]) -> bool:
        """Give ``entry`` a slot (evicting an idle one if needed); False when none can be had."""
        slot = self._free_slot(now, urgent=not priority or entry.key in priority, priority=priority)
        if slot is None:
            return False
        assert entry.weights is not None
        self._write(slot, entry, now)
        return True

    def _free_slot(self, now: float, *, urgent: bool, priority: frozenset[str]) -> int | None:
        if None in self._owners:
            return self._owners.index(None)
        idle = self._victims(now, urgent=urgent, priority=priority)
        if not idle:
            return None
        _, _, slot = min(idle)
        self._evict(slot)
        return slot

    def _victims(
        self, now: float, *, urgent: bool, priority: frozenset[str]
    ) -> list[tuple[int, float, int]]:
        """``(class, last_used, slot)`` of the slots a promotion may take, best victim first.

        Never a slot the running batch uses or one still being written. Classes:
        0. adapters nobody waits for (least recently used first);
        1. for an adapter the scheduler wants first, ones it does not (prefetched into a slot
           that was free at the time);
        2. for such an adapter, one whose requests ran and that held its slot for a whole cycle:
           a hot adapter cannot keep cold ones out for ever, and a promotion is never undone
           before its requests ran (which would thrash).
        A prefetch (not urgent) only takes a slot nobody waits for.
        """
        idle: list[tuple[int, float, int]] = []
        for s, o in enumerate(self._owners):
            if o is None or o.running or o.promoting is not None:
                continue
            if not o.waiting:
                idle.append((0, o.last_used, s))
            elif not urgent:
                continue
            elif priority and o.key not in priority:
                idle.append((1, o.last_used, s))
            elif o.served and now - o.promoted_at >= self.config.cycle_time_s:
                idle.append((2, o.last_used, s))
        return idle

    def _evict(self, slot: int) -> None:
        victim = self._owners[slot]
        assert victim is not None
        assert victim.weights is not None
        # Back to the CPU tier: the host copy was kept, so this is bookkeeping, not a copy.
        self.loader.host_cache.put(victim.weights)
        victim.slot = None
        self._owners[slot] = None
        self.stats["evictions"] += 1
        self._refresh(victim)
        self._touched.add(victim)

    def _write(self, slot: int, entry: _Entry, now: float) -> None:
        weights = entry.weights
        assert weights is not None
        if self._promoter is not None:
            # The slot may have served the batch that is still running on the main stream.
            main_done = torch.cuda.Event()
            main_done.record(torch.cuda.current_stream(self._device))
            entry.promoting = self._promoter.submit(self._copy_to_slot, slot, weights, main_done)
            self._notify(entry, entry.promoting)
        else:
            started = time.perf_counter()
            self._slots.write_(slot, weights)
            self.promotion_host_s += time.perf_counter() - started
            self.promotion_wall_s += time.perf_counter() - started
        # While resident the slot owns the host copy; the CPU tier's budget is for the rest.
        self.loader.host_cache.pop(entry.key)
        entry.slot = slot
        entry.promoted_at = now
        entry.served = False
        entry.last_used = now
        self._owners[slot] = entry
        self.stats["promotions"] += 1
        self._refresh(entry)

    def _notify(self, entry: _Entry, future: Future[Any]) -> None:
        """When ``future`` finishes: queue ``entry`` for the next step's collection, wake the loop."""
        finished, wake = self._finished, self._wake

        def done(_f: Future[Any]) -> None:
            finished.append(entry)
            if wake is not None:
                wake()

        future.add_done_callback(done)

    def _copy_to_slot(self, slot: int, weights: LoraWeights, after: Any) -> Any:
        """On the promoter thread: write ``slot`` on the side stream, wait for the copy to land.

        Host tensors are pinned, so the copies are asynchronous DMA; the entry keeps ``weights``
        referenced until this returns, so their memory cannot be reused mid-copy.
        """
        started = time.perf_counter()
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(after)
            self._slots.write_(slot, weights)
            done = torch.cuda.Event()
            done.record(self._stream)
        launched = time.perf_counter()
        done.synchronize()
        # Only this thread writes these; readers take a snapshot (benchmarks, after the run).
        self.promotion_host_s += launched - started
        self.promotion_wall_s += time.perf_counter() - started
        return done

    def _forget_idle(self, now: float) -> None:
        """Drop entries nobody needs any more (their weights stay in the CPU tier); a failed one
        only once its failure expired, so that it keeps answering new requests until then."""
        touched, self._touched = self._touched, set()
        for e in touched:
            if e.error is None:
                self._forget(e)
            elif self._idle(e):
                heapq.heappush(self._expiring, (e.failed_at, next(self._seq), e))
        ttl = self.config.failure_ttl_s
        while self._expiring and now - self._expiring[0][0] >= ttl:
            self._forget(heapq.heappop(self._expiring)[2])

    @staticmethod
    def _idle(e: _Entry) -> bool:
        return not e.waiting and e.running == 0 and e.slot is None and e.future is None

    def _forget(self, e: _Entry) -> None:
        if self._idle(e) and self._entries.get(e.key) is e:
            del self._entries[e.key]
            self._candidates.pop(e, None)

    # ---- loading --------------------------------------------------------------------------

    def _entry_for(self, ref: AdapterRef) -> _Entry:
        key = ref.cache_key()
        entry = self._entries.get(key)
        stale = (
            entry is not None
            and entry.error is not None
            and self._clock() - entry.failed_at >= self.config.failure_ttl_s
        )
        if entry is None or stale:
            entry = _Entry(key, ref)
            self._entries[key] = entry
        if entry.weights is None and entry.future is None and entry.error is None:
            entry.future = self._pool.submit(self.loader.load, ref)
            self._notify(entry, entry.future)
        return entry

    def preload(self, refs: Iterable[AdapterRef], timeout_s: float | None = None) -> None:
        """Load ``refs`` now (``--preloaded-adapter-ids``) and put them in free GPU slots.

        Blocks until all are loaded; raises the first failure, so a bad id fails start-up.
        Dynamic loading stays on: these adapters are only first in the caches.
        """
        refs = list(refs)
        with self._lock:
            entries = [self._entry_for(r) for r in refs if not r.is_base]
        for entry in entries:
            if entry.future is not None:
                entry.future.exception(timeout=timeout_s)
        with self._lock:
            now = self._clock()
            for entry in entries:
                self._collect(entry, now)
                if entry.error is not None:
                    raise entry.error
            for entry in entries:
                if entry.slot is None and None in self._owners:
                    self._write(self._owners.index(None), entry, now)
            promotions = [e.promoting for e in entries if e.promoting is not None]
        for promotion in promotions:
            promotion.exception(timeout=timeout_s)
        with self._lock:
            for entry in entries:
                self._collect(entry, self._clock())

    def resident(self) -> dict[str, int]:
        """Cache key -> slot of every adapter in a GPU slot (for metrics and tests)."""
        with self._lock:
            return {o.key: s for s, o in enumerate(self._owners) if o is not None}

    def shutdown(self) -> None:
        """Stop the loader threads (loads in flight are abandoned)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._promoter is not None:
            self._promoter.shutdown(wait=True)

    def usage(self) -> AdapterUsage:
        """A consistent snapshot of slot pins, loads in flight and the lifetime counters."""
        with self._lock:
            entries = list(self._entries.values())
            return AdapterUsage(
                refs=sum(e.running for e in entries),
                loading=sum(1 for e in entries if e.future is not None or e.promoting is not None),
                resident=sum(1 for o in self._owners if o is not None),
                loads=self.stats["loads"],
                load_failures=self.stats["load_failures"],
                promotions=self.stats["promotions"],
                evictions=self.stats["evictions"],
                host_cache_hits=self.loader.host_cache.hits,
                host_cache_misses=self.loader.host_cache.misses,
            )


@dataclass(frozen=True, slots=True)
class AdapterUsage:
    """What ``AdapterManager.usage`` reports (for the engine's Prometheus gauges).

    ``refs``: running requests pinning a GPU slot (0 once the engine is idle). ``loading``:
    adapters being read into the CPU tier or written into a slot. The rest count since start-up;
    ``host_cache_*`` are the CPU tier's lookups.
    """

    refs: int
    loading: int
    resident: int
    loads: int
    load_failures: int
    promotions: int
    evictions: int
    host_cache_hits: int
    host_cache_misses: int
