"""``--kv-cache-dtype fp8``: float8 e4m3 KV caches (scale 1.0) in the engine.

fp8 K/V are not exact, so the tokens are not expected to equal the fp32 cache's everywhere; what is
checked is that the caches really are fp8, that the opening greedy tokens agree with the fp32
cache's and their log-probabilities stay within a stated distance, and that the same memory buys
twice the blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from engine_testkit import Collector, make_engine

from lorax_engine.config import EngineConfig
from lorax_engine.core.factory import LoadedEngine, num_kv_blocks
from lorax_engine.params import Limits, SamplingParams

PROMPTS = [[0, *range(10, 10 + n)] for n in (4, 13, 40)]
NEW = 8


def _greedy_with_logprobs(engine: LoadedEngine) -> list[tuple[list[int], list[float]]]:
    col = Collector(engine)
    for i, p in enumerate(PROMPTS):
        col.add(str(i), p, SamplingParams(max_new_tokens=NEW, ignore_eos=True))
    col.run()
    return [
        (
            col.tokens(str(i)),
            [e["token"]["logprob"] for e in col.events[str(i)] if e["type"] == "token"],
        )
        for i in range(len(PROMPTS))
    ]


def test_fp8_kv_cache_stays_close_to_the_fp32_cache(
    make_checkpoint: Callable[[str], Path],
) -> None:
    path = make_checkpoint("llama")
    exact = make_engine(path)
    fp8 = make_engine(path, kv_cache_dtype="fp8")
    assert all(k.dtype == torch.float8_e4m3fn for k, _ in fp8.core.runner.kv_caches)
    assert all(k.dtype == torch.float32 for k, _ in exact.core.runner.kv_caches)
    for (tokens, logprobs), (tokens8, logprobs8) in zip(
        _greedy_with_logprobs(exact), _greedy_with_logprobs(fp8), strict=True
    ):
        # The first token comes from the prefill over the just-written (fp8) K/V, the second
        # from a decode step over it; the random tiny model has near-ties later on, so only the
        # opening tokens must agree. e4m3 keeps ~2 significant digits per K/V value: the
        # log-probabilities move by ~2% here.
        assert tokens8[:2] == tokens[:2]
        assert logprobs8[:2] == pytest.approx(logprobs[:2], rel=0.05)


def test_fp8_kv_cache_doubles_the_blocks(
    make_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the pool is sized from free memory: the same budget gives twice the fp8 blocks."""
    model = make_engine(make_checkpoint("llama")).core.runner.model
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    limits = Limits(max_input_length=128, max_total_tokens=192)
    blocks = {
        kv: num_kv_blocks(
            EngineConfig(device="cuda", dtype="bfloat16", limits=limits, kv_cache_dtype=kv), model
        )
        for kv in ("auto", "fp8")
    }
    assert blocks["auto"] > 1000
    assert blocks["fp8"] in (2 * blocks["auto"], 2 * blocks["auto"] + 1)  # one floor each


def test_unknown_kv_cache_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineConfig(kv_cache_dtype="int8")
