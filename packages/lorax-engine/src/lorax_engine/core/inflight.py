"""A step whose sampled tokens are still on the GPU while the host prepares the next one.

The engine launches step N + 1 before it reads step N's tokens back: the decode inputs of
N + 1 that N sampled are gathered on the device (:class:`PendingTokens`), and the host does
N's bookkeeping (detokenizing, stop sequences, events) while the GPU runs N + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorax_engine.core.request import Request


@dataclass(slots=True, frozen=True)
class PendingTokens:
    """The in-flight step's sampled ids on the device, and which row belongs to which request."""

    ids: torch.Tensor  # [rows] int64, on the model's device
    row_of: dict[int, int]  # id(request) -> row of ``ids``

    def row(self, request: Request) -> int:
        """The row of ``request``'s pending token.

        Raises:
            RuntimeError: the request waits for a token this step does not sample.
        """
        row = self.row_of.get(id(request))
        if row is None:
            raise RuntimeError(
                f"request {request.request_id} waits for a token no step is sampling"
            )
        return row


class InflightStep:
    """The sampling rows of a launched step: device ids, and their copy on the way to the host."""

    def __init__(self, requests: list[Request], ids: torch.Tensor, logprobs: torch.Tensor) -> None:
        """``ids``/``logprobs``: ``[len(requests)]`` on the device, rows in ``requests`` order."""
        self.requests = requests
        self._ids = ids
        both = torch.stack([ids.double(), logprobs.double()])  # [2, rows]; float64 holds any id
        self._done: torch.cuda.Event | None = None
        if both.is_cuda:
            self._host = torch.empty(both.shape, dtype=both.dtype, pin_memory=True)
            self._host.copy_(both, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()
        else:
            self._host = both

    def pending(self) -> PendingTokens:
        return PendingTokens(self._ids, {id(r): j for j, r in enumerate(self.requests)})

    def wait(self) -> tuple[list[int], list[float]]:
        """Block until the step's tokens are on the host; ``(ids, logprobs)`` in row order."""
        if self._done is not None:
            self._done.synchronize()
        ids, logprobs = self._host.tolist()
        return [int(i) for i in ids], logprobs
