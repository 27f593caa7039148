"""The adapter manager wired into AsyncEngine: demo adapters give PEFT's tokens, mixed with base."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.config import EngineConfig
from lorax_engine.params import Limits

pytestmark = pytest.mark.anyio
PROMPT = "Hello there, matey"
NEW = 8


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsyncEngine]:
    cfg = EngineConfig(
        model_id="demo",
        device="cpu",
        cache_dir=Path(tmp_path_factory.mktemp("demo-cache")),
        limits=Limits(max_input_length=64, max_total_tokens=96),
        lora_slots=1,  # two adapters, one slot: they must take turns
        lora_max_rank=8,
    )
    eng = AsyncEngine.from_config(cfg)
    yield eng
    eng.core.stop()
    assert eng.adapter_manager is not None
    eng.adapter_manager.shutdown()


def _peft_greedy(model_dir: Path, adapter: str | None, prompt_ids: list[int]) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with warnings.catch_warnings():  # PEFT touches attributes transformers deprecates
        warnings.simplefilter("ignore", FutureWarning)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(model_dir / "adapters" / adapter))
        out = model.eval().generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()


async def collect(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e async for e in events]


def body(adapter: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"max_new_tokens": NEW, "ignore_eos_token": True}
    if adapter is not None:
        params["adapter_id"] = adapter
    return {"inputs": PROMPT, "parameters": params}


async def test_mixed_adapters_and_base_match_peft(engine: AsyncEngine) -> None:
    names = [None, "demo/pirate", "demo/shakespeare", "demo/pirate", None]
    results: list[list[dict[str, Any]]] = [[] for _ in names]

    async def run(i: int) -> None:
        results[i] = await collect(engine.generate(body(names[i])))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i in range(len(names)):
                tg.start_soon(run, i)
    prompt_ids = engine.tokenizer.encode(PROMPT)
    refs = {n: _peft_greedy(engine.model_dir, n, prompt_ids) for n in set(names)}
    assert refs["demo/pirate"] != refs[None]
    assert refs["demo/shakespeare"] != refs["demo/pirate"]
    for name, events in zip(names, results, strict=True):
        assert events[-1]["type"] == "end", events[-1]
        assert [e["token"]["id"] for e in events if e["type"] == "token"] == refs[name], name
    assert engine.info()["adapters_enabled"] is True
    assert engine.info()["adapters"] == ["demo/pirate", "demo/shakespeare"]
    assert "lorax_engine_adapters_resident 1.0" in engine.metrics_text()


async def test_unknown_adapter_is_an_error_event(engine: AsyncEngine) -> None:
    with anyio.fail_after(60):
        events = await collect(engine.generate(body("demo/nope")))
    assert len(events) == 1
    assert events[0]["type"] == "error"
    assert events[0]["error_type"] in ("not_found", "validation", "generation")


async def test_path_escape_is_refused(engine: AsyncEngine) -> None:
    with anyio.fail_after(60):
        events = await collect(engine.generate(body("../../etc")))
    assert events[-1]["type"] == "error"
