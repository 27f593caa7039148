"""Where a decode step's time goes, on the random-weight Llama-3-8B shape (bf16, one GPU).

    PYTHONPATH=packages/lorax-kernels/src:packages/lorax-engine/src \
        python3 packages/lorax-engine/benchmarks/profile_step.py [--batches 1,64,256] \
        [--method gptq]

``--method``: the base matmuls quantized as ``bench_quant.py`` does (fp8, gptq, awq, gptq-act).

Per batch size it prints one JSON line with the median wall time of each phase of
``EngineCore.step`` (host only, except ``complete_prior_step`` and ``process_sync_step``, which
wait for the GPU), the GPU time of the decode graph alone, the top kernels of one eager
decode forward by GPU time, and the top kernels of ``--trace-steps`` real engine steps (graph
replays included) per step: where a step's GPU time goes when it is more than its graph's.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from bench_common import QUANT_METHODS
from bench_engine import LLAMA3_8B, NullTokenizer, add_no_pdl, apply_no_pdl, replay_ms
from bench_quant import projections, quantize_
from torch.profiler import ProfilerActivity, profile

from lorax_engine.core.block_manager import BlockManager
from lorax_engine.core.engine_core import EngineCore
from lorax_engine.core.kv_cache import allocate_kv_cache
from lorax_engine.core.model_runner import ModelRunner
from lorax_engine.core.request import Request
from lorax_engine.core.scheduler import Scheduler, SchedulerConfig
from lorax_engine.models.forward_batch import ForwardBatch
from lorax_engine.models.loader import build_model, init_random_
from lorax_engine.params import SamplingParams

PHASES: dict[str, list[float]] = defaultdict(list)
# CUDA events around each ``runner.execute``: (when the GPU reached the step, when it finished it).
GPU_MARKS: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` so each call's wall time lands in ``PHASES[name]``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            PHASES[name].append(time.perf_counter() - t)

    return wrapper


def gpu_marked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Record a CUDA event before and after ``fn``'s GPU work, to find idle gaps between steps."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(*args, **kwargs)
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        GPU_MARKS.append((start, end))
        return out

    return wrapper


def gpu_timeline() -> dict[str, float]:
    """Median GPU time per step and median GPU idle time between consecutive steps, in ms."""
    torch.cuda.synchronize()
    busy = [s.elapsed_time(e) for s, e in GPU_MARKS]
    gaps = [a[1].elapsed_time(b[0]) for a, b in itertools.pairwise(GPU_MARKS)]
    return {
        "gpu_step_ms_p50": round(statistics.median(busy), 3),
        "gpu_gap_ms_p50": round(statistics.median(gaps), 3) if gaps else 0.0,
    }


def instrument(core: EngineCore) -> None:
    runner = core.runner
    core.scheduler.schedule = timed("schedule", core.scheduler.schedule)  # type: ignore[method-assign]
    runner.build_host_batch = timed("build_host_batch", runner.build_host_batch)  # type: ignore[method-assign]
    runner._lora_meta_for = timed("lora_meta", runner._lora_meta_for)  # type: ignore[method-assign]
    if runner.graphs is not None:
        runner.graphs.run = timed("graph_upload_and_launch", runner.graphs.run)  # type: ignore[method-assign]
    runner.execute = timed("execute", gpu_marked(runner.execute))  # type: ignore[method-assign]
    core._launch = timed("launch_sampling", core._launch)  # type: ignore[method-assign]
    core._complete = timed("complete_prior_step", core._complete)  # type: ignore[method-assign]
    core._process = timed("process_sync_step", core._process)  # type: ignore[method-assign]
    core.step = timed("step", core.step)  # type: ignore[method-assign]


def kernel_rows(prof: Any, per: int, top: int) -> list[dict[str, Any]]:
    """The profile's kernels by GPU time (µs divided by ``per``), total first."""
    rows = []
    for e in prof.key_averages():
        gpu_us = getattr(e, "device_time_total", 0.0)
        if gpu_us > 0:
            rows.append({"kernel": e.key[:90], "calls": e.count / per, "gpu_us": gpu_us / per})
    rows.sort(key=lambda r: -r["gpu_us"])
    total = sum(r["gpu_us"] for r in rows)
    rows = [{**r, "gpu_us": round(r["gpu_us"], 1)} for r in rows[:top]]
    return [{"total_gpu_us": round(total, 1)}, *rows]


def step_top_kernels(core: EngineCore, steps: int, top: int) -> list[dict[str, Any]]:
    """Kernels of ``steps`` real engine steps (graph replay, uploads, sampling), per step."""
    core.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            core.step()
        core.complete_inflight()
        torch.cuda.synchronize()
    return kernel_rows(prof, steps, top)


def eager_top_kernels(runner: ModelRunner, core: EngineCore, top: int) -> list[dict[str, Any]]:
    """Kernels of one eager decode forward of the running batch, by total GPU time."""
    core.complete_inflight()
    chunks = core.scheduler.schedule().chunks
    host = runner.build_host_batch(chunks)
    dev = runner.device
    batch = ForwardBatch(
        input_ids=torch.from_numpy(host.input_ids).to(dev),
        positions=torch.from_numpy(host.positions).to(dev),
        slot_mapping=torch.full_like(torch.from_numpy(host.slot_mapping), -1).to(dev),
        block_tables=torch.from_numpy(host.block_tables).to(dev),
        seq_lens=torch.from_numpy(host.seq_lens).to(dev),
        query_start_loc=torch.from_numpy(host.query_start_loc).to(dev),
        is_decode=True,
    )
    with torch.inference_mode():
        for _ in range(2):
            runner.model.compute_logits(runner.model(batch, runner.kv_caches))
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            runner.model.compute_logits(runner.model(batch, runner.kv_caches))
            torch.cuda.synchronize()
    return kernel_rows(prof, 1, top)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--input", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--trace-steps", type=int, default=3)
    ap.add_argument("--method", choices=[m for m in QUANT_METHODS if "bitsandbytes" not in m])
    add_no_pdl(ap)
    args = ap.parse_args()
    apply_no_pdl(args)
    batches = [int(b) for b in args.batches.split(",")]
    dev = torch.device("cuda")
    max_b = max(batches)
    # Room for the decodes that run while the last prompts of a batch still prefill (a batch of
    # 256 x 512 tokens takes 16 steps at 8192 tokens per step), so no request finishes while the
    # steps are timed and the batch stays whole.
    extra = args.steps + 64 + max_b * args.input // 8192
    total = args.input + extra + 8
    model = build_model(LLAMA3_8B, torch.bfloat16, dev, max_positions=total)
    init_random_(model, seed=0)
    if args.method:
        originals = {n: m.weight.data for n, m in projections(model) if m.weight is not None}
        assert model.lm_head is not None  # Llama-3-8B's head is untied
        originals["lm_head"] = model.lm_head.data
        quantize_(model, originals, args.method, torch.bfloat16, group=128)
        del originals
        torch.cuda.empty_cache()
    bs = 16
    blocks = max_b * (-(-total // bs)) + 16
    kv = allocate_kv_cache(LLAMA3_8B, blocks, bs, torch.bfloat16, dev)
    runner = ModelRunner(model, kv, bs, max_b, 8192, -(-total // bs), use_cuda_graphs=True)
    sched = Scheduler(SchedulerConfig(8192, max_b), BlockManager(blocks, bs))
    core = EngineCore(sched, runner, NullTokenizer(), frozenset())
    instrument(core)
    for b in batches:
        for i in range(b):
            req = Request(
                f"p{b}-{i}",
                torch.randint(0, LLAMA3_8B.vocab_size, (args.input,)).tolist(),
                SamplingParams(max_new_tokens=extra, ignore_eos=True),
                time.monotonic(),
            )
            core.submit(req, lambda ev: None)
        while core.stats.num_tokens != b or core.stats.batch_size != b:
            core.step()
        for _ in range(3):
            core.step()
        PHASES.clear()
        GPU_MARKS.clear()
        for _ in range(args.steps):
            core.step()
        phases = {k: round(statistics.median(v) * 1000, 3) for k, v in PHASES.items()}
        timeline = gpu_timeline()
        step_kernels = step_top_kernels(core, args.trace_steps, args.top)
        kernels = eager_top_kernels(runner, core, args.top)
        print(
            json.dumps(
                {
                    "batch": b,
                    "method": args.method or "bf16",
                    "phase_ms_p50": phases,
                    **timeline,
                    "graph_gpu_ms": replay_ms(core, b),
                }
            ),
            flush=True,
        )
        for row in kernels:
            print(json.dumps({"batch": b, **row}), flush=True)
        for row in step_kernels:
            print(json.dumps({"batch": b, "in": "engine step", **row}), flush=True)
        for req in list(core.scheduler.running) + list(core.scheduler.waiting):
            core.scheduler.finish(req)
        core._outputs.clear()


if __name__ == "__main__":
    main()
