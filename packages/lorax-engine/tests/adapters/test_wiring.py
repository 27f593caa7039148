"""The adapter flags, from the command lines (engine and launcher) into a running engine.

Repeatable local roots, preloading at start-up, the adapter memory fraction bounding the slots,
the size limit, and the scheduler's per-adapter queues (a hot adapter cannot starve a cold one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_testkit import make_engine

from lorax_engine.adapters import AdapterRef
from lorax_engine.cli import build_parser, config_from_args
from lorax_engine.config import EngineConfig
from lorax_engine.core.factory import (
    EngineStartupError,
    LoadedEngine,
    num_lora_slots,
)
from lorax_engine.core.request import Request
from lorax_engine.lora import LoraSlots
from lorax_engine.params import Limits, SamplingParams

from .conftest import save_adapter_for

ADAPTER_FLAGS = [
    "--max-active-adapters",
    "3",
    "--local-adapter-root",
    "/srv/a",
    "--local-adapter-root",
    "/srv/b",
    "--preloaded-adapter-ids",
    "x,y",
    "--preloaded-adapter-ids",
    "z",
    "--adapter-cycle-time-s",
    "0.5",
    "--adapter-load-timeout-s",
    "7.5",
    "--adapter-memory-fraction",
    "0.25",
    "--max-adapter-bytes",
    "1000",
    "--max-lora-rank",
    "32",
    "--lora-dtype",
    "fp8",
]
EXPECTED = {
    "lora_slots": 3,
    "local_adapter_roots": (Path("/srv/a"), Path("/srv/b")),
    "preloaded_adapter_ids": ("x", "y", "z"),
    "adapter_cycle_time_s": 0.5,
    "adapter_load_timeout_s": 7.5,
    "adapter_memory_fraction": 0.25,
    "adapter_max_bytes": 1000,
    "lora_max_rank": 32,
    "lora_dtype": "fp8",
}


def _fields(config: EngineConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in EXPECTED}


def test_engine_cli_adapter_flags() -> None:
    args = build_parser().parse_args(["serve", *ADAPTER_FLAGS])
    assert _fields(config_from_args(args)) == EXPECTED
    defaults = config_from_args(build_parser().parse_args(["serve"]))
    assert defaults.local_adapter_roots == ()
    assert defaults.lora_slots == 8  # the demo's adapters work without flags, as in the launcher
    assert defaults.adapter_cycle_time_s == 2.0  # LoRAX's defaults
    assert defaults.adapter_memory_fraction == 0.1
    assert defaults.adapter_load_timeout_s == 120.0
    assert defaults.lora_dtype == "auto"


def test_launcher_passes_adapter_flags_to_the_engine() -> None:
    from lorax_gateway.backends.local import LocalBackend
    from lorax_gateway.launcher import build_parser as launcher_parser
    from lorax_gateway.launcher import engine_options

    args = launcher_parser().parse_args(["--model-id", "demo", *ADAPTER_FLAGS])
    backend = LocalBackend.from_options(engine_options(args))  # refuses unknown options
    assert _fields(EngineConfig(**_config_kwargs(backend.options))) == EXPECTED


def _config_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "max_concurrent_requests"}


@pytest.mark.parametrize(
    "bad",
    [
        {"adapter_cycle_time_s": -1.0},
        {"adapter_load_timeout_s": 0.0},
        {"adapter_memory_fraction": 0.0},
        {"adapter_memory_fraction": 1.5},
        {"adapter_max_bytes": 0},
        {"preloaded_adapter_ids": ["a"]},  # with adapters off (lora_slots 0)
        {"lora_dtype": "int8"},
    ],
)
def test_bad_adapter_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad)).removeprefix("adapter_")):
        EngineConfig(**bad)


def test_adapter_memory_fraction_bounds_the_slots(make_checkpoint: Callable[[str], Path]) -> None:
    engine = make_engine(make_checkpoint("llama"), lora_slots=4, lora_max_rank=8)
    spec = engine.core.runner.model.lora_spec()
    per_slot = LoraSlots.bytes_per_slot(spec, 8, torch.float32)
    # The formula is the runner's real allocation: A and B tables (``nbytes``), plus each
    # slot's rank (int32) and scale (float32) in every one of the 4 projections' tables.
    tables = spec.num_layers * 4
    assert (
        per_slot * 3 == LoraSlots.allocate(spec, 3, 8, torch.float32, "cpu").nbytes + 3 * 8 * tables
    )

    def slots(memory: int, fraction: float, wanted: int = 4) -> int:
        cfg = EngineConfig(
            device="cpu", lora_slots=wanted, lora_max_rank=8, adapter_memory_fraction=fraction
        )
        return num_lora_slots(cfg, spec, memory)

    assert slots(100 * per_slot, 0.1) == 4  # room for 10: the flag's 4
    assert slots(100 * per_slot, 0.025) == 2  # room for 2.5
    with pytest.raises(EngineStartupError, match="adapter-memory-fraction"):
        slots(100 * per_slot, 0.005)

    def fit(lora_dtype: str) -> int:  # bfloat16 tables against fp8 ones, in the same memory
        cfg = EngineConfig(
            device="cpu", dtype="bfloat16", lora_slots=1000, lora_max_rank=8, lora_dtype=lora_dtype
        )
        assert cfg.torch_lora_dtype == (
            torch.float8_e4m3fn if lora_dtype == "fp8" else torch.bfloat16
        )
        return num_lora_slots(cfg, spec, 1000 * per_slot)

    assert 1.9 * fit("auto") < fit("fp8") < 2.1 * fit("auto")


def _run(engine: LoadedEngine, jobs: list[tuple[str, str | None]], prompt: list[int]) -> None:
    """Submit ``(request id, local adapter id)`` jobs and wait (bounded) for their last events."""
    done = {rid: threading.Event() for rid, _ in jobs}
    last: dict[str, dict[str, Any]] = {}
    for rid, adapter in jobs:
        req = Request(rid, prompt, SamplingParams(max_new_tokens=4, ignore_eos=True), 0.0)
        req.adapter_ref = None if adapter is None else AdapterRef(adapter, source="local")

        def sink(event: dict[str, Any], rid: str = rid) -> None:
            if event["type"] in ("end", "error"):
                last[rid] = event
                done[rid].set()

        engine.core.submit(req, sink)
    deadline = time.monotonic() + 60
    for rid, event in done.items():
        assert event.wait(max(0.0, deadline - time.monotonic())), f"{rid} did not finish"
        assert last[rid]["type"] == "end", last[rid]


def test_roots_preload_and_size_limit_in_the_engine(
    make_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    ckpt = make_checkpoint("llama")
    roots = [tmp_path / "one", tmp_path / "two"]
    save_adapter_for(ckpt, roots[0] / "first", 1, r=4, lora_alpha=8, target_modules=["q_proj"])
    save_adapter_for(ckpt, roots[1] / "second", 2, r=4, lora_alpha=8, target_modules=["v_proj"])
    engine = make_engine(
        ckpt,
        lora_slots=2,
        lora_max_rank=8,
        local_adapter_roots=roots,
        adapter_source="local",
        preloaded_adapter_ids=["second"],
        adapter_cycle_time_s=0.25,
        adapter_load_timeout_s=30.0,
    )
    manager = engine.adapter_manager
    assert manager is not None
    try:
        # Warm before any request: loaded, in a slot; the cycle time reached manager and queues.
        assert list(manager.resident()) == [AdapterRef("second", source="local").cache_key()]
        assert manager.config.cycle_time_s == 0.25
        assert manager.loader.timeout_s == 30.0
        queues = engine.core.scheduler.adapter_queues
        assert queues is not None
        assert (queues.max_active, queues.cycle_time_s) == (2, 0.25)
        engine.core.start()
        # Dynamic loading stays on: an adapter of the other root loads on demand.
        _run(engine, [("a", "first"), ("b", "second"), ("c", None)], [0, 5, 6, 7])
        assert manager.stats["loads"] == 2
    finally:
        engine.core.stop()
        manager.shutdown()
    with pytest.raises(EngineStartupError, match="not found"):
        make_engine(
            ckpt,
            lora_slots=1,
            local_adapter_roots=roots,
            adapter_source="local",
            preloaded_adapter_ids=["nope"],
        )
    size = (roots[0] / "first" / "adapter_model.safetensors").stat().st_size
    small = make_engine(ckpt, lora_slots=1, local_adapter_roots=roots, adapter_max_bytes=size - 1)
    assert small.adapter_manager is not None
    with pytest.raises(Exception, match="limit") as info:
        small.adapter_manager.loader.load(AdapterRef("first", source="local"))
    assert getattr(info.value, "code", None) == "too_large"
    small.adapter_manager.shutdown()


def test_a_hot_adapter_cannot_starve_a_cold_one(
    make_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    """One slot; a steady stream for "hot" (each finished request is replaced, and some hot
    request is always running) and one request for "cold". The scheduler's adapter queues rotate
    "hot" out after its cycle, so its running requests drain and "cold" takes the slot while the
    hot stream is still going; admitting in arrival order would keep the slot pinned by "hot"
    for as long as its stream lasts."""
    ckpt = make_checkpoint("llama")
    for seed, name in enumerate(("hot", "cold")):
        save_adapter_for(ckpt, tmp_path / name, seed, r=4, lora_alpha=8, target_modules=["q_proj"])
    engine = make_engine(
        ckpt,
        lora_slots=1,
        lora_max_rank=8,
        local_adapter_roots=[tmp_path],
        preloaded_adapter_ids=["hot"],
        adapter_source="local",
        adapter_cycle_time_s=0.02,
        max_batch_size=4,
    )
    manager = engine.adapter_manager
    assert manager is not None
    total_hot = 80
    finished: list[str] = []
    all_done = threading.Event()
    submitted = [0]

    def submit(name: str) -> None:
        rid = f"{name}-{submitted[0]}"
        # Different lengths, so hot requests finish at different steps and one is always running.
        params = SamplingParams(max_new_tokens=2 + submitted[0] % 5, ignore_eos=True)
        req = Request(rid, [0, 5, 6, 7], params, 0.0)
        req.adapter_ref = AdapterRef(name, source="local")
        submitted[0] += 1
        engine.core.submit(req, lambda event: on_event(name, event))

    def on_event(name: str, event: dict[str, Any]) -> None:  # on the engine's loop thread
        if event["type"] not in ("end", "error"):
            return
        assert event["type"] == "end", event
        finished.append(name)
        if name == "hot" and submitted[0] < total_hot + 1:
            submit("hot")  # the hot stream never runs dry
        if len(finished) == total_hot + 1:
            all_done.set()

    try:
        for _ in range(4):
            submit("hot")
        engine.core.start()
        submit("cold")
        assert all_done.wait(120), f"finished only {len(finished)}"
    finally:
        engine.core.stop()
        manager.shutdown()
    # "cold" ran while most of the hot stream was still to come.
    assert finished.index("cold") < total_hot // 2, finished.index("cold")
    assert manager.stats["evictions"] >= 1


def test_the_memory_fraction_lowers_the_slots_the_engine_allocates_and_reports(
    make_checkpoint: Callable[[str], Path],
) -> None:
    import os

    from lorax_engine.async_engine import AsyncEngine

    ckpt = make_checkpoint("llama")
    spec = make_engine(ckpt, lora_slots=1, lora_max_rank=8).core.runner.model.lora_spec()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # the CPU's "device memory"
    fraction = 2.5 * LoraSlots.bytes_per_slot(spec, 8, torch.float32) / ram
    config = EngineConfig(
        model_id=str(ckpt),
        device="cpu",
        dtype="float32",
        limits=Limits(max_input_length=64, max_total_tokens=96),
        lora_slots=8,
        lora_max_rank=8,
        adapter_memory_fraction=fraction,
    )
    engine = AsyncEngine.from_config(config)
    manager = engine.adapter_manager
    assert manager is not None
    try:
        slots = engine.core.runner.lora_slots
        assert slots is not None
        assert slots.num_slots == 2
        assert manager.config.num_slots == 2
        assert engine.info()["max_active_adapters"] == 2
    finally:
        engine.core.stop()
        manager.shutdown()
