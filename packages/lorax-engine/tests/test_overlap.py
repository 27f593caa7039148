"""Overlapped steps (one step in flight while the next is scheduled) change nothing observable:
the same tokens, texts and finish reasons as completing every step before the next, no leaked
KV block, and a cancel while a step is in flight sends nothing more."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engine_testkit import Collector, make_engine

from lorax_engine.core.engine_core import EngineCore
from lorax_engine.core.scheduler import ScheduledChunk
from lorax_engine.params import Limits, SamplingParams

PROMPTS = [[0, *range(10, 10 + n)] for n in (3, 17, 30, 9)]


def _greedy(n: int, **kw: Any) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, ignore_eos=True, **kw)


def _engine(path: Path, overlap: bool, tiny_pool: bool) -> Any:
    kw: dict[str, Any] = {"max_batch_prefill_tokens": 16, "max_batch_size": 4}
    if tiny_pool:  # 64 tokens of KV for requests needing up to 45 each: preemption
        kw |= {
            "limits": Limits(max_input_length=40, max_total_tokens=64),
            "max_batch_total_tokens": 64,
            "block_size": 8,
        }
    engine = make_engine(path, **kw)
    if not overlap:
        engine.core._samples_on_device = lambda chunks: False  # type: ignore[method-assign]
    return engine


def _count_inflight(core: EngineCore) -> Callable[[], int]:
    """Wrap ``core.step`` to count the steps that leave a step in flight."""
    counter = [0]
    real_step = core.step

    def step() -> None:
        real_step()
        counter[0] += core._inflight is not None

    core.step = step  # type: ignore[method-assign]
    return lambda: counter[0]


def _run(path: Path, requests: list[tuple[list[int], SamplingParams]], **kw: Any) -> Collector:
    engine = _engine(path, **kw)
    c = Collector(engine)
    for i, (prompt, params) in enumerate(requests):
        c.add(f"r{i}", prompt, params)
    c.run()
    blocks = engine.core.scheduler.blocks
    blocks.check_invariants()
    assert blocks.num_used_blocks == 0
    return c


@pytest.mark.parametrize("tiny_pool", [False, True])
def test_overlap_matches_step_by_step(
    make_checkpoint: Callable[[str], Path], tiny_pool: bool
) -> None:
    path = make_checkpoint("llama")
    solo = _run(path, [(PROMPTS[0], _greedy(12))], overlap=False, tiny_pool=False)
    # A stop sequence made of the 5th token's text: the request stops on a token the GPU has
    # already decoded once more.
    stop_text = solo.events["r0"][5]["token"]["text"]
    assert stop_text.strip()
    requests = [
        (PROMPTS[0], _greedy(12, stop=[stop_text])),
        (PROMPTS[1], _greedy(7)),
        (PROMPTS[2], _greedy(14)),
        # Penalties need the tokens on the host: its steps complete the one in flight first.
        (PROMPTS[3], _greedy(9, repetition_penalty=1.3)),
        (PROMPTS[1], _greedy(1)),
        # Seeded sampling runs on the device too; its draws depend on (seed, output index) only.
        (PROMPTS[2], _greedy(10, temperature=0.9, top_k=40, top_p=0.9, typical_p=0.95, seed=7)),
        (PROMPTS[0], _greedy(8, do_sample=True, seed=3)),
    ]
    sync = _run(path, requests, overlap=False, tiny_pool=tiny_pool)
    engine = _engine(path, overlap=True, tiny_pool=tiny_pool)
    inflight = _count_inflight(engine.core)
    c = Collector(engine)
    for i, (prompt, params) in enumerate(requests):
        c.add(f"r{i}", prompt, params)
    c.run()
    assert inflight() > 3  # the penalty request keeps most steps synchronous
    if tiny_pool:
        assert engine.core.scheduler.num_preemptions > 0
    for rid in sync.events:
        assert c.tokens(rid) == sync.tokens(rid), rid
        got, want = c.end(rid), sync.end(rid)
        for key in ("generated_text", "finish_reason", "generated_tokens"):
            assert got[key] == want[key], (rid, key)
    assert c.end("r0")["finish_reason"] == "stop_sequence"
    assert engine.core.scheduler.blocks.num_used_blocks == 0


def test_cancel_while_a_step_is_in_flight(make_checkpoint: Callable[[str], Path]) -> None:
    engine = _engine(make_checkpoint("llama"), overlap=True, tiny_pool=False)
    core = engine.core
    c = Collector(engine)
    c.add("keep", PROMPTS[1], _greedy(10))
    c.add("gone", PROMPTS[2], _greedy(40))
    while len(c.tokens("gone")) < 3:
        core.step()
    assert core._inflight is not None
    assert any(r.request_id == "gone" for r in core._inflight.requests)
    core.abort("gone")
    gone = c.events.pop("gone")
    seen = len(gone)
    c.run()
    assert len(c.tokens("keep")) == 10
    for _ in range(3):
        core.step()  # the cancelled request's last token arrives and is dropped
    assert core._inflight is None
    assert core.scheduler.blocks.num_used_blocks == 0
    assert len(gone) == seen  # nothing was sent after the cancel


def test_decode_inputs_of_pending_tokens_come_from_the_device(
    make_checkpoint: Callable[[str], Path],
) -> None:
    """While a step is in flight the host does not know its tokens: the next step's batch holds
    -1 for them and the runner fills them in from the device."""
    engine = _engine(make_checkpoint("llama"), overlap=True, tiny_pool=False)
    core = engine.core
    seen: list[int] = []
    real_execute = core.runner.execute

    def execute(chunks: tuple[ScheduledChunk, ...], pending: Any = None) -> Any:
        host = core.runner.build_host_batch(chunks, pending)
        seen.extend(host.input_ids[host.pending_index].tolist())
        return real_execute(chunks, pending)

    core.runner.execute = execute  # type: ignore[method-assign]
    c = Collector(engine)
    c.add("a", PROMPTS[0], _greedy(6))
    c.run()
    assert seen
    assert set(seen) == {-1}
