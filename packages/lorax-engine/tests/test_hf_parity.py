"""Greedy tokens identical to HF transformers (fp32, CPU) under continuous-batching stress."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from engine_testkit import Collector, hf_greedy, make_engine

from lorax_engine.params import Limits, SamplingParams

ARCHS = ["llama", "mistral", "qwen2"]
# Prompts of different lengths; the 30-token one crosses Mistral's 7-token window many times.
PROMPTS = [[0, *range(10, 10 + n)] for n in (3, 17, 30, 9)]
NEW_TOKENS = [12, 9, 15, 20]


@pytest.fixture(scope="module")
def references(make_checkpoint: Callable[[str], Path]) -> dict[str, list[list[int]]]:
    return {
        arch: [
            hf_greedy(make_checkpoint(arch), p, n) for p, n in zip(PROMPTS, NEW_TOKENS, strict=True)
        ]
        for arch in ARCHS
    }


def _params(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, ignore_eos=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_staggered_admission_with_small_prefill_chunks(
    arch: str, make_checkpoint: Callable[[str], Path], references: dict[str, list[list[int]]]
) -> None:
    engine = make_engine(make_checkpoint(arch), max_batch_prefill_tokens=8, max_batch_size=4)
    c = Collector(engine)
    # Requests arrive while others are mid-prefill and mid-decode.
    arrivals = {0: [0, 1], 3: [2], 7: [3]}
    for step in range(10_000):
        for i in arrivals.get(step, []):
            c.add(f"r{i}", PROMPTS[i], _params(NEW_TOKENS[i]))
        if step > max(arrivals) and all(c.done(r) for r in c.events):
            break
        engine.core.step()
    for i in range(len(PROMPTS)):
        assert c.tokens(f"r{i}") == references[arch][i], f"request {i}"
        end = c.end(f"r{i}")
        assert end["finish_reason"] == "length"
        assert end["generated_tokens"] == NEW_TOKENS[i]
        assert end["prompt_tokens"] == len(PROMPTS[i])
    assert engine.core.scheduler.blocks.num_used_blocks == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_preemption_by_tiny_kv_pool_recomputes_exactly(
    arch: str, make_checkpoint: Callable[[str], Path], references: dict[str, list[list[int]]]
) -> None:
    # 64 tokens of KV for four requests that need up to 51 each: preemption is unavoidable.
    engine = make_engine(
        make_checkpoint(arch),
        limits=Limits(max_input_length=40, max_total_tokens=64),
        max_batch_total_tokens=64,
        block_size=8,
        max_batch_prefill_tokens=16,
    )
    c = Collector(engine)
    for i, p in enumerate(PROMPTS):
        c.add(f"r{i}", p, _params(NEW_TOKENS[i]))
    c.run()
    assert engine.core.scheduler.num_preemptions > 0
    for i in range(len(PROMPTS)):
        assert c.tokens(f"r{i}") == references[arch][i], f"request {i}"
    blocks = engine.core.scheduler.blocks
    blocks.check_invariants()
    assert blocks.num_used_blocks == 0


@pytest.mark.parametrize("preempt", [False, True])
def test_prompt_logprobs_match_hf_across_prefill_chunks(
    make_checkpoint: Callable[[str], Path], preempt: bool
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    path = make_checkpoint("llama")
    prompt = PROMPTS[2]
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0]
    expected = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(prompt[1:]).unsqueeze(1))
    if preempt:  # a second request fills the tiny pool, so "a" is evicted mid-prefill
        engine = make_engine(
            path,
            limits=Limits(max_input_length=40, max_total_tokens=48),
            max_batch_total_tokens=48,
            block_size=8,
            max_batch_prefill_tokens=8,
        )
    else:
        engine = make_engine(path, max_batch_prefill_tokens=8, max_batch_size=4)
    c = Collector(engine)
    if preempt:
        c.add("b", PROMPTS[1], _params(20))
    params = SamplingParams(max_new_tokens=2, ignore_eos=True, decoder_input_details=True)
    c.add("a", prompt, params)
    c.run()
    if preempt:
        assert engine.core.scheduler.num_preemptions > 0
    prefill = c.events["a"][0]
    assert prefill["type"] == "prefill"
    got = [t["logprob"] for t in prefill["tokens"]]
    assert got[0] is None
    assert got[1:] == pytest.approx(expected.squeeze(1).tolist(), abs=1e-4)
