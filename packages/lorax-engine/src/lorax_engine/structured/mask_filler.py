"""Token masks for the constrained rows of a batch, computed on CPU threads while the GPU runs
the forward pass, then applied to the logits on the device without a host sync.

Per step, in the engine's step loop:

    pending = filler.start([(row, constraint), ...])   # before launching the forward
    logits = runner.execute(batch)                      # GPU busy, CPU threads fill masks
    ...penalties...
    pending.apply_(logits)                              # waits for the CPU fill only
    ...temperature / top-k / top-p / sample...
    for row, constraint in rows: constraint.accept(sampled[row])

Unconstrained rows are never touched and a step with no constrained row costs nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import cast

import numpy as np
import numpy.typing as npt
import torch

from lorax_engine.structured.constraint import TokenConstraint
from lorax_engine.structured.llguidance_backend import LLGuidanceBatchFill, LLGuidanceConstraint

# Rows per fill task: large enough that Python's per-task overhead stays small next to a
# mask computation (tens of microseconds each), small enough to spread over the threads.
_MIN_ROWS_PER_TASK = 2


def _fill_rows(constraints: Sequence[TokenConstraint], masks: npt.NDArray[np.int32]) -> None:
    # llguidance releases the GIL inside each fill, so tasks on several threads run in
    # parallel with each other and with the step loop's kernel launches.
    for constraint, row in zip(constraints, masks, strict=True):
        constraint.fill_allowed(row)


def apply_token_bitmask_(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None
) -> None:
    """Set disallowed tokens' logits to -inf, in place.

    Args:
        logits: `[batch, vocab]` float, any device.
        bitmask: `[num_rows, words]` int32 on `logits.device`; bit `t % 32` of word `t // 32`
            allows token `t`. Columns past `32 * words` (a model vocab padded beyond the
            tokenizer's) are disallowed.
        rows: `[num_rows]` int64 on `logits.device`, the logits row of each mask row; None
            when the mask covers every row in order.
    """
    num_rows, words = bitmask.shape
    vocab = logits.shape[1]
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    # [num_rows, words, 32] -> [num_rows, words * 32]; arithmetic shift of a negative word is
    # fine because only bit 0 is kept.
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().reshape(num_rows, words * 32)
    if words * 32 >= vocab:
        allowed = allowed[:, :vocab]
    else:
        allowed = torch.nn.functional.pad(allowed, (0, vocab - words * 32), value=False)
    if rows is None:
        logits.masked_fill_(~allowed, float("-inf"))
        return
    sub = logits.index_select(0, rows)  # [num_rows, vocab]
    sub.masked_fill_(~allowed, float("-inf"))
    logits.index_copy_(0, rows, sub)


class PendingMasks:
    """The masks of one step, being filled on CPU threads."""

    def __init__(
        self,
        filler: MaskFiller,
        slot: int,
        num_rows: int,
        futures: list[Future[None]],
    ) -> None:
        self._filler = filler
        self._slot = slot
        self._num_rows = num_rows
        self._futures = futures

    @property
    def num_rows(self) -> int:
        return self._num_rows

    def wait(self) -> torch.Tensor:
        """Block until filled; the host masks `[num_rows, words]` int32 (valid until the
        filler's next-but-one `start`). Re-raises a fill error."""
        for future in self._futures:
            future.result()
        return self._filler.host_masks[self._slot][: self._num_rows]

    def apply_(self, logits: torch.Tensor) -> None:
        """Wait for the CPU fill, copy masks and row indices to `logits.device` without
        blocking the host on the device, and mask `logits` (`[batch, vocab]`) in place."""
        if self._num_rows == 0:
            return
        host = self.wait()
        rows_host = self._filler.host_rows[self._slot][: self._num_rows]
        if logits.device.type == "cpu":
            apply_token_bitmask_(logits, host, rows_host)
            return
        masks, rows = self._filler.device_buffers(logits.device)
        masks = masks[: self._num_rows]
        rows = rows[: self._num_rows]
        masks.copy_(host, non_blocking=True)
        rows.copy_(rows_host, non_blocking=True)
        # The pinned buffers are reused two steps later: remember when the copy is done.
        event = torch.cuda.Event()
        event.record()
        self._filler.copy_done[self._slot] = event
        apply_token_bitmask_(logits, masks, rows)


class MaskFiller:
    """Fills bitmasks for up to `max_rows` constrained rows per step on `num_threads` threads.

    llguidance constraints are filled by one llguidance call over its own pool of
    `num_threads` Rust threads; other `TokenConstraint`s row by row on Python threads.

    Two sets of (pinned, when CUDA is available) host buffers alternate between steps, so a
    step's asynchronous host-to-device copy never races the next step's fill.
    """

    def __init__(self, mask_words: int, max_rows: int, num_threads: int = 4) -> None:
        if mask_words < 1 or max_rows < 1 or num_threads < 1:
            raise ValueError("mask_words, max_rows and num_threads must be >= 1")
        pin = torch.cuda.is_available()
        self.mask_words = mask_words
        self.max_rows = max_rows
        self.num_threads = num_threads
        self.host_masks = [
            torch.empty((max_rows, mask_words), dtype=torch.int32, pin_memory=pin) for _ in range(2)
        ]
        self.host_rows = [
            torch.empty((max_rows,), dtype=torch.int64, pin_memory=pin) for _ in range(2)
        ]
        self.copy_done: list[torch.cuda.Event | None] = [None, None]
        self._device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._slot = 0
        self._pool = ThreadPoolExecutor(num_threads, thread_name_prefix="lorax-mask")
        self._batch_fill = LLGuidanceBatchFill(num_threads)

    def device_buffers(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Preallocated `[max_rows, words]` int32 masks and `[max_rows]` int64 rows on `device`."""
        bufs = self._device.get(device)
        if bufs is None:
            bufs = (
                torch.empty((self.max_rows, self.mask_words), dtype=torch.int32, device=device),
                torch.empty((self.max_rows,), dtype=torch.int64, device=device),
            )
            self._device[device] = bufs
        return bufs

    def start(self, rows: Sequence[tuple[int, TokenConstraint]]) -> PendingMasks:
        """Begin filling the masks of `rows` (`(logits row, constraint)` pairs); returns at once.

        The constraints must not be advanced until the returned masks were waited for.
        """
        if len(rows) > self.max_rows:
            raise ValueError(f"{len(rows)} constrained rows exceed max_rows={self.max_rows}")
        slot = self._slot
        self._slot ^= 1
        done = self.copy_done[slot]
        if done is not None:
            # Recorded a whole step ago and the sampled tokens have been read back since, so
            # this returns at once; it guards against a caller that skips the read-back.
            done.synchronize()
            self.copy_done[slot] = None
        num_rows = len(rows)
        if num_rows == 0:
            return PendingMasks(self, slot, 0, [])
        self.host_rows[slot][:num_rows] = torch.tensor([r for r, _ in rows], dtype=torch.int64)
        masks = self.host_masks[slot].numpy()[:num_rows]
        constraints = [c for _, c in rows]
        if LLGuidanceBatchFill.accepts(constraints, self.mask_words):
            # One task: a single llguidance call fills every row on its own thread pool.
            batch = cast(list[LLGuidanceConstraint], constraints)
            future = self._pool.submit(self._batch_fill, batch, masks)
            return PendingMasks(self, slot, num_rows, [future])
        # Other backends (or rows wider than the vocabulary): row by row on Python threads.
        tasks = max(1, min(self.num_threads, num_rows // _MIN_ROWS_PER_TASK))
        bounds = np.linspace(0, num_rows, tasks + 1).astype(int).tolist()
        futures = [
            self._pool.submit(_fill_rows, constraints[a:b], masks[a:b])
            for a, b in itertools.pairwise(bounds)
        ]
        return PendingMasks(self, slot, num_rows, futures)

    def close(self) -> None:
        """Stop the fill threads (waits for running fills)."""
        self._pool.shutdown(wait=True)
