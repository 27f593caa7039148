"""Multi-adapter throughput through the engine core and the adapter manager (not a pytest file).

    PYTHONPATH=packages/lorax-kernels/src:packages/lorax-engine/src \
        python3 packages/lorax-engine/tests/adapters/bench_adapters.py [--tiny]

Needs torch, triton and numpy, plus what ``lorax_engine.core.engine_core`` imports (llguidance and
jsonschema, through ``lorax_engine.structured``: benchmarks/gpu/run.sh shows how to carry them).
With the defaults (256 requests of 256 + 128 tokens, N = 1, 8, 64, 512, 1024, both popularities)
the whole sweep takes about 3 minutes on an H200, set-up and CUDA-graph capture included.

A random-weight Llama-3-8B shape in bf16 on one GPU (``--tiny``: a small model on the CPU, to check
the script). Every configuration replays the same trace (random prompts, greedy, ``ignore_eos``)
in one process, so results are ratios: the base model alone, then N distinct rank-16 adapters on
all 7 projections with nonzero B, uniform and power-law popularity. Adapters reach GPU slots
through the real manager: CPU tier -> side-stream promotion -> LRU eviction. Host memory holds a
few distinct weight sets shared by many ids, but every GPU miss is a real copy. Prints JSON lines:
per configuration output tokens/s, TTFT/TPOT percentiles, promotions and evictions, promotions/s
and the time spent in promotions (host time launching the slot writes, and wall time until the
copies landed); then the latency of one promotion alone, and the goals of issue #5.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from lorax_engine.adapters import (
    AdapterHandle,
    AdapterLoader,
    AdapterManager,
    AdapterRef,
    AdapterState,
    HostAdapterCache,
    LoadLimits,
    LoraWeights,
    ManagerConfig,
    SourceRegistry,
)
from lorax_engine.core.block_manager import BlockManager
from lorax_engine.core.engine_core import EngineCore
from lorax_engine.core.kv_cache import allocate_kv_cache
from lorax_engine.core.model_runner import ModelRunner
from lorax_engine.core.request import Request
from lorax_engine.core.scheduler import Scheduler, SchedulerConfig
from lorax_engine.lora import LoraSlots
from lorax_engine.models.loader import build_model, init_random_
from lorax_engine.models.model_config import ModelConfig, RopeConfig
from lorax_engine.params import SamplingParams

LLAMA3_8B: dict[str, Any] = {
    "architecture": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_layers": 32,
    "num_heads": 32,
    "num_kv_heads": 8,
    "head_dim": 128,
}
TINY: dict[str, Any] = {
    "architecture": "llama",
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 16,
}


class NullTokenizer:
    all_special_ids: tuple[int, ...] = ()

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return ""


def emit(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def random_adapters(spec: Any, count: int, rank: int, dtype: torch.dtype) -> list[LoraWeights]:
    """``count`` distinct adapters on every target of every layer, pinned when CUDA is there."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(count):
        modules = {}
        for layer in range(spec.num_layers):
            for target, (fin, fout) in spec.targets.items():
                a = (torch.randn(rank, fin, generator=gen) / fin**0.5).to(dtype)
                b = (torch.randn(fout, rank, generator=gen) * 0.02).to(dtype)
                modules[(layer, target)] = (a, b)
        out.append(LoraWeights(f"w{i}", rank, 2.0, modules).pin_memory())
    return out


def popularity(n: int, dist: str, count: int, rng: random.Random) -> list[int]:
    if dist == "uniform":
        return [rng.randrange(n) for _ in range(count)]
    weights = [1.0 / (i + 1) for i in range(n)]  # Zipf, exponent 1
    return rng.choices(range(n), weights=weights, k=count)


def run(
    core: EngineCore,
    manager: AdapterManager | None,
    trace: list[list[int]],
    adapter_of: list[int | None],
    new_tokens: int,
    max_running: int,
) -> dict[str, Any]:
    """Admit requests whose adapter is READY (FIFO) up to ``max_running``; returns the stats."""
    t0 = time.perf_counter()
    pending: list[tuple[int, AdapterHandle | None]] = []
    for i, a in enumerate(adapter_of):
        handle = None
        if a is not None and manager is not None:
            handle = manager.request(AdapterRef(f"bench/a{a}", source="local"))
        pending.append((i, handle))
    first: dict[int, float] = {}
    done: dict[int, float] = {}
    tokens = [0]
    errors: list[str] = []
    running: dict[int, AdapterHandle | None] = {}

    def sink(i: int) -> Any:
        def on(ev: dict[str, Any]) -> None:
            if ev["type"] == "token":
                tokens[0] += 1
                if i not in first:
                    first[i] = time.perf_counter() - t0
            elif ev["type"] in ("end", "error"):
                done[i] = time.perf_counter() - t0
                if ev["type"] == "error":
                    errors.append(str(ev["error"])[:200])

        return on

    steps = 0
    while len(done) < len(trace):
        if manager is not None:
            failed = manager.step()
            assert not failed, f"adapters failed to load: {sorted(failed)[:4]}"
        keep = []
        for i, handle in pending:
            # Readiness is only asked while there is room: the driver's own per-step host time
            # stays O(admitted), as the engine's adapter queues are.
            room = len(running) < max_running
            ready = room and (
                handle is None or manager is None or manager.state(handle) is AdapterState.READY
            )
            if ready:
                req = Request(
                    f"r{i}",
                    trace[i],
                    SamplingParams(max_new_tokens=new_tokens, ignore_eos=True),
                    time.monotonic(),
                )
                if handle is not None and manager is not None:
                    req.adapter_slot = manager.acquire(handle)
                    req.adapter_key = handle.key
                core.submit(req, sink(i))
                running[i] = handle
            else:
                keep.append((i, handle))
        pending = keep
        if not running:
            # Nothing to run until a promotion lands: block briefly, as the engine loop does when
            # idle, instead of spinning (a spinning loop starves the promoter thread of the GIL).
            time.sleep(0.0005)
            continue
        core.step()
        steps += 1
        for i in [i for i in running if i in done]:
            handle = running.pop(i)
            if handle is not None and manager is not None:
                manager.release(handle)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    ttft = sorted(first.values())
    tpot = sorted((done[i] - first[i]) / max(1, new_tokens - 1) for i in done if i in first)

    def pct(xs: list[float], p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2)

    return {
        "requests": len(trace),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "output_tok_s": round(tokens[0] / wall, 1),
        "ttft_ms_p50": pct(ttft, 0.5),
        "ttft_ms_p99": pct(ttft, 0.99),
        "tpot_ms_p50": pct(tpot, 0.5),
        "tpot_ms_p99": pct(tpot, 0.99),
        "steps": steps,
    }


def plot(results: str, out: str) -> None:
    """Throughput vs N (log scale) from this script's JSON lines, base model as the ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = Path(results).read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    runs = [r for r in rows if r.get("event") == "throughput"]
    slots = next(r["slots"] for r in rows if r.get("event") == "setup")
    base = next(r["output_tok_s"] for r in runs if r["config"] == "base")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for dist, marker in (("uniform", "o"), ("powerlaw", "s")):
        pts = sorted((r["n"], r["output_tok_s"]) for r in runs if r.get("dist") == dist)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"{dist} popularity")
    ax.axhline(base, color="gray", linestyle="--", label=f"base model alone ({base:.0f} tok/s)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"distinct adapters N ({slots} GPU slots)")
    ax.set_ylabel("output tokens/s")
    ax.set_ylim(0, base * 1.1)
    ax.set_title("Llama-3-8B shape, bf16, H200: rank-16 adapters on all 7 projections")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plot", nargs=2, metavar=("RESULTS_JSONL", "OUT_PNG"), help="only plot")
    ap.add_argument("--tiny", action="store_true", help="small model on the CPU (script check)")
    ap.add_argument("--ns", default="1,8,64,512,1024")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-running", type=int, default=64)
    ap.add_argument("--input", type=int, default=256)
    ap.add_argument("--output", type=int, default=128)
    # More slots than running requests lets the manager promote the next requests' adapters
    # while the current ones run (prefetch); with as many, a promotion starts only when a request
    # finishes and its successor waits for the copy.
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--distinct", type=int, default=16, help="distinct weight sets in host memory")
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    if args.plot:
        plot(*args.plot)
        return

    dev = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    shape = TINY if args.tiny else LLAMA3_8B
    cfg = ModelConfig(
        **shape,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        rope=RopeConfig(theta=500000.0),
    )
    total = args.input + args.output
    model = build_model(cfg, dtype, dev, max_positions=total + 64)
    init_random_(model, seed=0)
    spec = model.lora_spec()
    bs = 16
    blocks = args.max_running * (-(-total // bs)) + 16
    kv = allocate_kv_cache(cfg, blocks, bs, dtype, dev)
    slots = LoraSlots.allocate(spec, args.slots, args.rank, dtype, dev)
    runner = ModelRunner(
        model,
        kv,
        block_size=bs,
        max_num_seqs=args.max_running,
        max_num_tokens=8192,
        max_blocks_per_seq=-(-total // bs),
        lora_slots=slots,
        use_cuda_graphs=dev.type == "cuda",
    )
    runner.capture_graphs()
    sched = Scheduler(SchedulerConfig(8192, args.max_running), BlockManager(blocks, bs))
    core = EngineCore(sched, runner, NullTokenizer(), frozenset())
    emit(
        event="setup", device=str(dev), slots=args.slots, slot_table_gb=round(slots.nbytes / 1e9, 2)
    )

    ns = [int(n) for n in args.ns.split(",")]
    weights = random_adapters(spec, min(args.distinct, max(ns)), args.rank, dtype)
    emit(event="adapter", mib=round(weights[0].nbytes / 2**20, 1), distinct=len(weights))

    rng = random.Random(0)
    trace = [
        [rng.randrange(cfg.vocab_size) for _ in range(args.input)] for _ in range(args.requests)
    ]

    def fresh_manager(n: int) -> AdapterManager:
        # Every id gets its own LoraWeights (shared tensors): each GPU miss is a real copy.
        cache = HostAdapterCache(1 << 50)
        for i in range(n):
            w = weights[i % len(weights)]
            key = AdapterRef(f"bench/a{i}", source="local").cache_key()
            cache.put(w.renamed(key))  # keeps the packed pinned buffer: no copy per id
        loader = AdapterLoader(SourceRegistry({}), spec, LoadLimits(max_rank=args.rank), cache)
        return AdapterManager(
            loader, slots, ManagerConfig(num_slots=args.slots, cycle_time_s=0.0), device=dev
        )

    # Warm-up: prefill shapes, the sampler, one promotion, and the LoRA variant of every decode
    # graph, captured at exactly its bucket size.
    warm = fresh_manager(1)
    buckets = runner.graphs.buckets if runner.graphs is not None else [4]
    for b in [b for b in buckets if b <= args.max_running]:
        short = [p[:16] for p in trace[:b]]
        run(core, warm, short, [0] * b, 3, args.max_running)
        run(core, None, short, [None] * b, 3, args.max_running)
    warm.shutdown()

    base = run(core, None, trace, [None] * len(trace), args.output, args.max_running)
    emit(event="throughput", config="base", n=0, dist="-", **base)
    pct: dict[tuple[int, str], float] = {}
    for n in ns:
        for dist in ("uniform", "powerlaw"):
            manager = fresh_manager(n)
            ids = popularity(n, dist, len(trace), random.Random(n))
            stats = run(core, manager, trace, list(ids), args.output, args.max_running)
            manager.shutdown()  # waits for the promoter: its timings are final
            promotions = manager.stats["promotions"]
            pct[(n, dist)] = round(100 * stats["output_tok_s"] / base["output_tok_s"], 1)
            emit(
                event="throughput",
                config="adapters",
                n=n,
                dist=dist,
                distinct_used=len(set(ids)),
                pct_of_base=pct[(n, dist)],
                promotions=promotions,
                evictions=manager.stats["evictions"],
                promotions_per_s=round(promotions / stats["wall_s"], 1),
                promotion_host_s=round(manager.promotion_host_s, 3),
                promotion_wall_s=round(manager.promotion_wall_s, 3),
                promotion_host_ms_mean=round(
                    1000 * manager.promotion_host_s / max(1, promotions), 3
                ),
                promotion_wall_ms_mean=round(
                    1000 * manager.promotion_wall_s / max(1, promotions), 3
                ),
                **stats,
            )

    # Promotion latency alone: request -> READY for an adapter already in the CPU tier.
    manager = fresh_manager(args.slots * 2)
    lat = []
    for i in range(args.slots * 2):
        h = manager.request(AdapterRef(f"bench/a{i}", source="local"))
        t = time.perf_counter()
        while manager.state(h) is not AdapterState.READY:
            manager.step()
            time.sleep(0.0001)  # a spinning loop would starve the promoter thread of the GIL
        lat.append(time.perf_counter() - t)
        manager.release(h)
    manager.shutdown()
    lat.sort()
    promotions = manager.stats["promotions"]
    emit(
        event="promotion",
        adapter_mib=round(weights[0].nbytes / 2**20, 1),
        ms_p50=round(lat[len(lat) // 2] * 1000, 3),
        ms_p99=round(lat[int(0.99 * (len(lat) - 1))] * 1000, 3),
        gb_s_p50=round(weights[0].nbytes / lat[len(lat) // 2] / 1e9, 1),
        host_ms_mean=round(1000 * manager.promotion_host_s / max(1, promotions), 3),
        evictions=manager.stats["evictions"],
    )
    emit(event="goals", **goals(pct))


def goals(pct: dict[tuple[int, str], float]) -> dict[str, Any]:
    """Issue #5's goals from the sweep's % of base (worst popularity); None where N was not run."""
    worst = {n: min(v for (m, _), v in pct.items() if m == n) for n, _ in pct}
    big = max((n for n in worst if n >= 1000), default=None)
    n8, n64 = worst.get(8), worst.get(64)
    return {
        "n8_pct_of_base": n8,
        "n8_met": None if n8 is None else n8 >= 95,
        "n64_pct_of_base": n64,
        "n64_met": None if n64 is None else n64 >= 80,
        "n_big": big,
        "n_big_pct_of_n64": None
        if big is None or n64 is None
        else round(100 * worst[big] / n64, 1),
        "n_big_met": None if big is None or n64 is None else worst[big] >= 0.9 * n64,
    }


if __name__ == "__main__":
    main()
