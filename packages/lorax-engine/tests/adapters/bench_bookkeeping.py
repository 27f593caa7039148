"""Host time of the per-step adapter bookkeeping at many adapters, on the CPU (not a pytest file).

    uv run python packages/lorax-engine/tests/adapters/bench_bookkeeping.py [--ns 64,1024,4096]

Simulates the engine's use of ``AdapterQueues`` and ``AdapterManager`` without a model: every
adapter has queued requests, ``--slots`` GPU slots (a no-op slot writer), at most
``--max-running`` requests run, each for ``--steps-per-request`` steps. Per step it times
``manager.step(queues.active_keys())``, the admission pops (``queues.pop`` + ``acquire``) and the
releases, and prints one JSON line per N: if the bookkeeping is O(changed), the per-step time
stays flat as N grows.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque

import torch

from lorax_engine.adapters import (
    AdapterHandle,
    AdapterLoader,
    AdapterManager,
    AdapterQueues,
    AdapterRef,
    HostAdapterCache,
    LoadLimits,
    LoraWeights,
    ManagerConfig,
    SourceRegistry,
)
from lorax_engine.lora import LoraWeightsLike, PackedLora


class NullSlots:
    """Accepts every write: only the manager's own bookkeeping is timed."""

    def write_(self, slot: int, weights: LoraWeightsLike | PackedLora) -> None:
        pass


class Spec:
    architecture = "llama"
    num_layers = 1
    targets = {"q_proj": (8, 8)}  # noqa: RUF012


def measure(
    n: int, slots: int, max_running: int, per_adapter: int, steps_per_request: int, steps: int
) -> dict[str, float]:
    cache = HostAdapterCache(1 << 40, pin=False)
    w = LoraWeights("w", 2, 1.0, {(0, "q_proj"): (torch.zeros(2, 8), torch.zeros(8, 2))})
    refs = [AdapterRef(f"a{i}", source="local") for i in range(n)]
    for ref in refs:
        cache.put(w.renamed(ref.cache_key()))
    loader = AdapterLoader(SourceRegistry({}), Spec(), LoadLimits(max_rank=2), cache)
    manager = AdapterManager(loader, NullSlots(), ManagerConfig(num_slots=slots, cycle_time_s=0.05))
    queues: AdapterQueues[AdapterHandle] = AdapterQueues(slots, 0.05)
    for _ in range(per_adapter):
        for ref in refs:
            h = manager.request(ref)
            queues.push(h.key, h)
    # Let every load finish so the timed steps see a steady state.
    deadline = time.monotonic() + 60
    while manager.usage().loading:
        manager.step(queues.active_keys())
        assert time.monotonic() < deadline
        time.sleep(0.001)
    running: deque[tuple[int, AdapterHandle]] = deque()
    totals = {"manager_step": 0.0, "admit": 0.0, "release": 0.0}
    admitted = 0
    for step in range(steps):
        t0 = time.perf_counter()
        manager.step(queues.active_keys())
        t1 = time.perf_counter()
        while len(running) < max_running:
            item = queues.pop(manager.ready)
            if item is None:
                break
            manager.acquire(item[1])
            running.append((step + steps_per_request, item[1]))
            admitted += 1
        t2 = time.perf_counter()
        while running and running[0][0] <= step:
            manager.release(running.popleft()[1])
        t3 = time.perf_counter()
        totals["manager_step"] += t1 - t0
        totals["admit"] += t2 - t1
        totals["release"] += t3 - t2
    manager.shutdown()
    out = {k: round(v / steps * 1e6, 1) for k, v in totals.items()}
    return {
        "n": n,
        "us_per_step_total": round(sum(out.values()), 1),
        **{f"us_per_step_{k}": v for k, v in out.items()},
        "admitted": admitted,
        "promotions": manager.stats["promotions"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default="64,1024,4096")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--max-running", type=int, default=64)
    ap.add_argument("--per-adapter", type=int, default=4, help="queued requests per adapter")
    ap.add_argument("--steps-per-request", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    for n in (int(x) for x in args.ns.split(",")):
        stats = measure(
            n, args.slots, args.max_running, args.per_adapter, args.steps_per_request, args.steps
        )
        print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
