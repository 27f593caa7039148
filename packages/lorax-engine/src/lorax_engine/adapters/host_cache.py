"""The CPU tier: adapters in (pinned) host memory, least recently used first out, bounded in bytes.

Adapter ids whose weights come from the same unchanged file (the same :class:`WeightsOrigin`)
share one packed copy here; each id still has its own entry (its key, its place in the LRU
order), and the bytes of a shared copy count once.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch

from lorax_engine.adapters.weights import LoraWeights, WeightsOrigin
from lorax_engine.lora.packed import PackedLora


class HostAdapterCache:
    """A thread-safe LRU of :class:`LoraWeights` whose storage stays within ``capacity``.

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
        # Entries per storage (a packed buffer, or an unpacked adapter's module dict): its bytes
        # count while at least one entry uses it.
        self._users: dict[int, int] = {}
        self._bytes = 0
        # Every packed copy still alive anywhere (this tier, a GPU slot's entry, a caller), by
        # origin: held weakly, so sharing never keeps memory that nothing else wants.
        self._by_origin: weakref.WeakValueDictionary[WeightsOrigin, PackedLora] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()
        self.evictions = 0
        # Lookups answered from / missed by this tier (the engine exports them as a hit rate).
        self.hits = 0
        self.misses = 0

    @property
    def pins(self) -> bool:
        """Whether stored adapters are page-locked (so loaders may pack straight into pinned
        memory and spare :meth:`put` a copy)."""
        return self._pin and torch.cuda.is_available()

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

    def shared(self, origin: WeightsOrigin, adapter_key: str) -> LoraWeights | None:
        """A packed copy of ``origin``'s weights that is already in host memory, as the adapter
        ``adapter_key``; None when there is none. The caller then :meth:`put` s it."""
        with self._lock:
            packed = self._by_origin.get(origin)
        return None if packed is None else LoraWeights.from_packed(adapter_key, packed, origin)

    def put(self, weights: LoraWeights) -> LoraWeights:
        """Insert (or refresh) an adapter, evicting the least recently used ones to make room.

        Returns the stored copy (pinned where possible, and the shared copy when one of the
        same origin is in memory already), which callers should use from then on.
        """
        stored = weights.pin_memory() if self._pin else weights
        with self._lock:
            if stored.origin is not None and stored.packed is not None:
                known = self._by_origin.get(stored.origin)
                if known is None:
                    self._by_origin[stored.origin] = stored.packed
                elif known is not stored.packed:  # read twice (e.g. a retried load): keep one
                    stored = LoraWeights.from_packed(stored.adapter_key, known, stored.origin)
            old = self._entries.pop(stored.adapter_key, None)
            if old is not None:
                self._release(old)
            if stored.nbytes > self.capacity_bytes:
                return stored
            while self._bytes + self._added_bytes(stored) > self.capacity_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._release(evicted)
                self.evictions += 1
            self._entries[stored.adapter_key] = stored
            self._bytes += self._added_bytes(stored)
            token = _storage(stored)
            self._users[token] = self._users.get(token, 0) + 1
            return stored

    def pop(self, key: str) -> LoraWeights | None:
        """Remove and return an adapter (it moves to a GPU slot, which then owns the host copy)."""
        with self._lock:
            weights = self._entries.pop(key, None)
            if weights is not None:
                self._release(weights)
            return weights

    def _added_bytes(self, weights: LoraWeights) -> int:
        """What storing ``weights`` adds: nothing when another entry uses the same storage."""
        return 0 if _storage(weights) in self._users else weights.nbytes

    def _release(self, weights: LoraWeights) -> None:
        token = _storage(weights)
        self._users[token] -= 1
        if self._users[token] == 0:
            del self._users[token]
            self._bytes -= weights.nbytes

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Host memory the entries hold, shared storage counted once."""
        with self._lock:
            return self._bytes


def _storage(weights: LoraWeights) -> int:
    """Identifies the memory behind ``weights`` (alive while an entry holds it, so ids stay unique)."""
    return id(weights.packed) if weights.packed is not None else id(weights.modules)
