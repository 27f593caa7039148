"""AsyncEngine on the demo model: the event contract, limits, validation, cancellation, best_of."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.config import EngineConfig
from lorax_engine.params import Limits

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsyncEngine]:
    cfg = EngineConfig(
        model_id="demo",
        device="cpu",
        cache_dir=Path(tmp_path_factory.mktemp("demo-cache")),
        limits=Limits(
            max_input_length=64,
            max_total_tokens=96,
            max_concurrent_requests=4,
            max_best_of=3,
            max_stop_sequences=2,
        ),
        max_batch_prefill_tokens=32,
    )
    eng = AsyncEngine.from_config(cfg)
    yield eng
    eng.core.stop()


async def collect(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e async for e in events]


def req(inputs: str = "Hello there", **params: Any) -> dict[str, Any]:
    return {"request_id": "t", "inputs": inputs, "parameters": params, "tenant": None}


async def test_generate_streams_tokens_then_one_end(engine: AsyncEngine) -> None:
    events = await collect(engine.generate(req(max_new_tokens=6, ignore_eos_token=True)))
    assert [e["type"] for e in events] == ["token"] * 6 + ["end"]
    end = events[-1]
    assert end["finish_reason"] == "length"
    assert end["generated_tokens"] == 6
    assert end["prompt_tokens"] == len(engine.tokenizer.encode("Hello there"))
    assert end["generated_text"] == "".join(
        e["token"]["text"] for e in events[:-1] if not e["token"]["special"]
    )
    assert all(set(e["token"]) == {"id", "text", "logprob", "special"} for e in events[:-1])
    assert end["queue_time_s"] >= 0
    assert end["inference_time_s"] >= 0


async def test_prefill_details_and_alternatives(engine: AsyncEngine) -> None:
    events = await collect(
        engine.generate(
            req(
                max_new_tokens=2,
                decoder_input_details=True,
                return_k_alternatives=2,
                ignore_eos_token=True,
            )
        )
    )
    assert events[0]["type"] == "prefill"
    prefill = events[0]["tokens"]
    assert prefill[0]["logprob"] is None
    assert all(isinstance(t["logprob"], float) for t in prefill[1:])
    tok = events[1]["token"]
    assert len(tok["alternative_tokens"]) == 2
    assert tok["alternative_tokens"][0]["logprob"] >= tok["alternative_tokens"][1]["logprob"]


async def test_penalties_and_sampling_run_through_the_engine(engine: AsyncEngine) -> None:
    params: dict[str, Any] = {
        "repetition_penalty": 1.3,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.5,
    }
    greedy = await collect(engine.generate(req(max_new_tokens=6, ignore_eos_token=True, **params)))
    assert greedy[-1]["type"] == "end", greedy[-1]
    sampled = await collect(
        engine.generate(
            req(
                max_new_tokens=6,
                ignore_eos_token=True,
                do_sample=True,
                top_k=5,
                top_p=0.9,
                typical_p=0.9,
                temperature=0.7,
                **params,
            )
        )
    )
    assert sampled[-1]["type"] == "end", sampled[-1]
    assert sampled[-1]["generated_tokens"] == 6


async def test_greedy_is_deterministic_and_seeds_reproduce(engine: AsyncEngine) -> None:
    a = await collect(
        engine.generate(req(max_new_tokens=8, do_sample=True, seed=7, ignore_eos_token=True))
    )
    b = await collect(
        engine.generate(req(max_new_tokens=8, do_sample=True, seed=7, ignore_eos_token=True))
    )
    assert [e.get("token") for e in a[:-1]] == [e.get("token") for e in b[:-1]]
    assert a[-1]["seed"] == 7


@pytest.mark.parametrize(
    ("params", "inputs", "needle"),
    [
        ({"max_new_tokens": 95}, "Hello", "max_new_tokens"),
        ({}, "word " * 80, "inputs"),
        ({"stop": ["a", "b", "c"]}, "Hello", "stop"),
        ({"best_of": 2, "do_sample": True, "seed": 3}, "Hello", "seed"),
        ({"best_of": 5, "do_sample": True}, "Hello", "best_of"),
        ({"best_of": 2}, "Hello", "sampling"),
        ({"temperature": -1}, "Hello", "temperature"),
        ({"top_p": 1.5}, "Hello", "top_p"),
        ({"truncate": 0}, "Hello", "truncate"),
    ],
)
async def test_validation_errors_come_before_any_token(
    engine: AsyncEngine, params: dict[str, Any], inputs: str, needle: str
) -> None:
    events = await collect(engine.generate(req(inputs, **params)))
    assert len(events) == 1
    assert events[0]["type"] == "error"
    assert events[0]["error_type"] == "validation"
    assert needle in events[0]["error"]


async def test_truncate_keeps_the_last_tokens(engine: AsyncEngine) -> None:
    events = await collect(engine.generate(req("word " * 80, truncate=10, max_new_tokens=2)))
    assert events[-1]["prompt_tokens"] == 10


async def test_adapter_without_manager_is_a_generation_error(engine: AsyncEngine) -> None:
    events = await collect(engine.generate(req(adapter_id="demo/pirate")))
    assert events == [{"type": "error", "error": events[0]["error"], "error_type": "generation"}]
    assert "adapters are not enabled" in events[0]["error"]


async def test_best_of_returns_the_other_candidates(engine: AsyncEngine) -> None:
    events = await collect(
        engine.generate(req(max_new_tokens=4, best_of=3, do_sample=True, ignore_eos_token=True))
    )
    end = events[-1]
    assert end["type"] == "end"
    assert len(end["best_of_sequences"]) == 2
    best = sum(e["token"]["logprob"] for e in events if e["type"] == "token")
    for seq in end["best_of_sequences"]:
        assert sum(t["logprob"] for t in seq["tokens"]) <= best + 1e-6


async def test_cancelling_frees_blocks_and_concurrency(engine: AsyncEngine) -> None:
    stream = engine.generate(req(max_new_tokens=30, ignore_eos_token=True))
    first = await anext(stream)
    assert first["type"] == "token"
    await stream.aclose()  # type: ignore[attr-defined]
    sched = engine.core.scheduler
    for _ in range(1000):  # the core frees the blocks in its next step
        if not (sched.blocks.num_used_blocks or sched.running):
            break
        await anyio.sleep(0.01)
    assert sched.blocks.num_used_blocks == 0
    assert engine._in_flight == 0


async def test_overload_is_reported(engine: AsyncEngine) -> None:
    streams = [engine.generate(req(max_new_tokens=20, ignore_eos_token=True)) for _ in range(5)]
    firsts = [await anext(s) for s in streams]
    assert [f["type"] for f in firsts].count("error") == 1
    assert firsts[-1]["error_type"] == "overloaded"
    for s in streams:
        await s.aclose()  # type: ignore[attr-defined]


async def test_concurrent_requests_match_sequential(engine: AsyncEngine) -> None:
    prompts = ["Hello there", "The quick brown fox", "Numbers: 1 2 3"]
    alone = [
        await collect(engine.generate(req(p, max_new_tokens=6, ignore_eos_token=True)))
        for p in prompts
    ]
    together: list[list[dict[str, Any]]] = [[] for _ in prompts]

    async def run(i: int) -> None:
        together[i] = await collect(
            engine.generate(req(prompts[i], max_new_tokens=6, ignore_eos_token=True))
        )

    async with anyio.create_task_group() as tg:
        for i in range(len(prompts)):
            tg.start_soon(run, i)
    for a, t in zip(alone, together, strict=True):
        assert [e["token"]["id"] for e in a[:-1]] == [e["token"]["id"] for e in t[:-1]]


async def test_tokenize_chat_template_info_metrics(engine: AsyncEngine) -> None:
    toks = await engine.tokenize("Hello world")
    assert toks[0]["text"] == "<s>"
    assert "".join(t["text"] for t in toks[1:]) == "Hello world"
    assert all(set(t) == {"id", "text", "start", "stop"} for t in toks)
    prompt = await engine.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt.endswith("<|assistant|>\n")
    info = engine.info()
    assert info["max_total_tokens"] == 96
    assert info["max_best_of"] == 3
    assert info["dtype"] == "float32"
    assert info["device"] == "cpu"
    assert info["adapters"] == []
    text = engine.metrics_text()
    for name in (
        "lorax_engine_batch_size",
        "lorax_engine_queue_size",
        "lorax_engine_kv_blocks_used",
        "lorax_engine_kv_blocks_free",
        "lorax_engine_preemptions_total",
    ):
        assert name in text
    assert await engine.health()
