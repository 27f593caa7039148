"""The engine-side state of one sequence being generated."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from lorax_engine.params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Request:
    """One sequence: its tokens, how many of them are in the KV cache, and its blocks.

    The one scheduling rule: ``num_computed_tokens`` catches up with ``num_tokens``. A fresh
    prompt, a chunked prefill, a decode and a recompute after preemption are all that rule.

    ``num_pending``: tokens sampled by a step still running on the GPU (the engine schedules the
    next step before it reads them back). They count in ``num_tokens``, so the scheduler already
    plans their decode; ``token_ids`` holds only the tokens the host knows.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    adapter_slot: int = -1  # LoRA slot of the request's adapter, -1 = base model
    adapter_key: str | None = None
    adapter_ref: Any = None  # lorax_engine.adapters.AdapterRef, registered on the engine thread
    adapter_handle: Any = None  # lorax_engine.adapters.AdapterHandle once registered
    constraint: Any = None  # lorax_engine.structured TokenConstraint, or None
    token_ids: list[int] = field(default_factory=list[int])
    output_logprobs: list[float] = field(default_factory=list[float])
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list[int])
    status: RequestStatus = RequestStatus.WAITING
    # Logprob of each prompt token given the ones before (None for the first), when asked for.
    prompt_logprobs: list[float | None] | None = None
    num_preemptions: int = 0
    first_scheduled_time: float | None = None
    aborted: bool = False
    num_pending: int = 0

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError("a request needs at least one prompt token")
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)
        if self.params.decoder_input_details and self.prompt_logprobs is None:
            self.prompt_logprobs = [None]  # the first token has no context to score it

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.num_pending

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        """Output tokens the host knows (pending ones excluded)."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def reached_max_new_tokens(self) -> bool:
        """Known plus pending outputs already make ``max_new_tokens``: nothing left to compute."""
        return self.num_tokens - self.num_prompt_tokens >= self.params.max_new_tokens

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Prompt logprobs are gathered during the first prefill only (not when recomputing)."""
        return (
            self.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens
        )
