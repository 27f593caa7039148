"""How long one cold adapter load takes, alone and while the engine's core thread is busy.

    python3 packages/lorax-engine/benchmarks/bench_adapter_load.py [--loads 20] [--rank 16]

Writes one rank-16 PEFT adapter of the Llama-3-8B shape (all 7 projections, 32 layers, bf16:
80 MiB) into a temp dir, then loads it ``--loads`` times through the engine's ``AdapterLoader``
(local source, a fresh CPU tier each time, so every load reads, validates and packs), first on
an idle process, then while another thread runs pure Python without pause. That thread stands in
for the engine's core loop: every GIL-releasing operation of the loader has to win the GIL back
from it, which takes up to ``sys.getswitchinterval()`` (5 ms) each. Prints one JSON line per
phase: ms per load p50/p90, and the spinner's loop count (its share of the GIL). CPU only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from bench_engine import LLAMA3_8B
from safetensors.torch import save_file

from lorax_engine.adapters.host_cache import HostAdapterCache
from lorax_engine.adapters.loader import AdapterLoader
from lorax_engine.adapters.peft_loader import LoadLimits
from lorax_engine.adapters.ref import AdapterRef
from lorax_engine.adapters.sources.base import SourceRegistry
from lorax_engine.adapters.sources.local import LocalSource
from lorax_engine.lora.spec import ModelLoraSpec


def llama3_8b_spec() -> ModelLoraSpec:
    """Every LoRA target of a Llama-3-8B layer: (in_features, out_features)."""
    cfg = LLAMA3_8B
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    return ModelLoraSpec(
        architecture=cfg.architecture,
        num_layers=cfg.num_layers,
        targets={
            "q_proj": (hidden, cfg.q_size),
            "k_proj": (hidden, cfg.kv_size),
            "v_proj": (hidden, cfg.kv_size),
            "o_proj": (cfg.q_size, hidden),
            "gate_proj": (hidden, inter),
            "up_proj": (hidden, inter),
            "down_proj": (inter, hidden),
        },
    )


def write_adapter(out: Path, spec: ModelLoraSpec, rank: int, dtype: torch.dtype) -> None:
    """A PEFT LoRA directory: rank ``rank`` on every target of every layer, nonzero A and B."""
    gen = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(spec.num_layers):
        for target, (fin, fout) in spec.targets.items():
            block = "self_attn" if target in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            base = f"base_model.model.model.layers.{layer}.{block}.{target}"
            tensors[f"{base}.lora_A.weight"] = torch.randn(rank, fin, generator=gen).to(dtype)
            tensors[f"{base}.lora_B.weight"] = torch.randn(fout, rank, generator=gen).to(dtype)
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none"}
    (out / "adapter_config.json").write_text(json.dumps(config))


class Spinner:
    """A thread that holds the GIL as a busy Python loop would (the engine's step loop)."""

    def __init__(self) -> None:
        self.loops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        stop = self._stop
        while not stop.is_set():
            for _ in range(1000):
                n += 1
        self.loops = n

    def __enter__(self) -> Spinner:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def time_loads(root: Path, loads: int, dtype: torch.dtype) -> list[float]:
    """Milliseconds per cold load of ``root/adapter``."""
    spec = llama3_8b_spec()
    sources = SourceRegistry({"local": LocalSource([root])})
    ref = AdapterRef(adapter_id="adapter", source="local")
    times = []
    for _ in range(loads):
        cache = HostAdapterCache(4 << 30, pin=torch.cuda.is_available())
        loader = AdapterLoader(sources, spec, LoadLimits(max_rank=64), cache, dtype=dtype)
        started = time.perf_counter()
        weights = loader.load(ref)
        times.append((time.perf_counter() - started) * 1e3)
        del weights, loader, cache
    return times


def summary(phase: str, times: list[float], **extra: object) -> dict[str, object]:
    ordered = sorted(times)
    return {
        "phase": phase,
        "loads": len(times),
        "p50_ms": round(ordered[len(ordered) // 2], 1),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 1),
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=20)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    dtype = torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_adapter(root / "adapter", llama3_8b_spec(), args.rank, dtype)
        size = (root / "adapter/adapter_model.safetensors").stat().st_size
        time_loads(root, 2, dtype)  # first-touch costs (page cache, allocator) out of the way
        results = [summary("idle", time_loads(root, args.loads, dtype), mib=size >> 20)]
        with Spinner() as spinner:
            busy = time_loads(root, args.loads, dtype)
        results.append(summary("busy_thread", busy, spinner_loops=spinner.loops))
    for r in results:
        print(
            json.dumps({"bench": "adapter_load", "switch_ms": sys.getswitchinterval() * 1e3, **r})
        )


if __name__ == "__main__":
    main()
