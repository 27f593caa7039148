"""A mixed batch through the real engine equals PEFT running each adapter alone (fp32, CPU).

Base-model requests and adapters of ranks 4/8/16 with different target sets share batches; with
two GPU slots for three adapters, one is evicted to the CPU tier and promoted back, and its
requests still give PEFT's tokens.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_testkit import hf_greedy, make_engine
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lorax_engine.adapters import AdapterRef, MergeSpec
from lorax_engine.core.factory import LoadedEngine
from lorax_engine.core.request import Request
from lorax_engine.params import SamplingParams

from .conftest import ALL_TARGETS, peft_quiet, save_adapter_for, upload_dir

ADAPTERS: dict[str, dict[str, Any]] = {
    "r4": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "r8": {
        "r": 8,
        "lora_alpha": 16,
        "use_rslora": True,
        "target_modules": ["o_proj", "gate_proj", "up_proj", "down_proj"],
    },
    "r16": {"r": 16, "lora_alpha": 16, "target_modules": list(ALL_TARGETS)},
    # Only in the merge test: same rank as r16 (merges need one rank), another scale.
    "r16b": {"r": 16, "lora_alpha": 32, "target_modules": list(ALL_TARGETS)},
}
PROMPTS = [[0, *range(10, 10 + n)] for n in (5, 13, 8)]
NEW_TOKENS = 10


def _peft_greedy(ckpt: Path, adapter: Path, prompt: list[int]) -> list[int]:
    base: Any = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
    with peft_quiet():
        model: Any = PeftModel.from_pretrained(base, str(adapter)).eval()
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def setup(
    make_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, dict[str, list[list[int]]]]:
    ckpt = make_checkpoint("llama")
    root = tmp_path_factory.mktemp("adapters")
    for seed, (name, config) in enumerate(ADAPTERS.items()):
        save_adapter_for(ckpt, root / name, seed, **config)
    refs = {name: [_peft_greedy(ckpt, root / name, p) for p in PROMPTS] for name in ADAPTERS}
    refs["base"] = [hf_greedy(ckpt, p, NEW_TOKENS) for p in PROMPTS]
    return ckpt, root, refs


@contextlib.contextmanager
def _running_engine(
    ckpt: Path, root: Path, num_slots: int, **config: Any
) -> Iterator[LoadedEngine]:
    """The engine with its own adapter manager (local adapters under ``root``), loop running."""
    engine = make_engine(
        ckpt,
        lora_slots=num_slots,
        lora_max_rank=16,
        max_batch_size=16,
        local_adapter_roots=[root],
        **config,
    )
    engine.core.start()
    try:
        yield engine
    finally:
        engine.core.stop()
        assert engine.adapter_manager is not None
        engine.adapter_manager.shutdown()


def _run(
    engine: LoadedEngine, jobs: list[tuple[str, AdapterRef, list[int]]]
) -> dict[str, list[dict[str, Any]]]:
    """Run ``(request id, adapter, prompt)`` jobs concurrently through the engine loop; their events.

    The loop admits each request once its adapter is in a slot and sleeps on its inbox while
    loads run; the test only waits for every request's last event, under a wall-clock bound.
    """
    events: dict[str, list[dict[str, Any]]] = {rid: [] for rid, _, _ in jobs}
    finished: dict[str, threading.Event] = {rid: threading.Event() for rid, _, _ in jobs}

    def sink(rid: str) -> Callable[[dict[str, Any]], None]:
        def put(event: dict[str, Any]) -> None:
            events[rid].append(event)
            if event["type"] in ("end", "error"):
                finished[rid].set()

        return put

    for rid, ref, prompt in jobs:
        req = Request(rid, prompt, SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True), 0.0)
        req.adapter_ref = None if ref.is_base else ref
        engine.core.submit(req, sink(rid))
    deadline = time.monotonic() + 120
    for rid, done in finished.items():
        assert done.wait(max(0.0, deadline - time.monotonic())), f"request {rid} did not finish"
    return events


def _generate(
    engine: LoadedEngine, jobs: list[tuple[str, AdapterRef, list[int]]]
) -> dict[str, list[int]]:
    """Every job's generated tokens; each must end normally."""
    events = _run(engine, jobs)
    for evs in events.values():
        assert evs[-1]["type"] == "end", evs[-1]
    return {
        rid: [e["token"]["id"] for e in evs if e["type"] == "token"] for rid, evs in events.items()
    }


def _ref(name: str) -> AdapterRef:
    return AdapterRef() if name == "base" else AdapterRef(name, source="local")


def test_mixed_batches_match_peft_alone_across_eviction(
    setup: tuple[Path, Path, dict[str, list[list[int]]]],
) -> None:
    ckpt, root, refs = setup
    for name in ADAPTERS:  # every adapter changes the output, so a mix-up cannot pass
        assert refs[name] != refs["base"], name
    # Waves: r4 + r8 + base together; then r16 evicts one of them; then r4 again (promoted back).
    waves = [["r4", "r8", "base"], ["r16", "r8", "base"], ["r4", "r16"]]
    with _running_engine(ckpt, root, num_slots=2) as engine:
        for wave_no, wave in enumerate(waves):
            jobs = [
                (f"w{wave_no}-{n}-{i}", _ref(n), p) for n in wave for i, p in enumerate(PROMPTS)
            ]
            for rid, tokens in _generate(engine, jobs).items():
                _, name, i = rid.split("-")
                assert tokens == refs[name][int(i)], rid
        assert engine.adapter_manager is not None
        assert engine.adapter_manager.stats["evictions"] >= 1


def test_ids_linked_to_one_directory_share_its_weights_and_match_peft(
    setup: tuple[Path, Path, dict[str, list[list[int]]]],
) -> None:
    """Four ids over two directories (the e2e benchmark's layout): two reads from disk, every
    id's tokens are its directory's, across an eviction to the CPU tier and back."""
    ckpt, root, refs = setup
    links = {"link-r4a": "r4", "link-r4b": "r4", "link-r16a": "r16", "link-r16b": "r16"}
    for link, target in links.items():
        if not (root / link).is_symlink():
            (root / link).symlink_to(target)
    waves = [["link-r4a", "link-r16a"], ["link-r4b", "link-r16b"], ["link-r4a", "base"]]
    with _running_engine(ckpt, root, num_slots=1) as engine:
        for wave_no, wave in enumerate(waves):
            jobs = [
                (f"w{wave_no}|{n}|{i}", _ref(n), p) for n in wave for i, p in enumerate(PROMPTS)
            ]
            for rid, tokens in _generate(engine, jobs).items():
                _, name, i = rid.split("|")
                assert tokens == refs[links.get(name, name)][int(i)], rid
        assert engine.adapter_manager is not None
        assert engine.adapter_manager.loader.disk_loads == 2
        assert engine.adapter_manager.stats["evictions"] >= 1


def test_merged_adapter_matches_peft_add_weighted_adapter(
    setup: tuple[Path, Path, dict[str, list[list[int]]]],
) -> None:
    """A ``ties`` merge served beside plain adapters equals PEFT generating with its own merge."""
    ckpt, root, refs = setup
    merge = MergeSpec(("r16", "r16b"), (0.7, 0.5), "ties", 0.5, "total")
    base: Any = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
    with peft_quiet():
        peft: Any = PeftModel.from_pretrained(base, str(root / "r16"), adapter_name="r16")
        peft.load_adapter(str(root / "r16b"), adapter_name="r16b")
        peft.add_weighted_adapter(
            ["r16", "r16b"], [0.7, 0.5], "m", combination_type="ties", density=0.5
        )
        peft.set_adapter("m")
        want = [
            peft.generate(
                input_ids=torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(p) :].tolist()
            for p in PROMPTS
        ]
    assert want != refs["r16"]
    merged = AdapterRef(merged=merge, source="local")
    jobs = [(f"m-{i}", merged, p) for i, p in enumerate(PROMPTS)]
    jobs += [(f"r4-{i}", _ref("r4"), p) for i, p in enumerate(PROMPTS)]
    with _running_engine(ckpt, root, num_slots=2) as engine:
        got = _generate(engine, jobs)
    for i in range(len(PROMPTS)):
        assert got[f"m-{i}"] == want[i], i
        assert got[f"r4-{i}"] == refs["r4"][i], i


def test_s3_adapters_through_the_engine(
    setup: tuple[Path, Path, dict[str, list[list[int]]]],
    s3_endpoint: str,
    bucket: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--adapter-source s3`` with the endpoint from ``AWS_ENDPOINT_URL`` (boto3's own chain):
    an adapter on S3 gives PEFT's tokens, and a missing object fails only its own request."""
    ckpt, root, refs = setup
    client, name = bucket
    upload_dir(client, name, "team/r4", root / "r4")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)

    def ref(adapter_id: str) -> AdapterRef:  # what the engine builds from a request's parameters
        return AdapterRef.from_parameters(
            {"adapter_id": adapter_id}, tenant=None, default_source="s3"
        )

    jobs = [(f"s3-{i}", ref(f"s3://{name}/team/r4"), p) for i, p in enumerate(PROMPTS)]
    jobs += [("missing", ref(f"s3://{name}/team/nope"), PROMPTS[0])]
    jobs += [(f"base-{i}", AdapterRef(), p) for i, p in enumerate(PROMPTS)]
    with _running_engine(ckpt, root, 2, adapter_source="s3", cache_dir=tmp_path) as engine:
        events = _run(engine, jobs)
    missing = events.pop("missing")
    assert [e["type"] for e in missing] == ["error"]
    assert missing[0]["error_type"] == "not_found"
    for rid, evs in events.items():
        assert evs[-1]["type"] == "end", (rid, evs[-1])
        kind, i = rid.split("-")
        want = refs["r4" if kind == "s3" else "base"][int(i)]
        assert [e["token"]["id"] for e in evs if e["type"] == "token"] == want, rid
    assert any((tmp_path / "lorax-adapters" / "s3").iterdir())  # fetched into the engine's cache


def test_a_stalled_adapter_fails_only_its_requests_after_the_load_timeout(
    setup: tuple[Path, Path, dict[str, list[list[int]]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--adapter-load-timeout-s``: a hub fetch that never returns fails its requests (424)
    once the deadline passes, while the other adapters and the base model run as usual."""
    ckpt, root, refs = setup
    release = threading.Event()

    def stall(source: object, ref: AdapterRef) -> object:
        release.wait(60)
        raise OSError("the stalled fetch finally gave up")

    monkeypatch.setattr("lorax_engine.adapters.sources.hub.HubSource.fetch", stall)
    stalled = AdapterRef("org/stalled", source="hub", api_token="hf_secret")
    jobs = [(f"stalled-{i}", stalled, p) for i, p in enumerate(PROMPTS)]
    jobs += [(f"r4-{i}", _ref("r4"), p) for i, p in enumerate(PROMPTS)]
    jobs += [(f"base-{i}", AdapterRef(), p) for i, p in enumerate(PROMPTS)]
    try:
        with _running_engine(ckpt, root, 2, adapter_load_timeout_s=0.5) as engine:
            started = time.monotonic()
            events = _run(engine, jobs)
            elapsed = time.monotonic() - started
    finally:
        release.set()
    for i in range(len(PROMPTS)):
        (error,) = events.pop(f"stalled-{i}")
        assert error["type"] == "error"
        assert error["error_type"] == "generation"
        assert "org/stalled" in error["error"]
        assert "timed out" in error["error"]
        assert "hf_secret" not in error["error"]
    for rid, evs in events.items():
        assert evs[-1]["type"] == "end", (rid, evs[-1])
        kind, i = rid.split("-")
        assert [e["token"]["id"] for e in evs if e["type"] == "token"] == refs[kind][int(i)], rid
    assert elapsed < 20, elapsed  # bounded by the deadline, not by the 60 s stall
