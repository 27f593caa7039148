"""Tensor parallelism: decode tokens/s at batch 64 on a random-weight Llama-3-8B shape for 1 vs N
GPUs, and the greedy tokens of N GPUs against one GPU's. Prints JSON lines.

    PYTHONPATH=packages/lorax-kernels/src:packages/lorax-engine/src NCCL_NVLS_ENABLE=0 \
        python3 packages/lorax-engine/benchmarks/bench_tp.py [--shards 1,2] [--tiny]

The random weights are written once as a real checkpoint (``--ckpt-dir``, bf16 safetensors, a
synthetic tokenizer of the model's vocabulary), because each shard process loads its own slices
from it. Each configuration runs in its own process through ``load_engine`` with
``--num-shard N``: the engine's real path (worker spawn, per-step broadcast, NCCL collectives in
the decode graphs).

- speed: ``--batch`` random prompts of ``--input`` tokens, ``--output`` new tokens, greedy,
  ignore_eos, bf16; ``decode_tok_s`` is batch / median all-decode step time.
- equality: ``--check-prompts`` prompts in ``--check-dtype`` (float32 by default: random weights
  give logits whose top two are close enough that bf16 rounding differences between 1 and N shards
  can flip a greedy choice; float32's cannot), compared token by token with one GPU's. The bf16
  runs' agreement is reported too, as information.

``--tiny`` runs the same on the CPU (a tiny shape, float32, gloo; batch 8, 32-token prompts, 16
new tokens) to check the script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import TINY, emit, random_prompts, run_batch, write_tokenizer_dir
from bench_engine import LLAMA3_8B, NullTokenizer

from lorax_engine.config import EngineConfig
from lorax_engine.core.factory import load_engine
from lorax_engine.models.model_config import ModelConfig
from lorax_engine.params import Limits


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    rope = cfg.rope
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": rope.theta,
        "rope_scaling": {
            "rope_type": rope.rope_type,
            "factor": rope.factor,
            "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings,
        },
        "bos_token_id": 1,
        "eos_token_id": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def hf_shapes(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of an HF Llama checkpoint of this shape, in layer order."""
    h, i, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.q_size, cfg.kv_size
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (cfg.vocab_size, h))]
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}."
        shapes += [
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (cfg.vocab_size, h))]
    return shapes


def write_checkpoint(path: Path, cfg: ModelConfig, device: torch.device) -> None:
    """Random bf16 weights (std 0.02, norms 1) in safetensors shards of about 2 GB, made on
    ``device`` (fast) and written one shard at a time (bounded host memory)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    write_tokenizer_dir(path, cfg.vocab_size)
    (path / "config.json").write_text(json.dumps(hf_config(cfg)))
    gen = torch.Generator(device=device).manual_seed(0)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal shard, size
        name = f"model-{len(set(weight_map.values())):05d}.safetensors"
        save_file(shard, str(path / name))
        weight_map.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    for name, shape in hf_shapes(cfg):
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.empty(shape, device=device).normal_(0.0, 0.02, generator=gen)
            t = t.to(torch.bfloat16).cpu()
        shard[name] = t
        size += t.nbytes
        if size >= 2 << 30:
            flush()
    if shard:
        flush()
    index = {"metadata": {}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


def run_one(args: argparse.Namespace) -> None:
    """One configuration (this process is rank 0 of ``--num-shard``): speed or equality."""
    total = args.input + args.output
    config = EngineConfig(
        model_id=str(args.ckpt_dir),
        dtype=args.dtype,
        device="cpu" if args.tiny else "cuda",
        limits=Limits(max_input_length=args.input, max_total_tokens=total),
        max_batch_size=args.batch,
        max_batch_prefill_tokens=max(args.batch * args.input, 8192 if not args.tiny else 512),
        max_batch_total_tokens=args.batch * total + args.batch * 16,
        num_shard=args.one,
        structured_output=None,
    )
    t = time.perf_counter()
    loaded = load_engine(config)
    emit(event="loaded", shards=args.one, dtype=args.dtype, s=round(time.perf_counter() - t, 1))
    core = loaded.core
    core.tokenizer = NullTokenizer()  # random ids have no text: host text work is not counted
    vocab = core.runner.model.cfg.vocab_size
    prompts = random_prompts(args.batch, args.input, vocab, seed=1)
    if args.warmup:
        run_batch(core, prompts[:1], 4)  # prefill shapes and the sampler, outside the timing
    result = run_batch(core, prompts, args.output)
    emit(event="run", shards=args.one, dtype=args.dtype, **result.summary())
    emit(event="tokens", shards=args.one, dtype=args.dtype, outputs=result.outputs)
    if loaded.shards is not None:
        loaded.shards.stop()


def spawn(args: argparse.Namespace, shards: int, dtype: str, batch: int, output: int) -> list[Any]:
    """Run one configuration in its own process; returns its JSON lines (echoed as they come)."""
    cmd = [
        sys.executable,
        __file__,
        "--one",
        str(shards),
        "--dtype",
        dtype,
        "--batch",
        str(batch),
        "--input",
        str(args.input),
        "--output",
        str(output),
        "--ckpt-dir",
        str(args.ckpt_dir),
        "--timeout-s",
        str(args.timeout_s),
        *(["--tiny"] if args.tiny else []),
        *(["--warmup"] if dtype == args.speed_dtype else []),
    ]
    env = dict(os.environ, NCCL_NVLS_ENABLE="0")
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, check=False, timeout=args.timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else str(exc.stderr)
        emit(event="failed", shards=shards, dtype=dtype, timeout_s=args.timeout_s, stderr=stderr)
        return []
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    for line in lines:
        if line["event"] != "tokens":
            print(json.dumps(line), flush=True)
    if done.returncode != 0:
        emit(event="failed", shards=shards, dtype=dtype, stderr=done.stderr[-4000:])
        return []
    return lines


def compare(name: str, ref: list[list[int]], other: list[list[int]], shards: int) -> None:
    same = sum(a == b for r, o in zip(ref, other, strict=True) for a, b in zip(r, o, strict=True))
    total = sum(len(r) for r in ref)
    # The first differing position per request: after it the sequences diverge on their own.
    first = [
        next((j for j, (a, b) in enumerate(zip(r, o, strict=True)) if a != b), None)
        for r, o in zip(ref, other, strict=True)
    ]
    emit(
        event=f"{name}_equal",
        shards=shards,
        identical=ref == other,
        tokens_equal=same,
        tokens=total,
        first_difference=[f for f in first if f is not None][:8],
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", default="1,2", help="shard counts; the first is the reference")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--input", type=int, default=512)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--speed-dtype", default="bfloat16")
    ap.add_argument("--check-dtype", default="float32")
    ap.add_argument("--check-prompts", type=int, default=8)
    ap.add_argument("--check-output", type=int, default=32)
    ap.add_argument("--ckpt-dir", type=Path, default=Path("/tmp/lorax-bench-tp"))
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny shape: check the script")
    ap.add_argument("--timeout-s", type=float, default=300, help="per configuration")
    # Internal: run one configuration in this process.
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args)
        return
    if args.tiny:
        args.speed_dtype = args.check_dtype = "float32"
        args.batch, args.input, args.output = 8, 32, 16
    cfg = TINY if args.tiny else LLAMA3_8B
    if not (args.ckpt_dir / "model.safetensors.index.json").exists():
        t = time.perf_counter()
        write_checkpoint(args.ckpt_dir, cfg, torch.device("cpu" if args.tiny else "cuda"))
        emit(event="checkpoint", path=str(args.ckpt_dir), s=round(time.perf_counter() - t, 1))
    counts = [int(n) for n in args.shards.split(",")]
    speed: dict[int, float] = {}
    ref_speed: list[list[int]] | None = None
    for n in counts:
        lines = spawn(args, n, args.speed_dtype, args.batch, args.output)
        runs = [x for x in lines if x["event"] == "run"]
        if not runs:
            continue
        speed[n] = float(runs[0]["decode_tok_s"] or 0.0)
        outputs = next(x["outputs"] for x in lines if x["event"] == "tokens")
        if ref_speed is None:
            ref_speed = outputs
        else:
            compare(args.speed_dtype, ref_speed, outputs, n)
    if counts[0] in speed:
        for n in counts[1:]:
            if n in speed:
                emit(
                    event="speedup", shards=n, vs=counts[0], x=round(speed[n] / speed[counts[0]], 3)
                )
    # With one shard count there is nothing to compare; with the speed dtype the speed runs'
    # comparison is the check.
    if len(counts) > 1 and args.check_dtype != args.speed_dtype:
        ref: list[list[int]] | None = None
        for n in counts:
            lines = spawn(args, n, args.check_dtype, args.check_prompts, args.check_output)
            outputs = next((x["outputs"] for x in lines if x["event"] == "tokens"), None)
            if outputs is None:
                continue
            if ref is None:
                ref = outputs
            else:
                compare(args.check_dtype, ref, outputs, n)


if __name__ == "__main__":
    main()
