"""Shared pieces of the GPU benchmark drivers: model shapes, a real-size offline tokenizer, random
adapters and a step loop that times a batch of requests on an ``EngineCore``.

Imported by ``bench_structured.py``, ``bench_quant.py``, ``bench_quant_drift.py`` and
``serve_random.py`` (run as scripts from this folder, so it is importable as ``bench_common``). ``--tiny`` variants of every driver
use ``TINY`` on the CPU to check the code paths without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_engine import LLAMA3_8B

from lorax_engine.adapters.weights import LoraWeights
from lorax_engine.core.engine_core import EngineCore
from lorax_engine.core.request import Request
from lorax_engine.lora.spec import ModelLoraSpec
from lorax_engine.models.model_config import ModelConfig, RopeConfig
from lorax_engine.params import SamplingParams
from lorax_engine.quant.spec import QUANTIZE_METHODS
from lorax_engine.structured.bench import synthetic_tokenizer

TINY = ModelConfig(
    architecture="llama",
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    max_position_embeddings=4096,
    rope=RopeConfig(theta=500000.0),
)

EOS_ID = 0  # the synthetic tokenizer's <|eos|>
# What the quantization benchmarks compare: bf16, every --quantize method, GPTQ with act-order.
QUANT_METHODS = ("bf16", *QUANTIZE_METHODS, "gptq-act")


def model_shape(tiny: bool) -> ModelConfig:
    """TINY on the CPU for script checks, else the Llama-3-8B shape (vocabulary 128,256)."""
    return TINY if tiny else LLAMA3_8B


def device_and_dtype(tiny: bool) -> tuple[torch.device, torch.dtype]:
    if tiny:
        return torch.device("cpu"), torch.float32
    return torch.device("cuda"), torch.bfloat16


def emit(**kw: object) -> None:
    """One JSON line on stdout (the drivers' only output format)."""
    print(json.dumps(kw), flush=True)


def quant_methods(ap: argparse.ArgumentParser, requested: str) -> list[str]:
    """The comma-separated ``--methods`` as a list: unknown names are a usage error; the
    bitsandbytes ones are dropped, with a ``skip`` line, when the package is not installed."""
    methods = requested.split(",")
    unknown = set(methods) - set(QUANT_METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}: use {','.join(QUANT_METHODS)}")
    bnb = [m for m in methods if m.startswith("bitsandbytes")]
    if bnb and importlib.util.find_spec("bitsandbytes") is None:
        emit(event="skip", methods=bnb, reason="pip install 'lorax-engine[bitsandbytes]'")
        methods = [m for m in methods if m not in bnb]
    return methods


def hf_tokenizer(vocab_size: int) -> Any:
    """A transformers fast tokenizer over ``structured.bench``'s synthetic byte-level BPE.

    No download: a real-size vocabulary (Llama-3's 128,256 for the 8B shape) that llguidance
    accepts, so constrained decoding pays what it would with a real tokenizer. EOS is id 0.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=synthetic_tokenizer(vocab_size), eos_token="<|eos|>"
    )


def write_tokenizer_dir(path: Path, vocab_size: int) -> Path:
    """Save ``hf_tokenizer`` where ``TokenizerInfo`` / ``AutoTokenizer`` can load it."""
    path.mkdir(parents=True, exist_ok=True)
    hf_tokenizer(vocab_size).save_pretrained(str(path))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": EOS_ID}))
    return path


def random_lora(
    spec: ModelLoraSpec, rank: int, seed: int, dtype: torch.dtype, device: torch.device
) -> LoraWeights:
    """Rank-``rank`` LoRA on every target of every layer, nonzero A and B (made on ``device``)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in range(spec.num_layers):
        for target, (fin, fout) in spec.targets.items():
            a = torch.randn(rank, fin, generator=gen, device=device) / fin**0.5  # [r, in]
            b = torch.randn(fout, rank, generator=gen, device=device) * 0.02  # [out, r]
            modules[(layer, target)] = (a.to(dtype), b.to(dtype))
    return LoraWeights(f"bench-{seed}", rank, 2.0, modules)


@dataclass(slots=True)
class BatchResult:
    """What one batch of requests did, timed on the caller's thread driving ``core.step()``."""

    batch: int
    wall_s: float
    output_tokens: int
    decode_ms: list[float] = field(default_factory=list[float])
    outputs: list[list[int]] = field(default_factory=list[list[int]])
    finish_reasons: dict[str, int] = field(default_factory=dict[str, int])
    errors: list[str] = field(default_factory=list[str])

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.wall_s

    @property
    def decode_ms_p50(self) -> float:
        xs = sorted(self.decode_ms)
        return xs[len(xs) // 2] if xs else float("nan")

    def summary(self) -> dict[str, object]:
        p50 = self.decode_ms_p50
        return {
            "batch": self.batch,
            "wall_s": round(self.wall_s, 3),
            "output_tokens": self.output_tokens,
            "output_tok_s": round(self.output_tok_s, 1),
            "decode_steps": len(self.decode_ms),
            "decode_ms_p50": round(p50, 3),
            "decode_tok_s": round(self.batch * 1000 / p50, 1) if self.decode_ms else None,
            "finish_reasons": self.finish_reasons,
        }


def run_batch(
    core: EngineCore,
    prompts: Sequence[list[int]],
    new_tokens: int,
    *,
    constraint: Callable[[int], Any] | None = None,
    adapter_slot: Callable[[int], int] | None = None,
) -> BatchResult:
    """Submit every prompt at once (greedy, ``ignore_eos``) and step the core until all end.

    ``constraint(i)``: request i's ``TokenConstraint`` (or None); ``adapter_slot(i)``: its LoRA
    slot (-1: base model). Decode steps are the steps where every request decodes one token.
    """
    n = len(prompts)
    result = BatchResult(n, 0.0, 0, outputs=[[] for _ in prompts])

    def sink(i: int) -> Callable[[dict[str, Any]], None]:
        def on(ev: dict[str, Any]) -> None:
            if ev["type"] == "token":
                result.outputs[i].append(int(ev["token"]["id"]))
            elif ev["type"] == "end":
                reason = str(ev["finish_reason"])
                result.finish_reasons[reason] = result.finish_reasons.get(reason, 0) + 1
                result.output_tokens += int(ev["generated_tokens"])
            elif ev["type"] == "error":  # raised once the batch is over, not on the loop
                result.errors.append(f"request {i}: {ev['error']}")

        return on

    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    for i, ids in enumerate(prompts):
        req = Request(f"r{i}", list(ids), params, time.monotonic())
        if constraint is not None:
            req.constraint = constraint(i)
        if adapter_slot is not None:
            req.adapter_slot = adapter_slot(i)
        core.submit(req, sink(i))
    _sync()
    t0 = time.perf_counter()
    while sum(result.finish_reasons.values()) + len(result.errors) < n:
        ts = time.perf_counter()
        core.step()
        dt = time.perf_counter() - ts
        if core.stats.batch_size == n and core.stats.num_tokens == n:
            result.decode_ms.append(dt * 1000)
    _sync()
    result.wall_s = time.perf_counter() - t0
    if result.errors:
        raise RuntimeError(f"{len(result.errors)} requests failed, first: {result.errors[0]}")
    return result


def random_prompts(count: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Random token ids, never the EOS id (a random prompt has no text to keep)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size, (count, length), generator=gen).tolist()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
