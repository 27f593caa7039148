"""A mixed batch through the real engine equals PEFT running each adapter alone (fp32, CPU).

Base-model requests and adapters of ranks 4/8/16 with different target sets share batches; with
two GPU slots for three adapters, one is evicted to the CPU tier and promoted back, and its
requests still give PEFT's tokens. With fp8 slot tables (``--lora-dtype fp8``) the reference is
PEFT on each adapter's fp8 round trip.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_testkit import fp8_round_trip, hf_greedy, make_engine
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from lorax_engine.adapters import AdapterRef, MergeSpec
from lorax_engine.core.factory import LoadedEngine
from lorax_engine.core.request import Request
from lorax_engine.lora import PEFT_TARGETS
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


def _fp8_round_trip_adapter(src: Path, dst: Path) -> None:
    """``src`` with its weights as fp8 slot tables hold them (engine_testkit.fp8_round_trip):
    one scale for the A and one for the B of each layer's fused projection (q/k/v, o, gate/up,
    down), shared by its slices."""
    tensors = load_file(str(src / "adapter_model.safetensors"))
    groups: dict[tuple[int, str, str], list[str]] = {}  # (layer, projection, A|B) -> names
    for name in tensors:
        m = re.search(r"\.layers\.(\d+)\..*\.(\w+_proj)\.lora_([AB])\.weight$", name)
        assert m is not None, name
        groups.setdefault((int(m[1]), PEFT_TARGETS[m[2]][0], m[3]), []).append(name)
    for names in groups.values():
        rounded, _ = fp8_round_trip([tensors[n] for n in names])
        tensors.update(zip(names, rounded, strict=True))
    dst.mkdir()
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    shutil.copy(src / "adapter_config.json", dst)


def test_fp8_slot_tables_match_peft_on_the_fp8_round_trip(
    setup: tuple[Path, Path, dict[str, list[list[int]]]], tmp_path: Path
) -> None:
    """``lora_dtype="fp8"``: adapters of three ranks and target sets and the base model in one
    batch give the tokens PEFT gives with each adapter's weights replaced by their round trip
    through fp8 at the engine's per-(layer, projection) scales."""
    ckpt, root, refs = setup
    names = ["r4", "r8", "r16"]
    want: dict[str, list[list[int]]] = {"base": refs["base"]}
    for name in names:
        _fp8_round_trip_adapter(root / name, tmp_path / name)
        want[name] = [_peft_greedy(ckpt, tmp_path / name, p) for p in PROMPTS]
    # The rounding changes every adapter's tokens: serving the weights unrounded cannot pass.
    assert all(want[n] != refs[n] for n in names)
    jobs = [(f"{n}-{i}", _ref(n), p) for n in [*names, "base"] for i, p in enumerate(PROMPTS)]
    with _running_engine(ckpt, root, num_slots=3, lora_dtype="fp8") as engine:
        slots = engine.core.runner.lora_slots
        assert slots is not None
        assert slots.table(0, "qkv").lora_a.dtype == torch.float8_e4m3fn
        got = _generate(engine, jobs)
    for rid, tokens in got.items():
        name, i = rid.split("-")
        assert tokens == want[name][int(i)], rid


@pytest.mark.gpu
def test_fp8_slot_tables_on_cuda_match_model_dtype_tables_of_the_round_trip(
    setup: tuple[Path, Path, dict[str, list[list[int]]]], tmp_path: Path
) -> None:
    """On CUDA (graphs, the Triton kernels): each adapter served from fp8 tables gives the tokens
    of its fp8 round trip served from float32 tables, where only the scales' place differs."""
    ckpt, root, _ = setup
    names = ["r4", "r8", "r16"]
    for name in names:
        _fp8_round_trip_adapter(root / name, tmp_path / name)
    jobs = [(f"{n}-{i}", _ref(n), p) for n in [*names, "base"] for i, p in enumerate(PROMPTS)]
    torch.backends.cuda.matmul.allow_tf32 = False
    got: dict[str, dict[str, list[int]]] = {}
    for lora_dtype, adapters in (("fp8", root), ("auto", tmp_path)):
        config = {"device": "cuda", "max_batch_total_tokens": 4096, "lora_dtype": lora_dtype}
        with _running_engine(ckpt, adapters, num_slots=3, **config) as engine:
            got[lora_dtype] = _generate(engine, jobs)
    assert got["fp8"] == got["auto"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lora_shrink_beside_the_base_gemm_gives_the_serial_tokens(
    setup: tuple[Path, Path, dict[str, list[list[int]]]], dtype: str
) -> None:
    """On CUDA the decode LoRA shrink runs on a side stream beside the base GEMM, inside the
    decode graphs (``lorax_engine.lora.side_stream``): every request's tokens are those of the
    serial fused kernel, in fp32 and in bf16 (the same kernels' units and sums, in two
    launches)."""
    from lorax_engine.lora import side_stream

    ckpt, root, _ = setup
    names = ["r4", "r8", "r16", "base"]
    jobs = [(f"{n}-{i}", _ref(n), p) for n in names for i, p in enumerate(PROMPTS)]
    torch.backends.cuda.matmul.allow_tf32 = False
    got: dict[bool, dict[str, list[int]]] = {}
    try:
        for enabled in (True, False):
            side_stream.set_enabled(enabled)
            config = {"device": "cuda", "max_batch_total_tokens": 4096, "dtype": dtype}
            with _running_engine(ckpt, root, num_slots=3, **config) as engine:
                got[enabled] = _generate(engine, jobs)
    finally:
        side_stream.set_enabled(True)
    assert got[True] == got[False]


class _ReplayedEagerly:
    """A stand-in for a captured CUDA graph on the CPU: a replay runs the step again and writes
    its results into the outputs the capture returned, as a real replay does."""

    def __init__(self, step: Callable[[], Any]) -> None:
        self.step = step
        self.outputs = step()

    def replay(self) -> None:
        for kept, new in zip(self.outputs, self.step(), strict=True):
            kept.copy_(new)


class _EagerPool:
    """``GraphPool``'s interface without CUDA: each capture is a `_ReplayedEagerly`."""

    def capture(self, step: Callable[[], Any]) -> tuple[_ReplayedEagerly, Any]:
        graph = _ReplayedEagerly(step)
        return graph, graph.outputs


def test_graph_inputs_give_the_eager_tokens_on_cpu(
    setup: tuple[Path, Path, dict[str, list[list[int]]]],
) -> None:
    """The decode and mixed-step graphs' static inputs (``core.cuda_graphs``,
    ``core.mixed_graphs``), replayed eagerly on the CPU: steps padded to their bucket, with empty
    sequence places and logits gathered through the static row index, give PEFT's fp32 tokens
    on three adapters and the base model at once, and both kinds of replay ran."""
    from lorax_engine.core.cuda_graphs import DecodeGraphs
    from lorax_engine.core.mixed_graphs import MixedGraphs

    ckpt, root, refs = setup
    names = ["r4", "r8", "r16", "base"]
    jobs = [(f"{n}-{i}", _ref(n), p) for n in names for i, p in enumerate(PROMPTS)]
    with _running_engine(ckpt, root, num_slots=3, max_batch_prefill_tokens=48) as engine:
        runner = engine.core.runner
        runner.graphs = decode = DecodeGraphs(runner, 16, _EagerPool())  # type: ignore[arg-type]
        runner.mixed_graphs = mixed = MixedGraphs(runner, 16, _EagerPool())  # type: ignore[arg-type]
        got = _generate(engine, jobs)
    for graphs in (decode, mixed):
        assert any(lora for _, lora in graphs._graphs)  # pyright: ignore[reportPrivateUsage]
    for name in names:
        for i in range(len(PROMPTS)):
            assert got[f"{name}-{i}"] == refs[name][i], (name, i)


@pytest.mark.gpu
def test_mixed_step_graphs_give_the_eager_tokens_and_peft_s(
    setup: tuple[Path, Path, dict[str, list[list[int]]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA, steps that carry prompt chunks replay the mixed-step graphs
    (``core.mixed_graphs``): fp32 tokens are the eager engine's, for prompts in every token
    bucket, chunked past the step budget, on three adapters and the base model at once; and
    PEFT's for the reference prompts (on the GPU's kernels one near-tie may flip, as in
    ``test_gpu.py``)."""
    from lorax_engine.core.mixed_graphs import MixedGraphs

    ckpt, root, refs = setup
    long_prompts = [[(7 * j) % 60 + 1 for j in range(n)] for n in (40, 70, 100, 127)]
    names = ["r4", "r8", "r16", "base"]
    jobs = [(f"{n}-{i}", _ref(n), p) for n in names for i, p in enumerate(PROMPTS + long_prompts)]
    replays = 0
    run = MixedGraphs.run

    def counted(self: MixedGraphs, *args: Any) -> Any:
        nonlocal replays
        replays += 1
        return run(self, *args)

    monkeypatch.setattr(MixedGraphs, "run", counted)
    torch.backends.cuda.matmul.allow_tf32 = False
    got: dict[bool, dict[str, list[int]]] = {}
    for eager in (False, True):
        # 128 tokens a step: buckets of 64 and 128, the 100- and 127-token prompts chunked when
        # they share a step.
        config = {"device": "cuda", "max_batch_total_tokens": 4096, "eager": eager}
        with _running_engine(ckpt, root, num_slots=3, max_batch_prefill_tokens=128, **config) as e:
            got[eager] = _generate(e, jobs)
        if not eager:
            assert replays > 0
    assert got[False] == got[True]
    pairs = [(got[False][f"{n}-{i}"], refs[n][i]) for n in names for i in range(len(PROMPTS))]
    assert sum(ours != peft for ours, peft in pairs) <= 1, pairs


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
