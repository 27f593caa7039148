"""``lorax-engine serve`` on a random-weight Llama-3-8B shape made on the GPU, with many adapter ids.

    PYTHONPATH=packages/lorax-kernels/src:packages/lorax-engine/src \
        python3 packages/lorax-engine/benchmarks/serve_random.py --port 8081 [--tiny]

The engine's server as it ships (``AsyncEngine`` + ``serve.run_server``, the wire protocol of
docs/internals.md), built with ``factory.build_engine`` around a model whose weights are made on
the device instead of loaded: no download and no 16 GB checkpoint on disk. What a model dir must
still hold is written to ``--dir``: the synthetic 128,256-token byte-level BPE tokenizer (so
``/tokenize`` returns real spans) and ``--distinct`` PEFT adapters (rank ``--rank`` on all 7
projections, nonzero B). ``--ids`` adapter ids ``bench/a{i}`` are symlinks to them, so
``local`` adapters load like any other and each id is its own cache entry (every GPU miss is a
real copy), while the CPU tier keeps one packed copy per distinct file. ``--preload`` loads every
id at start-up. ``--lora-dtype fp8`` keeps the slot tables in float8 e4m3. ``--tiny`` serves a small
model on the CPU (script check).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
from bench_common import (
    EOS_ID,
    device_and_dtype,
    emit,
    model_shape,
    random_lora,
    write_tokenizer_dir,
)
from safetensors.torch import save_file

from lorax_engine.adapters.weights import LoraWeights
from lorax_engine.async_engine import AsyncEngine
from lorax_engine.config import LORA_DTYPES, EngineConfig
from lorax_engine.core.factory import build_engine
from lorax_engine.models.loader import build_model, init_random_
from lorax_engine.params import Limits
from lorax_engine.serve import run_server
from lorax_engine.tokenizer import TokenizerInfo

# PEFT module path of each target name inside a Llama decoder layer.
PEFT_MODULES = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


def write_peft_adapter(out: Path, weights: LoraWeights) -> None:
    """``weights`` as a PEFT LoRA directory (``adapter_config.json`` + safetensors)."""
    tensors: dict[str, torch.Tensor] = {}
    for (layer, target), (a, b) in weights.modules.items():
        base = f"base_model.model.model.layers.{layer}.{PEFT_MODULES[target]}"
        tensors[f"{base}.lora_A.weight"] = a.cpu().contiguous()
        tensors[f"{base}.lora_B.weight"] = b.cpu().contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "random-llama",
        "r": weights.rank,
        "lora_alpha": weights.scale * weights.rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "target_modules": sorted({t for _, t in weights.modules}),
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/lorax-random-model"))
    ap.add_argument("--distinct", type=int, default=16, help="distinct adapter weight sets")
    ap.add_argument("--ids", type=int, default=2000, help="adapter ids bench/a0 .. a{ids-1}")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument(
        "--lora-dtype",
        choices=LORA_DTYPES,
        default="auto",
        help="slot tables in the model's dtype, or fp8: half the adapter bytes per decode step",
    )
    # More GPU slots than the benchmark keeps requests in flight (lorax-bench --max-concurrency
    # 128), so distinct adapters never queue for a slot. With 64, the H200 run of 2026-12-01
    # (session 3) held N >= 512 near 64 running requests: TTFT p50 4.4-4.8 s, waiting for slots.
    # 160 rank-16 slots take ~12.5 GiB, within --adapter-memory-fraction 0.1 of an H200.
    ap.add_argument("--max-active-adapters", type=int, default=160)
    ap.add_argument("--max-batch-size", type=int, default=256)
    ap.add_argument("--max-batch-prefill-tokens", type=int, default=8192)
    ap.add_argument("--max-input-length", type=int, default=1024)
    ap.add_argument("--max-total-tokens", type=int, default=2048)
    ap.add_argument("--max-concurrent-requests", type=int, default=1024)
    ap.add_argument(
        "--preload",
        action="store_true",
        help="load every id into the CPU tier at start-up (--preloaded-adapter-ids): a "
        "benchmark's timed window then starts in steady state",
    )
    ap.add_argument("--tiny", action="store_true", help="small model on the CPU (script check)")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = model_shape(args.tiny)
    dev, dtype = device_and_dtype(args.tiny)
    t = time.perf_counter()
    model_dir = write_tokenizer_dir(args.dir / "model", cfg.vocab_size)
    emit(event="tokenizer", dir=str(model_dir), s=round(time.perf_counter() - t, 1))

    t = time.perf_counter()
    model = build_model(cfg, dtype, dev, max_positions=args.max_total_tokens)
    init_random_(model, seed=0)
    emit(event="model", device=str(dev), s=round(time.perf_counter() - t, 1))

    t = time.perf_counter()
    root = args.dir / "adapters"
    weights_dir = root / "bench"
    spec = model.lora_spec()
    for j in range(args.distinct):
        target = weights_dir / f"w{j}"
        if not (target / "adapter_config.json").exists():
            write_peft_adapter(
                target, random_lora(spec, args.rank, seed=j, dtype=dtype, device=dev)
            )
    for i in range(args.ids):
        link = weights_dir / f"a{i}"
        if not link.is_symlink():
            os.symlink(f"w{i % args.distinct}", link)  # relative: stays inside the root
    emit(
        event="adapters", distinct=args.distinct, ids=args.ids, s=round(time.perf_counter() - t, 1)
    )

    config = EngineConfig(
        model_id=str(model_dir),
        device=str(dev),
        dtype="float32" if args.tiny else "bfloat16",
        limits=Limits(
            max_input_length=args.max_input_length,
            max_total_tokens=args.max_total_tokens,
            max_concurrent_requests=args.max_concurrent_requests,
        ),
        max_batch_size=args.max_batch_size,
        max_batch_prefill_tokens=args.max_batch_prefill_tokens,
        lora_slots=args.max_active_adapters,
        lora_max_rank=args.rank,
        lora_dtype=args.lora_dtype,
        adapter_source="local",
        local_adapter_roots=(root,),
        # Ids linked to one directory share its host copy, so this reads --distinct files.
        preloaded_adapter_ids=[f"bench/a{i}" for i in range(args.ids)] if args.preload else (),
    )
    t = time.perf_counter()
    loaded = build_engine(config, model, TokenizerInfo(model_dir, (EOS_ID,)), model_dir)
    emit(event="engine", s=round(time.perf_counter() - t, 1))
    run_server(AsyncEngine(config, loaded), args.host, args.port)


if __name__ == "__main__":
    main()
