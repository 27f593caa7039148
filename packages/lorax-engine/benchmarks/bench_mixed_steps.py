"""Mixed steps (a batch of decodes plus a new prompt's prefill) against decode steps (replayed
CUDA graphs), on the base model and with one distinct LoRA adapter per request: each step's wall
time (synchronised) and the host time of its forward's launch (``ModelRunner.execute``), with
the mixed steps run eagerly and replayed as mixed-step graphs (``core.mixed_graphs``). Prints
JSON lines.

    PYTHONPATH=packages/lorax-kernels/src:packages/lorax-engine/src \
        python3 packages/lorax-engine/benchmarks/bench_mixed_steps.py [--tiny] [--profile]

What it answers: end to end, requests arrive all the time, so about one step in three carries a
prefill; whether those steps are bound by the GPU or by the host launching their kernels, and
how the adapters and the graphs change that. Each mode (base or adapters, eager or graphs) is
run twice in turn on one engine. ``--profile``: the first round also prints the GPU kernels of
one mixed step by GPU time (a graph replay's kernels included). ``--tiny``: a small model on the CPU (script check; no graphs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from bench_common import model_shape, random_lora, random_prompts
from bench_engine import NullTokenizer
from profile_step import kernel_rows
from torch.profiler import ProfilerActivity, profile

from lorax_engine.core.block_manager import BlockManager
from lorax_engine.core.engine_core import EngineCore
from lorax_engine.core.kv_cache import allocate_kv_cache
from lorax_engine.core.model_runner import ModelRunner
from lorax_engine.core.request import Request
from lorax_engine.core.scheduler import Scheduler, SchedulerConfig
from lorax_engine.lora import LoraSlots
from lorax_engine.models.loader import build_model, init_random_
from lorax_engine.params import SamplingParams

PROMPT, NEW_PROMPT, RANK = 512, 256, 16
# (with adapters, mixed steps replayed as graphs), each run twice in turn.
MODES = [(False, False), (False, True), (True, False), (True, True)]


class LaunchTimer:
    """Host seconds of each ``ModelRunner.execute`` call (the forward's launch) while installed."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.execute = runner.execute
        self.seconds: list[float] = []
        runner.execute = self  # type: ignore[method-assign]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self.execute(*args, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _measure(
    core: EngineCore,
    timer: LaunchTimer,
    vocab: int,
    batch: int,
    steps: int,
    adapters: int,
    seed: int,
    profile_mixed: bool,
) -> dict[str, Any]:
    """``batch`` requests decoding (adapter slot ``i % adapters`` when ``adapters``), one new
    prompt every third step; median wall and launch ms of the decode and the mixed steps, and
    with ``profile_mixed`` the kernels of one more mixed step."""
    device = timer.runner.device
    count = 0

    def submit(prompt_len: int, new_tokens: int) -> None:
        nonlocal count
        prompt = random_prompts(1, prompt_len, vocab, seed=seed * 100_000 + count)[0]
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        req = Request(f"s{seed}-{count}", prompt, params, time.monotonic())
        if adapters:
            req.adapter_slot = count % adapters
        core.submit(req, lambda event: None)
        count += 1

    for _ in range(batch):
        submit(PROMPT, steps + 64)
    while core.stats.batch_size < batch or core.stats.num_tokens != core.stats.batch_size:
        core.step()
    wall: dict[str, list[float]] = {"decode": [], "mixed": []}
    host: dict[str, list[float]] = {"decode": [], "mixed": []}
    for step in range(steps):
        if step % 3 == 0:
            submit(NEW_PROMPT, 8)
        timer.seconds.clear()
        _sync(device)
        start = time.perf_counter()
        core.step()
        _sync(device)
        kind = "decode" if core.stats.num_tokens == core.stats.batch_size else "mixed"
        wall[kind].append((time.perf_counter() - start) * 1000)
        host[kind].append(sum(timer.seconds) * 1000)
    out: dict[str, Any] = {}
    if profile_mixed:
        submit(NEW_PROMPT, 8)
        _sync(device)
        # On the CPU (--tiny) there are no kernels: only the profile's plumbing is checked.
        cuda = device.type == "cuda"
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            core.step()
            _sync(device)
        out["mixed_kernels"] = kernel_rows(prof, 1, 14)
    while core.scheduler.has_work:
        core.step()
    for kind in wall:
        if wall[kind]:
            out[f"{kind}_ms_p50"] = round(statistics.median(wall[kind]), 2)
            out[f"{kind}_host_ms_p50"] = round(statistics.median(host[kind]), 2)
            out[f"{kind}_steps"] = len(wall[kind])
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128, help="decoding requests (tiny: 8)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--tiny", action="store_true", help="small model on the CPU (script check)")
    ap.add_argument("--profile", action="store_true", help="kernels of a mixed step per mode")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    batch = min(args.batch, 8) if args.tiny else args.batch
    cfg = model_shape(args.tiny)
    total = PROMPT + args.steps + 64 + 8
    bs = 16
    model = build_model(cfg, dtype, device, max_positions=total + 64)
    init_random_(model, seed=0)
    spec = model.lora_spec()
    slots = LoraSlots.allocate(spec, batch, RANK, dtype, device)
    for s in range(batch):
        slots.write_(s, random_lora(spec, RANK, seed=s, dtype=dtype, device=device))
    # The batch plus the prompts added while it decodes, each at most ``total`` tokens.
    blocks = (batch + args.steps) * -(-total // bs) + 16
    kv = allocate_kv_cache(cfg, blocks, bs, dtype, device)
    runner = ModelRunner(
        model,
        kv,
        block_size=bs,
        max_num_seqs=2 * batch,
        max_num_tokens=8192,
        max_blocks_per_seq=-(-total // bs),
        lora_slots=slots,
        use_cuda_graphs=device.type == "cuda",
    )
    runner.capture_graphs()
    scheduler = Scheduler(SchedulerConfig(4096, 2 * batch), BlockManager(blocks, bs))
    core = EngineCore(scheduler, runner, NullTokenizer(), frozenset())
    timer = LaunchTimer(runner)
    mixed_graphs = runner.mixed_graphs
    for seed, (lora, graphs) in enumerate(MODES * 2):
        runner.mixed_graphs = mixed_graphs if graphs else None
        adapters = batch if lora else 0
        profile_mixed = args.profile and seed < len(MODES)
        result = _measure(
            core, timer, cfg.vocab_size, batch, args.steps, adapters, seed, profile_mixed
        )
        line = {"lora": lora, "mixed_graphs": graphs and mixed_graphs is not None, **result}
        print(json.dumps({"event": "mixed_steps", "batch": batch, **line}), flush=True)


if __name__ == "__main__":
    main()
