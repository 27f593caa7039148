"""The blocking part of getting an adapter: fetch, validate, merge, keep in the CPU tier.

Runs on the manager's loader threads, never on the step loop. Every fetch is bounded in wall-clock
time (:mod:`lorax_engine.adapters.deadline`), so a stalled source fails its adapter instead of
holding a loader thread for ever. Ids whose files are the same unchanged weights (many ids linked
to one directory) are read from disk once: the others share that copy in the CPU tier.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from lorax_engine.adapters.deadline import LoadAttempt, run_with_deadline
from lorax_engine.adapters.host_cache import HostAdapterCache
from lorax_engine.adapters.merge import merge_adapters, merge_seed
from lorax_engine.adapters.peft_loader import (
    LoadLimits,
    ModelSpecLike,
    load_peft_lora,
    peft_origin,
    read_chat_template,
)
from lorax_engine.adapters.ref import AdapterRef
from lorax_engine.adapters.sources.base import SourceRegistry
from lorax_engine.adapters.weights import LoraWeights

log = logging.getLogger(__name__)

# Loads of one origin take turns (so the second finds the first's copy instead of reading the
# file again); a few dozen stripes keep unrelated loads from waiting on each other.
_ORIGIN_STRIPES = 64


class AdapterLoader:
    """Turns an :class:`AdapterRef` into host :class:`LoraWeights`, through the CPU tier.

    Thread-safe: the host cache is, and everything else here is read-only.

    ``timeout_s`` (``--adapter-load-timeout-s``) bounds each load and each chat-template fetch:
    past it the caller gets an :class:`~lorax_engine.adapters.errors.AdapterLoadError`
    (``code="load_timeout"``), and whatever the abandoned worker produces later is discarded.
    """

    def __init__(
        self,
        sources: SourceRegistry,
        spec: ModelSpecLike,
        limits: LoadLimits,
        host_cache: HostAdapterCache,
        dtype: torch.dtype = torch.float32,
        timeout_s: float = 120.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.sources = sources
        self.spec = spec
        self.limits = limits
        self.host_cache = host_cache
        self.dtype = dtype
        self.timeout_s = timeout_s
        self._templates: dict[str, str | None] = {}
        self._templates_lock = threading.Lock()
        self._origin_locks = [threading.Lock() for _ in range(_ORIGIN_STRIPES)]
        # Adapters read from disk (or merged) since start-up; ids served from another id's copy
        # are not counted.
        self.disk_loads = 0

    def chat_template(self, ref: AdapterRef) -> str | None:
        """The adapter's own chat template (None: use the base model's). Blocking, cached.

        A merge has none of its own. Fetching goes through the source, so the same credential
        rules apply as for the weights.
        """
        if ref.is_base or ref.merged is not None:
            return None
        key = ref.cache_key()
        with self._templates_lock:
            if key in self._templates:
                return self._templates[key]
        label = ref.adapter_id or key

        def fetch(attempt: LoadAttempt) -> str | None:
            template = read_chat_template(self.sources.fetch(ref).directory, label)

            def publish() -> None:
                with self._templates_lock:
                    self._templates[key] = template

            attempt.commit(publish)
            return template

        return run_with_deadline(
            fetch, label=label, timeout_s=self.timeout_s, what="fetching the chat template of"
        )

    def load(self, ref: AdapterRef) -> LoraWeights:
        """The adapter's weights: from the CPU tier when there, else fetched (and cached) within
        ``timeout_s``."""
        key = ref.cache_key()
        cached = self.host_cache.get(key)
        if cached is not None:
            return cached
        # The key carries no credential (only an HMAC of it), so it may name the adapter.
        label = ref.adapter_id or key
        return run_with_deadline(
            lambda attempt: self._load_uncached(ref, key, attempt),
            label=label,
            timeout_s=self.timeout_s,
        )

    def _load_uncached(self, ref: AdapterRef, key: str, attempt: LoadAttempt) -> LoraWeights:
        started = time.perf_counter()
        if ref.merged is not None:
            components = [self.load(ref.component(i)) for i in ref.merged.ids]
            # DARE's seed comes from the merge request without its credential scope (whose HMAC
            # changes per process), so one request merges to one result across restarts.
            public_key = AdapterRef(merged=ref.merged, source=ref.source).cache_key()
            weights = merge_adapters(key, components, ref.merged, seed=merge_seed(public_key))
            stored = attempt.commit(lambda: self.host_cache.put(weights))
            self._count_disk_load()
        else:
            directory = self.sources.fetch(ref).directory
            label = ref.adapter_id or key
            origin = peft_origin(directory, self.limits, self.dtype, display_name=label)
            with self._origin_locks[hash(origin) % _ORIGIN_STRIPES]:
                weights = self.host_cache.shared(origin, key)
                if weights is not None:
                    log.debug("adapter %s shares the host copy of %s", key, origin.file.path)
                    return attempt.commit(lambda: self.host_cache.put(weights)) or weights
                weights = load_peft_lora(
                    directory,
                    key,
                    self.spec,
                    self.limits,
                    self.dtype,
                    display_name=ref.adapter_id,
                    pin=self.host_cache.pins,
                )
                # Published under the stripe lock, so a load of the same origin waiting on it
                # finds this copy.
                stored = attempt.commit(lambda: self.host_cache.put(weights))
                self._count_disk_load()
        if stored is None:  # too late: a newer attempt may have published this adapter already
            return weights
        # The key carries no credential (only an HMAC of it), so it is safe to log.
        log.info(
            "loaded adapter %s: rank %d, %d modules, %.1f MiB in %.2fs (%d read so far)",
            key,
            stored.rank,
            len(stored.modules),
            stored.nbytes / 2**20,
            time.perf_counter() - started,
            self.disk_loads,
        )
        return stored

    def _count_disk_load(self) -> None:
        with self._templates_lock:
            self.disk_loads += 1
