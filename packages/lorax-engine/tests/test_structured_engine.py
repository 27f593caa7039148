"""Structured output wired into the engine: one ConstraintFactory built (and the tokenizer
checked) at start-up, masks filled during the forward pass, constrained documents ending."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from engine_testkit import Collector, make_engine

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.cli import main
from lorax_engine.config import EngineConfig
from lorax_engine.core.factory import EngineStartupError, load_engine
from lorax_engine.core.inflight import PendingTokens
from lorax_engine.core.model_runner import RunnerOutput
from lorax_engine.core.scheduler import ScheduledChunk
from lorax_engine.params import Limits, SamplingParams
from lorax_engine.structured import PendingMasks, TokenConstraint

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


def _collect(
    path: Path, requests: list[tuple[str, list[int], SamplingParams, bool]]
) -> tuple[Collector, list[tuple[str, list[int]]]]:
    """Run ``(id, prompt, params, constrained)`` requests in one engine (a 16-token step budget,
    so long prompts prefill in chunks beside decodes); returns the events and the step trace:
    ("start", mask rows) for every filler call and ("execute", rows of the constrained request
    among the sampling chunks) for every forward."""
    loaded = make_engine(path, max_batch_size=8, max_batch_prefill_tokens=16)
    core = loaded.core
    factory, filler = core.constraints, core.mask_filler
    assert factory is not None
    assert filler is not None
    trace: list[tuple[str, list[int]]] = []
    real_start, real_execute = filler.start, core.runner.execute

    def start(rows: Sequence[tuple[int, TokenConstraint]]) -> PendingMasks:
        trace.append(("start", [r for r, _ in rows]))
        return real_start(rows)

    def execute(chunks: Sequence[ScheduledChunk], pending: PendingTokens | None) -> RunnerOutput:
        sampling = [c.request for c in chunks if c.samples]
        trace.append(("execute", [i for i, r in enumerate(sampling) if r.constraint is not None]))
        return real_execute(chunks, pending)

    filler.start = start  # type: ignore[method-assign]
    core.runner.execute = execute  # type: ignore[method-assign]
    c = Collector(loaded)
    for rid, prompt, params, constrained in requests:
        c.add(rid, prompt, params).constraint = factory.make(FORMAT) if constrained else None
    c.run()
    return c, trace


def test_masks_fill_after_the_forward_is_launched_and_free_batches_never_reach_the_filler(
    checkpoint: Path,
) -> None:
    free = SamplingParams(max_new_tokens=12, ignore_eos=True)
    short, long_prompt = [0, 5, 6], [0, *range(10, 50)]
    solo, trace = _collect(checkpoint, [("a", short, free, False), ("c", long_prompt, free, False)])
    assert [kind for kind, _ in trace] == ["execute"] * len(trace)  # no filler call at all

    mixed, trace = _collect(
        checkpoint,
        [
            ("a", short, free, False),
            ("b", [0, 7, 8, 9], SamplingParams(max_new_tokens=30), True),
            ("c", long_prompt, free, False),  # 40 tokens: prefilled over 3 steps
        ],
    )
    for rid in ("a", "c"):
        assert mixed.tokens(rid) == solo.tokens(rid), rid
    end = mixed.end("b")
    assert end["finish_reason"] == "eos_token", end
    assert json.loads(end["generated_text"])["n"] in range(10)
    # Every forward with the constrained row is followed by the fill of exactly that row (row 1:
    # "a" samples before it), which runs while the GPU computes the forward; no other forward is.
    # The one exception is the forward launched before "b"'s last token was read back: "b" has
    # finished by the time its mask would be filled, so that row is dropped unmasked.
    constrained = [i for i, (kind, rows) in enumerate(trace) if kind == "execute" and rows]
    for i in constrained[:-1]:
        assert trace[i] == ("execute", [1])
        assert trace[i + 1] == ("start", [1]), trace
    last = constrained[-1]
    assert last + 1 == len(trace) or trace[last + 1][0] == "execute", trace
    for i, (kind, rows) in enumerate(trace):
        if kind == "execute" and not rows:
            assert i + 1 == len(trace) or trace[i + 1][0] == "execute", trace


@pytest.mark.anyio
@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "seed": 11}])
async def test_ignore_eos_still_ends_a_complete_document(
    checkpoint: Path, sampling: dict[str, Any]
) -> None:
    engine = AsyncEngine.from_config(_config(checkpoint))
    try:
        eos = engine.tokenizer.eos_token_ids
        params = {"max_new_tokens": 60, "ignore_eos_token": True, **sampling}
        events = await _events(engine, {**params, "response_format": FORMAT})
        end = events[-1]
        assert end["finish_reason"] == "eos_token", end
        assert json.loads(end["generated_text"])["n"] in range(10)
        ids = [e["token"]["id"] for e in events if e["type"] == "token"]
        assert ids[-1] in eos
        assert not eos & set(ids[:-1])  # one EOS, ending the document
        assert end["generated_tokens"] == len(ids) < 60
        # Without a constraint ignore_eos keeps its meaning: generate until max_new_tokens.
        free = (await _events(engine, params))[-1]
        assert (free["finish_reason"], free["generated_tokens"]) == ("length", 60)
    finally:
        await engine.shutdown()
