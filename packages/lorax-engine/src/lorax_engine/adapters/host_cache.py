"""The CPU tier: adapters in (pinned) host memory, least recently used first out, bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict

from lorax_engine.adapters.weights import LoraWeights


class HostAdapterCache:
    """A thread-safe LRU of :class:`LoraWeights` whose total ``nbytes`` stays within ``capacity``.

    Entries are pinned on insertion when CUDA is present, so promotions to the GPU are
    asynchronous copies. An adapter larger than the whole capacity is not kept (the caller still
    holds it); dropping an entry only costs a reload from the disk cache.
    """

    def __init__(self, capacity_bytes: int, *, pin: bool = True) -> None:
        if capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        self.capacity_bytes = capacity_bytes
        self._pin = pin
        self._entries: OrderedDict[str, LoraWeights] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0
        # Lookups answered from / missed by this tier (the engine exports them as a hit rate).
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> LoraWeights | None:
        """The cached adapter, marked most recently used; None when absent."""
        with self._lock:
            weights = self._entries.get(key)
            if weights is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            return weights

    def put(self, weights: LoraWeights) -> LoraWeights:
        """Insert (or refresh) an adapter, evicting the least recently used ones to make room.

        Returns the stored copy (pinned where possible), which callers should use from then on.
        """
        stored = weights.pin_memory() if self._pin else weights
        with self._lock:
            old = self._entries.pop(stored.adapter_key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if stored.nbytes > self.capacity_bytes:
                return stored
            while self._bytes + stored.nbytes > self.capacity_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
            self._entries[stored.adapter_key] = stored
            self._bytes += stored.nbytes
            return stored

    def pop(self, key: str) -> LoraWeights | None:
        """Remove and return an adapter (it moves to a GPU slot, which then owns the host copy)."""
        with self._lock:
            weights = self._entries.pop(key, None)
            if weights is not None:
                self._bytes -= weights.nbytes
            return weights

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes
