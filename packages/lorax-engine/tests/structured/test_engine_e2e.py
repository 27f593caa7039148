"""Through the real engine (tiny random Llama, trained BPE): constrained and unconstrained
requests mixed in one continuous batch, and a streamed constrained request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
from engine_testkit import Collector, make_engine

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.config import EngineConfig
from lorax_engine.params import Limits, SamplingParams

# Bounded everywhere, so even a greedy random model must close the document.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "note": {"anyOf": [{"type": "string", "maxLength": 8}, {"type": "null"}]},
    },
    "required": ["color", "n", "tags", "note"],
    "additionalProperties": False,
}
PROMPTS = [[0, *range(10, 10 + n)] for n in (5, 12, 3, 8)]


def _run(
    path: Path, requests: dict[str, tuple[list[int], SamplingParams, dict[str, Any] | None]]
) -> Collector:
    engine = make_engine(path, max_batch_size=8)
    factory = engine.core.constraints
    assert factory is not None
    c = Collector(engine)
    for rid, (prompt, params, fmt) in requests.items():
        req = c.add(rid, prompt, params)
        req.constraint = factory.make(fmt) if fmt is not None else None
    c.run()
    return c


def _text(c: Collector, rid: str) -> str:
    return c.end(rid)["generated_text"]


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint: Callable[[str], Path]) -> Path:
    return make_checkpoint("llama")


def test_mixed_batch_leaves_unconstrained_rows_alone(checkpoint: Path) -> None:
    fmt = {"type": "json_schema", "schema": SCHEMA}
    greedy = SamplingParams(max_new_tokens=40, ignore_eos=True)
    sampled = SamplingParams(max_new_tokens=120, do_sample=True, seed=7)
    constrained_greedy = SamplingParams(max_new_tokens=120)
    mixed = _run(
        checkpoint,
        {
            "free0": (PROMPTS[0], greedy, None),
            "json0": (PROMPTS[1], constrained_greedy, fmt),
            "free1": (PROMPTS[2], sampled, None),
            "json1": (PROMPTS[3], sampled, fmt),
        },
    )
    alone = _run(checkpoint, {"free0": (PROMPTS[0], greedy, None)})
    alone_sampled = _run(checkpoint, {"free1": (PROMPTS[2], sampled, None)})
    assert mixed.tokens("free0") == alone.tokens("free0")
    assert mixed.tokens("free1") == alone_sampled.tokens("free1")
    for rid in ("json0", "json1"):
        end = mixed.end(rid)
        assert end["finish_reason"] == "eos_token", end
        jsonschema.validate(json.loads(_text(mixed, rid)), SCHEMA)


def test_unconstrained_greedy_model_does_not_emit_json(checkpoint: Path) -> None:
    # The control for the test above: the random model left alone prints no valid document.
    free = _run(checkpoint, {"r": (PROMPTS[1], SamplingParams(max_new_tokens=40), None)})
    with pytest.raises(json.JSONDecodeError):
        json.loads(_text(free, "r"))


async def _events(engine: AsyncEngine, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [event async for event in engine.generate(body)]


@pytest.mark.anyio
async def test_streamed_constrained_request_through_async_engine(checkpoint: Path) -> None:
    config = EngineConfig(
        model_id=str(checkpoint),
        device="cpu",
        dtype="float32",
        limits=Limits(max_input_length=128, max_total_tokens=256),
    )
    engine = AsyncEngine.from_config(config)
    try:
        fmt = {"type": "json_object", "schema": SCHEMA}
        body = {
            "request_id": "r1",
            "inputs": "Describe a color:",
            "parameters": {
                "max_new_tokens": 150,
                "do_sample": True,
                "seed": 3,
                "response_format": fmt,
            },
        }
        events = await _events(engine, body)
        end = events[-1]
        assert end["type"] == "end", end
        assert end["finish_reason"] == "eos_token"
        streamed = "".join(
            e["token"]["text"] for e in events if e["type"] == "token" and not e["token"]["special"]
        )
        assert streamed == end["generated_text"]
        jsonschema.validate(json.loads(end["generated_text"]), SCHEMA)

        bad = {"type": "json_schema", "schema": {"type": "array", "uniqueItems": True}}
        body["parameters"]["response_format"] = bad
        events = await _events(engine, body)
        assert events[-1]["type"] == "error"
        assert events[-1]["error_type"] == "validation"
        assert "uniqueItems" in events[-1]["error"]
    finally:
        await engine.shutdown()


@pytest.mark.anyio
async def test_adapters_constrained_and_free_in_one_batch(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    config = EngineConfig(
        model_id="demo",
        device="cpu",
        cache_dir=tmp_path_factory.mktemp("demo-cache"),
        limits=Limits(max_input_length=64, max_total_tokens=192),
        lora_slots=2,
        lora_max_rank=8,
    )
    engine = AsyncEngine.from_config(config)
    fmt = {"type": "json_object", "schema": SCHEMA}

    def body(adapter: str | None, constrained: bool, seed: int) -> dict[str, Any]:
        params: dict[str, Any] = {"max_new_tokens": 120, "do_sample": True, "seed": seed}
        if adapter is not None:
            params["adapter_id"] = adapter
        if constrained:
            params["response_format"] = fmt
        return {"inputs": "Arr, a color as JSON:", "parameters": params}

    bodies = [
        body(None, False, 1),
        body("demo/pirate", False, 2),
        body("demo/shakespeare", True, 3),
        body("demo/pirate", True, 4),
        body(None, True, 5),
    ]
    try:
        together: list[list[dict[str, Any]]] = [[] for _ in bodies]

        async def run(i: int) -> None:
            together[i] = await _events(engine, bodies[i])

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(len(bodies)):
                    tg.start_soon(run, i)
        for i in (0, 1):  # the free requests, alone
            alone = await _events(engine, bodies[i])
            assert _token_ids(alone) == _token_ids(together[i]), i
        for i in (2, 3, 4):
            end = together[i][-1]
            assert end["type"] == "end", end
            assert end["finish_reason"] == "eos_token", end
            jsonschema.validate(json.loads(end["generated_text"]), SCHEMA)
    finally:
        await engine.shutdown()


def _token_ids(events: list[dict[str, Any]]) -> list[int]:
    return [e["token"]["id"] for e in events if e["type"] == "token"]
