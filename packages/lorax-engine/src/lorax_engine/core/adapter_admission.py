"""Connects the adapter manager (lorax_engine.adapters) to the scheduler and the step loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lorax_engine.core.request import Request

if TYPE_CHECKING:
    from lorax_engine.adapters import AdapterManager


class AdapterAdmission:
    """A request runs only once its adapter is in a GPU slot; it pins the slot while running.

    Called on the engine thread only: ``register`` when a request arrives, ``can_schedule`` /
    ``on_admit`` / ``on_release`` from the scheduler, ``step`` and ``failed`` once per step.
    """

    def __init__(
        self, manager: AdapterManager, priority: Callable[[], list[str]] | None = None
    ) -> None:
        self.manager = manager
        # The adapters whose turn it is (the scheduler's adapter queues): promoted first, and
        # the only ones that may take a slot from an adapter that others still wait for.
        self.priority = priority

    def register(self, request: Request, ref: Any) -> None:
        request.adapter_handle = self.manager.request(ref)
        request.adapter_key = request.adapter_handle.key or None

    def can_schedule(self, request: Request) -> bool:
        from lorax_engine.adapters import AdapterState

        handle = request.adapter_handle
        return handle is None or self.manager.state(handle) is AdapterState.READY

    def on_admit(self, request: Request) -> None:
        if request.adapter_handle is not None:
            request.adapter_slot = self.manager.acquire(request.adapter_handle)

    def on_release(self, request: Request, requeue: bool) -> None:
        """Finished or cancelled (``requeue=False``), or preempted (keeps its claim)."""
        if request.adapter_handle is not None:
            self.manager.release(request.adapter_handle, requeue=requeue)
            request.adapter_slot = -1

    def step(self, waiting: list[Request]) -> list[tuple[Request, dict[str, Any]]]:
        """Advance loads/promotions (the waiting requests' adapters first); return the waiting
        requests whose adapter failed to load, each with its error event."""
        from lorax_engine.adapters import AdapterState

        if self.priority is not None:
            keys = self.priority()
        else:
            keys = list(dict.fromkeys(r.adapter_key for r in waiting if r.adapter_key))
        failed_keys = self.manager.step(keys)
        failed: list[tuple[Request, dict[str, Any]]] = []
        if not failed_keys:
            return failed  # the common step: no scan of the waiting requests
        for req in waiting:
            handle = req.adapter_handle
            if req.adapter_key not in failed_keys or handle is None:
                continue
            if self.manager.state(handle) is AdapterState.FAILED:
                error = self.manager.error(handle)
                event = (
                    error.to_event()
                    if error is not None
                    else {
                        "type": "error",
                        "error": "adapter failed to load",
                        "error_type": "generation",
                    }
                )
                failed.append((req, event))
        return failed
