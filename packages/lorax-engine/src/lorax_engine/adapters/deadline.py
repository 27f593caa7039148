"""A wall-clock bound on blocking adapter work (``--adapter-load-timeout-s``).

A fetch that stalls (a hub that accepts the connection and never answers, a hung network mount)
cannot be interrupted from Python. So the work runs on a daemon thread of its own and the caller
waits at most ``timeout_s``: past that it gets an error and moves on, and the stalled thread may
linger until its I/O gives up. Whatever that thread produces late must not land anywhere: every
attempt has a load generation id, and shared state (the CPU tier) is only written through
:meth:`LoadAttempt.commit`, which refuses once the attempt's deadline has passed. Expiry and
commit take one lock, so exactly one of them wins.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from lorax_engine.adapters.errors import AdapterLoadError

log = logging.getLogger(__name__)

T = TypeVar("T")

_generations = itertools.count(1)


class LoadAttempt:
    """One bounded attempt at some adapter work; ``generation`` is unique per process."""

    __slots__ = ("_expired", "_lock", "generation", "label")

    def __init__(self, label: str) -> None:
        self.generation = next(_generations)
        self.label = label
        self._lock = threading.Lock()
        self._expired = False

    @property
    def expired(self) -> bool:
        with self._lock:
            return self._expired

    def commit(self, publish: Callable[[], T]) -> T | None:
        """Run ``publish`` (a write to shared state) unless the deadline has passed; None if so.

        Runs under the attempt's lock, so it is never interleaved with :meth:`_expire`: a late
        worker cannot overwrite what a newer attempt of the same adapter published.
        """
        with self._lock:
            if self._expired:
                log.info(
                    "discarding the late result of %s (load generation %d): its deadline passed",
                    self.label,
                    self.generation,
                )
                return None
            return publish()

    def _expire(self) -> None:
        with self._lock:
            self._expired = True


def run_with_deadline(
    work: Callable[[LoadAttempt], T], *, label: str, timeout_s: float, what: str = "loading"
) -> T:
    """Run ``work(attempt)`` on its own daemon thread; its result, or its exception, within
    ``timeout_s`` seconds.

    Past the deadline this raises :class:`AdapterLoadError` (424, ``code="load_timeout"``) naming
    ``label`` (an adapter id or cache key, never a credential) and leaves the thread behind. The
    thread holds no lock of its caller, so nothing else waits for it.
    """
    attempt = LoadAttempt(label)
    done = threading.Event()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(work(attempt))
        except BaseException as exc:  # handed to the caller, who re-raises it
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(
        target=target, name=f"adapter-fetch-{attempt.generation}", daemon=True
    )
    thread.start()
    if not done.wait(timeout_s):
        attempt._expire()
        # The work may have finished between the wait and the expiry: then its result stands.
        if not done.is_set():
            log.warning(
                "%s adapter %s timed out after %.1fs (load generation %d); its worker is abandoned",
                what,
                label,
                timeout_s,
                attempt.generation,
            )
            raise AdapterLoadError(
                f"{what} adapter {label} timed out after {timeout_s:g} s", code="load_timeout"
            )
    if failure:
        raise failure[0]
    return outcome[0]
