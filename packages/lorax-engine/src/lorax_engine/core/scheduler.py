"""Continuous batching: decode first, chunked prefill with what is left, preempt-newest on OOM.

With adapters, waiting requests are admitted through per-adapter queues (``AdapterQueues``):
time-sliced among adapters so a hot one cannot starve cold ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lorax_engine.adapters.queues import AdapterQueues
from lorax_engine.core.block_manager import BlockManager
from lorax_engine.core.request import Request, RequestStatus


@dataclass(slots=True, frozen=True)
class SchedulerConfig:
    """Per-step token budget and batch size."""

    max_batch_prefill_tokens: int = 4096  # tokens computed per step, decodes included
    max_batch_size: int = 256  # sequences running at once

    def __post_init__(self) -> None:
        if self.max_batch_size <= 0:
            raise ValueError("max_batch_size must be positive")
        if self.max_batch_prefill_tokens < self.max_batch_size:
            # Every running sequence must be able to decode in every step.
            raise ValueError("max_batch_prefill_tokens must be >= max_batch_size")


@dataclass(slots=True, frozen=True)
class ScheduledChunk:
    """``num_tokens`` tokens of ``request`` starting at token index ``start`` run this step.

    ``samples``: the chunk reaches the end of the request's tokens, so its last logits pick the
    next token. Fixed when scheduled: the request's token count changes once the step runs.
    """

    request: Request
    start: int
    num_tokens: int
    samples: bool

    @classmethod
    def of(cls, request: Request, num_tokens: int) -> ScheduledChunk:
        """The request's next ``num_tokens`` uncomputed tokens."""
        start = request.num_computed_tokens
        return cls(request, start, num_tokens, start + num_tokens == request.num_tokens)


@dataclass(slots=True, frozen=True)
class SchedulerOutput:
    chunks: tuple[ScheduledChunk, ...] = ()
    preempted: tuple[Request, ...] = ()
    # Requests whose cancellation was processed this step (their blocks are free now).
    aborted: tuple[Request, ...] = field(default_factory=tuple[Request, ...])

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    """Decides, each step, which tokens of which requests the model computes.

    Running requests keep admission order (oldest first). They are served first, each with the
    rest of its tokens up to the budget (one token for a decode); waiting requests are then
    admitted while budget, batch size, blocks and ``can_schedule`` allow: in arrival order, or,
    with ``adapter_queues``, the oldest request among the base model and the adapters whose turn
    it is (at most ``max_active`` adapters admit at a time, each for ``cycle_time_s`` while
    others wait). When a running request
    needs a block and none is free, the newest running request is preempted: its blocks are freed
    and it goes back to the front of the queue to be recomputed from its tokens.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager,
        can_schedule: Callable[[Request], bool] | None = None,
        on_admit: Callable[[Request], None] | None = None,
        on_release: Callable[[Request, bool], None] | None = None,
        adapter_queues: AdapterQueues[Request] | None = None,
    ) -> None:
        self.config = config
        self.blocks = block_manager
        # Admission hooks (the adapter manager): whether a waiting request may run now, and
        # what to do when it enters or leaves the running batch (requeue=True: preempted).
        self.can_schedule = can_schedule or (lambda _req: True)
        self.on_admit = on_admit or (lambda _req: None)
        self.on_release = on_release or (lambda _req, _requeue: None)
        # Every waiting request, in arrival order (preempted ones first); with adapter queues,
        # the same requests are also queued per adapter, which decides the admission order.
        self.waiting: deque[Request] = deque()
        self.adapter_queues = adapter_queues
        self.running: list[Request] = []
        self._aborted: list[Request] = []
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)
        if self.adapter_queues is not None:
            self.adapter_queues.push(request.adapter_key or "", request)

    def adapter_priority(self) -> list[str]:
        """Cache keys of the adapters whose turn it is to admit (the ones to make resident
        first); empty without adapter queues."""
        return [] if self.adapter_queues is None else self.adapter_queues.active_keys()

    def abort(self, request: Request) -> None:
        """Cancel a request; its blocks are freed at the start of the next ``schedule``."""
        request.aborted = True
        self._aborted.append(request)

    def finish(self, request: Request) -> None:
        """A request is complete: free its blocks now."""
        if request.status is RequestStatus.FINISHED:
            return
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
            if self.adapter_queues is not None:
                self.adapter_queues.remove(request.adapter_key or "", request)
        self.blocks.free(request.block_ids)
        request.status = RequestStatus.FINISHED
        self.on_release(request, False)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._aborted)

    def schedule(self) -> SchedulerOutput:
        aborted = self._process_aborts()
        budget = self.config.max_batch_prefill_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[Request] = []
        scheduled: set[int] = set()
        # Decodes first (oldest first), then the running partial prefills with what is left.
        order = sorted(self.running, key=lambda r: r.num_tokens - r.num_computed_tokens > 1)
        for req in order:
            if budget == 0:
                break
            if req.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            if req.reached_max_new_tokens:
                continue  # its last token is still on the GPU: the step that reads it finishes it
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            bs = self.blocks.block_size
            fits = (len(req.block_ids) + self.blocks.num_free_blocks) * bs - req.num_computed_tokens
            if n > 1 and fits >= 1:
                n = min(n, fits)  # a prefill chunk shrinks to the free blocks rather than evict
            while not self.blocks.can_grow(req.block_ids, req.num_computed_tokens + n):
                victim = next(r for r in reversed(self.running) if id(r) not in scheduled)
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            if req.status is not RequestStatus.RUNNING:
                continue
            self.blocks.grow(req.block_ids, req.num_computed_tokens + n)
            chunks.append(ScheduledChunk.of(req, n))
            scheduled.add(id(req))
            budget -= n

        # Admit new work only when nothing was preempted: otherwise we would evict and readmit.
        # A request whose adapter is still loading is passed over, not waited on.
        if not preempted:
            budget = self._admit(budget, chunks)
        return SchedulerOutput(tuple(chunks), tuple(preempted), tuple(aborted))

    def _admit(self, budget: int, chunks: list[ScheduledChunk]) -> int:
        """Move waiting requests into the batch while room is left; returns the budget left."""
        for req in self._admission_order():
            if budget == 0 or len(self.running) >= self.config.max_batch_size:
                self._put_back(req)
                break
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self.blocks.can_grow(req.block_ids, req.num_computed_tokens + n):
                self._put_back(req)
                break
            self.waiting.remove(req)
            self.blocks.grow(req.block_ids, req.num_computed_tokens + n)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            self.on_admit(req)
            chunks.append(ScheduledChunk.of(req, n))
            budget -= n
        return budget

    def _admission_order(self) -> Iterator[Request]:
        """Waiting requests that may run now, best first. From the adapter queues each is taken
        off its queue when yielded; one that does not fit goes back with ``_put_back``."""
        queues = self.adapter_queues
        if queues is None:
            yield from (r for r in list(self.waiting) if self.can_schedule(r))
            return

        def ready(key: str) -> bool:
            head = queues.peek(key)
            return head is not None and self.can_schedule(head)

        while (item := queues.pop(ready)) is not None:
            yield item[1]

    def _put_back(self, req: Request) -> None:
        if self.adapter_queues is not None:
            self.adapter_queues.push_front(req.adapter_key or "", req)

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.blocks.free(req.block_ids)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)
        if self.adapter_queues is not None:
            self.adapter_queues.push_front(req.adapter_key or "", req)
        self.num_preemptions += 1
        self.on_release(req, True)

    def _process_aborts(self) -> list[Request]:
        done: list[Request] = []
        for req in self._aborted:
            if req.status is not RequestStatus.FINISHED:
                self.finish(req)
                done.append(req)
        self._aborted.clear()
        return done
