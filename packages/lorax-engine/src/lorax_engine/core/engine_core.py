"""The synchronous engine loop: schedule -> run the model -> sample -> emit events."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lorax_engine.core.adapter_admission import AdapterAdmission
from lorax_engine.core.inflight import InflightStep
from lorax_engine.core.model_runner import ModelRunner, RunnerOutput
from lorax_engine.core.output import EventSink, RequestOutput
from lorax_engine.core.request import Request, RequestStatus
from lorax_engine.core.sampler import Sampler, SamplingRow
from lorax_engine.core.scheduler import ScheduledChunk, Scheduler
from lorax_engine.structured import ConstraintFactory, MaskFiller, PendingMasks

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StepStats:
    """What the last step did, for /metrics."""

    batch_size: int = 0
    num_tokens: int = 0
    steps: int = 0
    generated_tokens: int = 0
    finished_requests: int = 0


class EngineCore:
    """Owns the scheduler, runner and sampler; ``step()`` advances every running request once.

    Thread-safe entry points (``submit``, ``abort``) only enqueue; the loop thread applies them at
    the start of the next step, so the scheduler and the model are touched by one thread only.

    Steps overlap with the host: each step launches its forward first, taking the tokens the
    previous step sampled straight from the device; only then does the host read those tokens
    back, emit them and fill the grammar masks of the new step's constrained rows, while the GPU
    computes. When no sampling row needs its token history or a list of alternatives (penalties,
    ``return_k_alternatives``), the new tokens are chosen on the device and left in flight for
    the next step; otherwise they are sampled and emitted at once. A request that stops on a
    token has by then been decoded once more; that row is dropped.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        tokenizer: Any,
        eos_token_ids: frozenset[int],
        constraints: ConstraintFactory | None = None,
    ) -> None:
        self.scheduler = scheduler
        # Makes every constrained request's TokenConstraint (None: response_format is off).
        self.constraints = constraints
        # Fills the constrained rows' token masks on CPU threads while the forward pass runs.
        self.mask_filler: MaskFiller | None = (
            constraints.mask_filler(scheduler.config.max_batch_size)
            if constraints is not None
            else None
        )
        self.adapters: AdapterAdmission | None = None
        self.runner = runner
        self.tokenizer = tokenizer
        self.sampler = Sampler()
        self.eos_ids = eos_token_ids
        self.special_ids = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", ()))
        self.stats = StepStats()
        self._outputs: dict[str, RequestOutput] = {}
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: InflightStep | None = None

    # ---- thread-safe API ------------------------------------------------------------------
    def attach_adapters(self, adapters: AdapterAdmission) -> None:
        """Serve adapter requests: admission waits for the adapter's slot and pins it."""
        self.adapters = adapters
        self.scheduler.can_schedule = adapters.can_schedule
        self.scheduler.on_admit = adapters.on_admit
        self.scheduler.on_release = adapters.on_release

    def wake(self) -> None:
        """Make an idle loop run a step (the adapter manager calls this when a load finishes)."""
        self._inbox.put(("wake", None))

    def submit(self, request: Request, sink: EventSink) -> None:
        """Queue a validated request; ``sink`` receives its events on the loop thread."""
        self._inbox.put(("add", (request, sink)))

    def abort(self, request_id: str) -> None:
        """Cancel a request; its blocks are freed in the next step. No further events are sent."""
        self._inbox.put(("abort", request_id))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lorax-engine-core", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(("wake", None))
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.mask_filler is not None:
            self.mask_filler.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- loop thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.scheduler.has_work:
                    self._apply(self._inbox.get())  # sleep until there is something to do
                self.step()
                if self.stats.batch_size == 0 and self.scheduler.has_work:
                    # Only requests whose adapters are loading: wait for news instead of spinning.
                    with contextlib.suppress(queue.Empty):
                        self._apply(self._inbox.get(timeout=0.005))
            except Exception:  # the loop thread must outlive any one bad step
                log.exception("engine loop error")

    def _drain_inbox(self) -> None:
        while True:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._apply(cmd)

    def _apply(self, cmd: tuple[str, Any]) -> None:
        kind, payload = cmd
        if kind == "add":
            request, sink = payload
            if request.constraint is not None and self.mask_filler is None:
                sink(
                    {
                        "type": "error",
                        "error": "response_format is not enabled on this engine",
                        "error_type": "validation",
                    }
                )
                return
            if request.adapter_ref is not None:
                if self.adapters is None:
                    sink(
                        {
                            "type": "error",
                            "error": "adapters are not enabled on this engine",
                            "error_type": "generation",
                        }
                    )
                    return
                self.adapters.register(request, request.adapter_ref)
            self._outputs[request.request_id] = RequestOutput(
                request, self.tokenizer, self.special_ids, self.eos_ids, sink
            )
            self.scheduler.add(request)
        elif kind == "abort":
            out = self._outputs.pop(payload, None)
            if out is not None:
                self.scheduler.abort(out.request)

    def step(self) -> None:
        """One engine iteration (also callable directly, without the thread, as tests do)."""
        self._drain_inbox()
        if self.adapters is not None:
            for req, event in self.adapters.step(list(self.scheduler.waiting)):
                self.scheduler.finish(req)
                output = self._outputs.pop(req.request_id, None)
                if output is not None:
                    output.sink(event)
        sched = self.scheduler.schedule()
        chunks = sched.chunks
        prior, self._inflight = self._inflight, None
        self.stats.batch_size = len(chunks)
        self.stats.num_tokens = sched.num_tokens
        masks: PendingMasks | None = None
        try:
            if not chunks:
                if prior is not None:
                    self._complete(prior)
                return
            now = time.monotonic()
            for c in chunks:
                if c.request.first_scheduled_time is None:
                    c.request.first_scheduled_time = now
            # The forward first: it takes the tokens still in flight from the device, so the
            # GPU computes while the host reads them back, emits them and fills grammar masks.
            result = self.runner.execute(chunks, prior.pending() if prior is not None else None)
            if prior is not None:
                self._complete(prior)
            masks = self._start_masks(chunks)
            if self._samples_on_device(chunks):
                self._inflight = self._launch(chunks, result, masks)
            else:
                self._process(chunks, result, masks)
        except Exception as exc:  # a failed step must not take the server down with it
            log.exception("engine step failed")
            if masks is not None:
                # The fill threads must be done with the constraints and the host buffers.
                with contextlib.suppress(Exception):
                    masks.wait()
            self._inflight = None
            self._fail_all(f"engine step failed: {exc}")
        self.stats.steps += 1

    def complete_inflight(self) -> None:
        """Read back and emit the step in flight, if any (on the loop thread, between steps)."""
        prior, self._inflight = self._inflight, None
        if prior is not None:
            self._complete(prior)

    def _samples_on_device(self, chunks: Sequence[ScheduledChunk]) -> bool:
        """Whether the step's tokens can be chosen, and stay, on the device until the next step
        is launched: no row needs its token history (penalties) or a list of alternatives."""
        return all(Sampler.runs_on_device(c.request.params) for c in chunks if c.samples)

    def _launch(
        self, chunks: Sequence[ScheduledChunk], result: RunnerOutput, masks: PendingMasks | None
    ) -> InflightStep:
        """Choose the step's tokens on the device and leave them there; they count as pending
        until read. Rows of requests that just finished are chosen too, and dropped when read."""
        self._record_prompt_logprobs(chunks, result)
        sampling = [c.request for c in chunks if c.samples]
        rows = [_sampling_row(req) for req in sampling]
        ids, logprobs = self.sampler.on_device(result.sample_logits, rows, result.greedy, masks)
        for c in chunks:
            c.request.num_computed_tokens += c.num_tokens
        for req in sampling:
            req.num_pending += 1
        return InflightStep(sampling, ids, logprobs)

    def _complete(self, step: InflightStep) -> None:
        """Read an in-flight step's tokens back and emit them (as ``_process`` does)."""
        ids, logprobs = step.wait()
        for req, token, logprob in zip(step.requests, ids, logprobs, strict=True):
            if req.status is RequestStatus.FINISHED:
                continue  # it stopped on an earlier token: this one was computed in vain
            req.num_pending -= 1
            self._accept(req, token, logprob, [])

    def _start_masks(self, chunks: Sequence[ScheduledChunk]) -> PendingMasks | None:
        """Start filling the token masks of the constrained sampling rows (rows of the runner's
        ``sample_logits``, which holds the sampling chunks in order). None when no row is
        constrained, so a batch of free requests never reaches the filler. Requests that
        finished on the previous step's tokens get no mask: their rows are dropped."""
        sampling = (c.request for c in chunks if c.samples)
        rows = [
            (row, req.constraint)
            for row, req in enumerate(sampling)
            if req.constraint is not None and req.status is not RequestStatus.FINISHED
        ]
        if not rows or self.mask_filler is None:
            return None
        return self.mask_filler.start(rows)

    def _record_prompt_logprobs(
        self, chunks: Sequence[ScheduledChunk], result: RunnerOutput
    ) -> None:
        for i, lps in result.prompt_logprobs.items():
            plp = chunks[i].request.prompt_logprobs
            if plp is not None:
                plp.extend(lps)

    def _process(
        self, chunks: Sequence[ScheduledChunk], result: RunnerOutput, masks: PendingMasks | None
    ) -> None:
        """Sample on the host's schedule (penalties, alternatives) and emit the tokens now."""
        self._record_prompt_logprobs(chunks, result)
        rows: list[SamplingRow] = []
        sampling: list[Request] = []
        for c in chunks:
            req: Request = c.request
            req.num_computed_tokens += c.num_tokens
            if not c.samples:
                continue
            rows.append(_sampling_row(req))
            sampling.append(req)
        if not rows:
            return
        out = self.sampler(result.sample_logits, rows, result.greedy, masks)
        for j, req in enumerate(sampling):
            if req.status is RequestStatus.FINISHED:
                continue  # it finished on the previous step's token: this row is dropped
            self._accept(req, out.token_ids[j], out.logprobs[j], out.alternatives[j])

    def _accept(
        self, req: Request, token: int, logprob: float, alternatives: list[tuple[int, float]]
    ) -> None:
        """Append a sampled token to its request (and its grammar) and emit it; finish the
        request if it ends."""
        # A complete document before this token: an EOS now ends it even with ignore_eos.
        complete = False
        if req.constraint is not None:
            complete = req.constraint.is_finished()
            req.constraint.accept(token)
        req.token_ids.append(token)
        req.output_logprobs.append(logprob)
        self.stats.generated_tokens += 1
        output = self._outputs.get(req.request_id)
        if output is None:  # nobody listens (a cancel is on its way): stop generating now
            self.scheduler.finish(req)
            return
        if output.on_token(token, logprob, alternatives, complete):
            self._finish(output)

    def _finish(self, output: RequestOutput) -> None:
        req = output.request
        req.num_pending = 0  # a token still in flight for it is dropped when it arrives
        self.scheduler.finish(req)
        self._outputs.pop(req.request_id, None)
        self.stats.finished_requests += 1
        output.sink(output.end_event())

    def _fail_all(self, message: str) -> None:
        for output in list(self._outputs.values()):
            req = output.request
            if req.status is not RequestStatus.FINISHED:
                self.scheduler.finish(req)
            try:
                output.sink({"type": "error", "error": message, "error_type": "generation"})
            except Exception:
                log.exception("could not deliver an error event")
        self._outputs.clear()


def _sampling_row(req: Request) -> SamplingRow:
    """The row choosing the request's next token (pending ones count: the index is its place
    among the outputs, which seeds its random draw)."""
    step = req.num_tokens - req.num_prompt_tokens
    return SamplingRow(req.params, req.token_ids, req.num_prompt_tokens, step)
