"""The start-up warm-up: which prefill steps run within the engine's limits, and that the KV and
adapter slot they touch leave later requests exactly as without them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from engine_testkit import Collector, hf_greedy, make_engine

from lorax_engine.core.inflight import PendingTokens
from lorax_engine.core.model_runner import ModelRunner, RunnerOutput
from lorax_engine.core.scheduler import ScheduledChunk
from lorax_engine.params import Limits, SamplingParams

LIMITS = Limits(max_input_length=128, max_total_tokens=192)  # sequences of at most 192 tokens


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, int]]]:
    """Every step the runner executes, as (tokens, adapter slot) per chunk."""
    seen: list[list[tuple[int, int]]] = []
    real = ModelRunner.execute

    def spy(
        self: ModelRunner, chunks: Sequence[ScheduledChunk], pending: PendingTokens | None = None
    ) -> RunnerOutput:
        seen.append([(c.num_tokens, c.request.adapter_slot) for c in chunks])
        return real(self, chunks, pending)

    monkeypatch.setattr(ModelRunner, "execute", spy)
    return seen


def test_each_step_that_fits_runs_at_start_up(
    make_checkpoint: Callable[[str], Path], steps: list[list[tuple[int, int]]]
) -> None:
    make_engine(make_checkpoint("llama"), limits=LIMITS, max_batch_prefill_tokens=700, lora_slots=2)
    # The long sequence is split at the 192-token limit, both pieces without adapter; the last
    # step is one token on slot 0 (the one-token LoRA metadata update).
    assert steps == [
        [(17, -1)],
        [(16, -1), (32, 0)],
        [(5, -1), (16, 0), (192, -1), (192, -1), (172, -1)],
        [(1, 0)],
    ]


def test_steps_over_the_prefill_budget_are_skipped(
    make_checkpoint: Callable[[str], Path], steps: list[list[tuple[int, int]]]
) -> None:
    make_engine(make_checkpoint("llama"), limits=LIMITS, max_batch_prefill_tokens=40)
    assert steps == [[(17, -1)], [(1, -1)]]  # 48 and 577 tokens do not fit; no slots: no adapter


def test_requests_after_the_warm_up_match_hf(make_checkpoint: Callable[[str], Path]) -> None:
    """Real requests then get the blocks the warm-up wrote KV into: their greedy tokens are
    still HF's."""
    path = make_checkpoint("llama")
    loaded = make_engine(path, limits=LIMITS, max_batch_prefill_tokens=700, lora_slots=2)
    col = Collector(loaded)
    prompts = {"a": [5, 9, 14, 3, 22, 7, 11], "b": list(range(4, 40))}
    for rid, prompt in prompts.items():
        col.add(rid, prompt, SamplingParams(max_new_tokens=6))
    col.run()
    for rid, prompt in prompts.items():
        assert col.tokens(rid) == hf_greedy(path, prompt, 6)
