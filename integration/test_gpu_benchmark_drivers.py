"""The GPU benchmark drivers (benchmarks/gpu/run.sh) run end to end in their ``--tiny`` CPU form.

GPU time is scarce: a driver that breaks on an engine change must fail here, not on the H200.
Each test runs one driver as its own process on a small model and checks what it reports.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from lorax.bench.cli import parser
from lorax.bench.session import configs_from_args
from lorax_gateway.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "packages/lorax-engine/benchmarks"


def run_driver(script: Path, args: str, timeout_s: float = 240) -> list[dict[str, Any]]:
    """Run ``script`` with ``args`` (shell words); its JSON lines."""
    proc = subprocess.run(
        [sys.executable, str(script), *shlex.split(args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_structured_driver_constrains_rows_and_decodes_every_token() -> None:
    lines = run_driver(
        BENCHMARKS / "bench_structured.py",
        "--tiny --batch 4 --input 16 --output 12 --repeats 1 --min-items 2",
    )
    runs = {r["mode"]: r for r in lines if r["event"] == "run"}
    assert set(runs) == {"free", "half", "all"}
    for r in runs.values():
        # The schema's minimum length outlasts --output: no constrained row finishes early.
        assert r["finish_reasons"] == {"length": 4}
        assert r["output_tokens"] == 48
    assert runs["half"]["row0"].startswith('[{"id":"')
    summary = {r["mode"]: r for r in lines if r["event"] == "structured"}
    assert summary["half"]["constrained_rows"] == 2
    assert summary["all"]["constrained_rows"] == 4
    assert isinstance(summary["half"]["goal_met"], bool)


def test_quant_driver_measures_every_method_with_and_without_adapters() -> None:
    methods = ["bf16", "fp8", "gptq", "gptq-act", "awq"]
    lines = run_driver(
        BENCHMARKS / "bench_quant.py",
        f"--tiny --methods {','.join(methods)} --batches 2 --input 16 --output 4",
    )
    rows = [r for r in lines if r["event"] == "quant"]
    assert [(r["method"], r["batch"], r["lora"] is not None) for r in rows] == [
        (m, 2, lora) for m in methods for lora in (False, True)
    ]
    assert all(r["output_tokens"] == 4 * r["batch"] for r in rows)
    methods_events = {r["method"]: r for r in lines if r["event"] == "method"}
    # Without the LM head (fp8 serves it in fp8 too, the others in 16 bits), each method's
    # weights shrink with its bits: 4 < 8 < 16.
    body = {m: r["weight_bytes"] - r["head_bytes"] for m, r in methods_events.items()}
    assert body["gptq"] < body["fp8"] < body["bf16"]
    heads = {m: r["head_bytes"] for m, r in methods_events.items()}
    assert heads["fp8"] < heads["bf16"] == heads["gptq"]
    # Drift against bf16 on the same prompts: small, and never zero for a quantized base.
    drift = {r["method"]: r["mean_kl_vs_bf16"] for r in rows if r["lora"] is None}
    assert drift["bf16"] == 0.0
    assert all(0.0 < drift[m] < 0.1 for m in methods[1:])


def test_mixed_steps_driver_times_decode_and_mixed_steps_in_every_mode() -> None:
    lines = run_driver(BENCHMARKS / "bench_mixed_steps.py", "--tiny --steps 6 --profile")
    rows = [r for r in lines if r["event"] == "mixed_steps"]
    # On the CPU there are no graphs: the graph modes run eagerly and say so.
    assert [(r["lora"], r["mixed_graphs"]) for r in rows] == [(False, False)] * 2 + [
        (True, False)
    ] * 2 + [(False, False)] * 2 + [(True, False)] * 2
    # --profile: the first round (the CPU has no kernels, only the plumbing).
    assert ["mixed_kernels" in r for r in rows] == [True] * 4 + [False] * 4
    for r in rows:
        # A new prompt every third step: two mixed steps of six, the rest decodes.
        assert (r["mixed_steps"], r["decode_steps"]) == (2, 4)
        assert 0 < r["mixed_host_ms_p50"] <= r["mixed_ms_p50"]


def test_e2e_driver_sweeps_the_gateway_in_front_of_a_random_engine(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_driver(
        ROOT / "benchmarks/gpu/e2e.py",
        f"--tiny --out {out} --model-dir {tmp_path / 'model'} --lora-dtype fp8 "
        f"--engine-port {free_port()} --gateway-port {free_port()} -- "
        "--num-adapters base,4 --adapter-template 'bench/a{i}' --rate inf --num-requests 8 "
        "--max-concurrency 4 --input-len uniform:8:32 --output-len uniform:4:12",
    )
    results = json.loads((out / "sweep.json").read_text())
    assert results["complete"]
    assert results["prompts"]["fit"] == "exact"
    assert [p["num_adapters"] for p in results["points"]] == [0, 4]
    for point in results["points"]:
        summary = point["summary"]
        assert summary["requests"]["completed"] == 8
        assert summary["errors"] == {}
        assert summary["tokens"]["output_len_mismatch"] == 0
    assert (out / "gateway.log").exists()
    # 64 ids over 2 directories, all preloaded: two reads from disk, the rest share them.
    engine_log = (out / "engine.log").read_text()
    assert "(2 read so far)" in engine_log
    assert "(3 read so far)" not in engine_log


def test_e2e_phases_are_valid_lorax_bench_sweeps() -> None:
    """The GPU phases are only run on the H200: a bad argument must fail here."""
    spec = importlib.util.spec_from_file_location("e2e", ROOT / "benchmarks/gpu/e2e.py")
    assert spec is not None
    assert spec.loader is not None
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    counts = {}
    for phase, sweep in e2e.PHASES.items():
        configs = configs_from_args(parser().parse_args([*sweep, "--url", "http://x"]))
        counts[phase] = configs.sweep.adapter_counts
        rates = [r.label for r in configs.sweep.rates]
        assert rates == (["inf"] if phase == "saturation" else ["inf", "0.5x", "0.8x"])
    assert counts == {"saturation": (0, 1, 8, 64, 512, 2000), "latency": (64, 2000)}
