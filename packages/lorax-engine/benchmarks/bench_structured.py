"""Structured output throughput (issue #7): a decode batch with JSON-schema-constrained rows against
the same batch unconstrained, on the engine core (no HTTP). Prints JSON lines.

    PYTHONPATH=packages/lorax-kernels/src:packages/lorax-engine/src \
        python3 packages/lorax-engine/benchmarks/bench_structured.py [--batch 64] [--tiny]

Random-weight Llama-3-8B shape in bf16 made on the GPU; the tokenizer is the synthetic 128,256-token
byte-level BPE of ``lorax_engine.structured.bench`` (no download), which llguidance reads like a
real one. Each configuration runs ``--batch`` requests of ``--input`` random prompt tokens and
``--output`` new tokens (greedy, ``ignore_eos``): none, half (every other row) and all rows
constrained. The schema asks for an array of at least ``--min-items`` nested records (uuid,
bounded strings, ranges, enum, pattern, anyOf with null), so no document can finish before
``--output`` tokens and every row decodes to the end. Goal: half constrained >= 90% of the free
batch's output tokens/s. ``mask_wait_ms``: how long each step blocked on its masks after the
forward pass (the part of the CPU fill the forward did not hide). ``--tiny`` runs a small model and a 1,024-token tokenizer on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from bench_common import (
    EOS_ID,
    BatchResult,
    device_and_dtype,
    emit,
    hf_tokenizer,
    model_shape,
    random_prompts,
    run_batch,
)

from lorax_engine.core.block_manager import BlockManager
from lorax_engine.core.engine_core import EngineCore
from lorax_engine.core.kv_cache import allocate_kv_cache
from lorax_engine.core.model_runner import ModelRunner
from lorax_engine.core.scheduler import Scheduler, SchedulerConfig
from lorax_engine.models.loader import build_model, init_random_
from lorax_engine.structured import ConstraintFactory
from lorax_engine.structured.bench import SCHEMA
from lorax_engine.structured.config import StructuredOutputConfig

MODES = {"free": 0.0, "half": 0.5, "all": 1.0}


def response_format(min_items: int) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "schema": {"type": "array", "minItems": min_items, "items": SCHEMA},
    }


def constrained_rows(batch: int, share: float) -> set[int]:
    """Rows under the schema, spread evenly over the batch (half: every other row)."""
    count = round(batch * share)
    return {int(i * batch / count) for i in range(count)} if count else set()


class MaskWaitProbe:
    """Times every step's wait for its masks (``PendingMasks.wait``, called when they are applied
    after the forward pass)."""

    def __init__(self, core: EngineCore) -> None:
        filler = core.mask_filler
        assert filler is not None
        self.start = filler.start
        self.waits_ms: list[float] = []
        filler.start = self._start  # type: ignore[method-assign]

    def _start(self, *args: Any, **kwargs: Any) -> Any:
        pending = self.start(*args, **kwargs)
        wait = pending.wait

        def timed() -> Any:
            t = time.perf_counter()
            masks = wait()
            self.waits_ms.append((time.perf_counter() - t) * 1000)
            return masks

        pending.wait = timed
        return pending

    def take(self) -> dict[str, float | None]:
        """p50 / p99 of the waits since the last ``take``."""
        xs, self.waits_ms = sorted(self.waits_ms), []
        if not xs:
            return {"mask_wait_ms_p50": None, "mask_wait_ms_p99": None}
        return {
            "mask_wait_ms_p50": round(xs[len(xs) // 2], 3),
            "mask_wait_ms_p99": round(xs[int(0.99 * (len(xs) - 1))], 3),
        }


def run_mode(
    core: EngineCore,
    factory: ConstraintFactory,
    fmt: dict[str, Any],
    prompts: list[list[int]],
    new_tokens: int,
    share: float,
) -> BatchResult:
    rows = constrained_rows(len(prompts), share)
    return run_batch(
        core,
        prompts,
        new_tokens,
        constraint=lambda i: factory.make(fmt) if i in rows else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--input", type=int, default=256)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each mode (median reported)")
    ap.add_argument("--min-items", type=int, default=16, help="records the schema asks for")
    ap.add_argument("--fill-threads", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="small model on the CPU (script check)")
    args = ap.parse_args()
    cfg = model_shape(args.tiny)
    dev, dtype = device_and_dtype(args.tiny)
    torch.manual_seed(0)

    t = time.perf_counter()
    tokenizer = hf_tokenizer(cfg.vocab_size)
    tok_s = time.perf_counter() - t
    t = time.perf_counter()
    factory = ConstraintFactory(
        tokenizer,
        StructuredOutputConfig(num_fill_threads=args.fill_threads),
        stop_token_ids=[EOS_ID],
    )
    fmt = response_format(args.min_items)
    factory.make(fmt)  # compile once; requests then hit the cache, as in serving
    emit(
        event="setup",
        vocab=len(tokenizer),
        tokenizer_build_s=round(tok_s, 2),
        grammar_start_s=round(time.perf_counter() - t, 2),
    )

    t = time.perf_counter()
    total = args.input + args.output
    model = build_model(cfg, dtype, dev, max_positions=total + 64)
    init_random_(model, seed=0)
    bs = 16
    blocks = args.batch * (-(-total // bs)) + 16
    kv = allocate_kv_cache(cfg, blocks, bs, dtype, dev)
    runner = ModelRunner(
        model,
        kv,
        block_size=bs,
        max_num_seqs=args.batch,
        max_num_tokens=8192,
        max_blocks_per_seq=-(-total // bs),
        use_cuda_graphs=dev.type == "cuda",
    )
    runner.capture_graphs()
    sched = Scheduler(SchedulerConfig(8192, args.batch), BlockManager(blocks, bs))
    core = EngineCore(sched, runner, tokenizer, frozenset({EOS_ID}), constraints=factory)
    emit(event="engine", device=str(dev), s=round(time.perf_counter() - t, 1))

    # Warm-up: prefill shapes, the sampler's masked path and the fill threads.
    warm = random_prompts(args.batch, 16, cfg.vocab_size, seed=99)
    run_mode(core, factory, fmt, warm, 4, 0.5)
    probe = MaskWaitProbe(core)

    prompts = random_prompts(args.batch, args.input, cfg.vocab_size, seed=0)
    results: dict[str, list[BatchResult]] = {m: [] for m in MODES}
    for rep in range(args.repeats):
        for mode, share in MODES.items():
            r = run_mode(core, factory, fmt, prompts, args.output, share)
            results[mode].append(r)
            # Row 0 is constrained in "half" and "all": its text shows the mask at work.
            sample = tokenizer.decode(r.outputs[0])[:160]
            emit(event="run", mode=mode, repeat=rep, row0=sample, **r.summary(), **probe.take())
    core.stop()

    free_tok_s = statistics.median(r.output_tok_s for r in results["free"])
    free_ms = statistics.median(r.decode_ms_p50 for r in results["free"])
    for mode in MODES:
        tok_s = statistics.median(r.output_tok_s for r in results[mode])
        ms = statistics.median(r.decode_ms_p50 for r in results[mode])
        emit(
            event="structured",
            mode=mode,
            constrained_rows=len(constrained_rows(args.batch, MODES[mode])),
            batch=args.batch,
            input=args.input,
            output=args.output,
            output_tok_s=round(tok_s, 1),
            decode_ms_p50=round(ms, 3),
            pct_of_free_tok_s=round(100 * tok_s / free_tok_s, 1),
            pct_of_free_decode=round(100 * free_ms / ms, 1),
            goal_met=None if mode != "half" else tok_s >= 0.9 * free_tok_s,
        )


if __name__ == "__main__":
    main()
