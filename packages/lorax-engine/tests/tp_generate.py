"""Run a batch of greedy requests (base model and mixed adapters) on the demo model and print
each request's token ids (and how many steps took in-flight inputs) as JSON: run by
test_tensor_parallel.py in a subprocess, once per shard count, so the process group and the shard
watchdog never touch the pytest process.

Usage: python tp_generate.py CACHE_DIR NUM_SHARD [--kill-worker] [--cuda]

``--cuda``: shards on GPUs 0..NUM_SHARD-1 (NCCL, CUDA graphs), still float32.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Any

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.config import EngineConfig
from lorax_engine.params import Limits

PROMPTS = ["Hello there, matey"] * 5 + ["To be or not"]
ADAPTERS = [None, "demo/pirate", "demo/shakespeare", "demo/pirate", None, "demo/shakespeare"]
NEW_TOKENS = 8


def config(cache_dir: Path, num_shard: int, device: str = "cpu") -> EngineConfig:
    return EngineConfig(
        model_id="demo",
        device=device,
        dtype="float32",
        cache_dir=cache_dir,
        limits=Limits(max_input_length=64, max_total_tokens=96),
        lora_slots=2,
        lora_max_rank=8,
        num_shard=num_shard,
    )


async def generate(engine: AsyncEngine) -> list[list[int]]:
    async def one(prompt: str, adapter: str | None) -> list[int]:
        params: dict[str, Any] = {"max_new_tokens": NEW_TOKENS, "ignore_eos_token": True}
        if adapter is not None:
            params["adapter_id"] = adapter
        events = [e async for e in engine.generate({"inputs": prompt, "parameters": params})]
        assert events[-1]["type"] == "end", events[-1]
        return [e["token"]["id"] for e in events if e["type"] == "token"]

    return list(await asyncio.gather(*(one(p, a) for p, a in zip(PROMPTS, ADAPTERS, strict=True))))


def count_pending_steps(engine: AsyncEngine) -> list[int]:
    """Count the steps whose decode inputs were still on the device (sent to the shards after
    the step message): the in-flight path must be among those tested."""
    counter = [0]
    publish = engine.core.runner.on_step
    assert publish is not None

    def counted(host: Any, rows: list[int], use_graph: bool, pending: Any) -> None:
        counter[0] += bool(len(host.pending_index))
        publish(host, rows, use_graph, pending)

    engine.core.runner.on_step = counted
    return counter


async def main(cache_dir: Path, num_shard: int, kill_worker: bool, device: str) -> None:
    engine = AsyncEngine.from_config(config(cache_dir, num_shard, device))
    pending_steps = count_pending_steps(engine) if num_shard > 1 else [0]
    if kill_worker:
        # The engine must end itself (not hang in its next collective) when a shard dies.
        for child in multiprocessing.active_children():
            os.kill(child.pid or 0, signal.SIGKILL)
        await asyncio.sleep(10)  # the shard watchdog ends the process well before this
        await generate(engine)
        raise SystemExit("the engine kept running without its shard")
    tokens = await generate(engine)
    await engine.shutdown()
    print(json.dumps({"tokens": tokens, "pending_steps": pending_steps[0]}))


if __name__ == "__main__":
    device = "cuda" if "--cuda" in sys.argv else "cpu"
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), "--kill-worker" in sys.argv, device))
