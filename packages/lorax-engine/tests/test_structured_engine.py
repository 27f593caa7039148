"""Structured output wired into the engine: one ConstraintFactory built (and the tokenizer
checked) at start-up, masks filled during the forward pass, constrained documents ending."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.cli import main
from lorax_engine.config import EngineConfig
from lorax_engine.core.factory import EngineStartupError, load_engine
from lorax_engine.params import Limits

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["n"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "schema": SCHEMA}


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint: Callable[[str], Path]) -> Path:
    return make_checkpoint("llama")


@pytest.fixture(scope="module")
def unreadable_tokenizer_checkpoint(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The checkpoint with a byte-level BPE tokenizer that has lost its decoder: the grammar
    engine cannot tell which bytes its tokens stand for."""
    path = tmp_path_factory.mktemp("no-decoder")
    shutil.copytree(checkpoint, path, dirs_exist_ok=True)
    spec = json.loads((path / "tokenizer.json").read_text())
    spec["decoder"] = None
    (path / "tokenizer.json").write_text(json.dumps(spec))
    return path


def _config(path: Path, **overrides: Any) -> EngineConfig:
    overrides.setdefault("limits", Limits(max_input_length=64, max_total_tokens=128))
    return EngineConfig(model_id=str(path), device="cpu", dtype="float32", **overrides)


def test_unusable_tokenizer_fails_the_start_with_the_reason(
    unreadable_tokenizer_checkpoint: Path,
) -> None:
    with pytest.raises(EngineStartupError, match="cannot read this tokenizer") as info:
        load_engine(_config(unreadable_tokenizer_checkpoint))
    assert "--disable-structured-output" in str(info.value)


def test_cli_reports_the_start_up_failure_without_a_traceback(
    unreadable_tokenizer_checkpoint: Path,
) -> None:
    argv = ["serve", "--model-id", str(unreadable_tokenizer_checkpoint), "--device", "cpu"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert isinstance(info.value.code, str)
    assert info.value.code.startswith("lorax-engine: cannot start: structured output")


async def _events(engine: AsyncEngine, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    body = {"request_id": "r", "inputs": "Hello", "parameters": parameters}
    return [event async for event in engine.generate(body)]


@pytest.mark.anyio
async def test_disabled_structured_output_serves_text_and_refuses_formats(
    unreadable_tokenizer_checkpoint: Path,
) -> None:
    engine = AsyncEngine.from_config(
        _config(unreadable_tokenizer_checkpoint, structured_output=None)
    )
    try:
        assert engine.core.constraints is None
        plain = {"max_new_tokens": 3, "response_format": {"type": "text"}}
        assert (await _events(engine, plain))[-1]["type"] == "end"
        refused = (await _events(engine, {"max_new_tokens": 3, "response_format": FORMAT}))[-1]
        assert refused["type"] == "error"
        assert refused["error_type"] == "validation"
        assert "not enabled" in refused["error"]
    finally:
        await engine.shutdown()


@pytest.mark.anyio
async def test_every_request_uses_the_engines_one_factory(checkpoint: Path) -> None:
    from lorax_engine.structured import factory as factory_module

    registered = dict(factory_module._factories)  # pyright: ignore[reportPrivateUsage]
    engine = AsyncEngine.from_config(_config(checkpoint))
    try:
        factory = engine.core.constraints
        assert factory is not None
        # The model's EOS ids (config, generation config, tokenizer) may all end a document.
        assert set(factory.stop_token_ids) == set(engine.tokenizer.eos_token_ids)
        for _ in range(2):
            end = (await _events(engine, {"max_new_tokens": 20, "response_format": FORMAT}))[-1]
            assert end["finish_reason"] == "eos_token", end
            assert json.loads(end["generated_text"])["n"] in range(10)
        assert (factory.cache_misses, factory.cache_hits) == (1, 1)
        bad = {"type": "json_schema", "schema": {"type": "array", "uniqueItems": True}}
        refused = (await _events(engine, {"response_format": bad}))[-1]
        assert refused["error_type"] == "validation"
        assert "uniqueItems" in refused["error"]
        # The engine never goes through the process-wide registry of default factories.
        assert factory_module._factories == registered  # pyright: ignore[reportPrivateUsage]
    finally:
        await engine.shutdown()
