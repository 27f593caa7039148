"""Quantized base models (issue #10): output drift of each method against the float32 model, on CPU.

For a checkpoint (default: the embedded ``demo``: a trained BPE tokenizer, but random weights)
served as float32, and then with each quantization, over a fixed set of English prompts:

- mean KL(reference || method) of the next-token distribution at every prompt position
  (teacher-forced on the prompt; full-vocabulary log-softmax of the served logits), in nats;
- top-1 agreement: how often the two distributions' argmax agree over those positions;
- greedy agreement: the share of ``--new-tokens`` greedy tokens equal to the reference's at the
  same index, per prompt, averaged.

Every model is the served one: ``load_engine`` with ``--quantize`` for fp8 and bitsandbytes
(quantized at load), and GPTQ (plain and act-order) and AWQ checkpoints written from the same
float checkpoint by ``quant.quantizer`` (round to nearest) and loaded as such. ``bf16`` (the
checkpoint served in bfloat16) is the yardstick: drift from rounding alone, no quantization.
The reference's mean entropy is printed beside ``log(vocab)``: the nearer the two, the flatter the
logits and the more a small error reorders them (the demo's random weights are nearly flat).
``quant.quantizer`` rounds GPTQ and AWQ to the same grid, so without act-order the two give the
same weights in two packings: their rows check the loaders, not the two algorithms.
Prints JSON lines, then a markdown table.

    uv run python packages/lorax-engine/benchmarks/bench_quant_drift.py [--model-id demo]

On CPU fp8 is weight-only (the weight is dequantized to the activation dtype; on the GPU the
prefill also rounds activations to fp8) and the 4-bit formats run the w4a16 dequantize reference.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_common import QUANT_METHODS, emit, quant_methods

from lorax_engine.config import EngineConfig
from lorax_engine.core.factory import LoadedEngine, load_engine
from lorax_engine.core.request import Request
from lorax_engine.models.loader import resolve_model_dir
from lorax_engine.models.model_config import ModelConfig
from lorax_engine.params import Limits, SamplingParams
from lorax_engine.quant.quantizer import quantize_checkpoint

# Fixed, short, plain English: some echo the demo corpus, most do not.
PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "LoRAX serves thousands of fine-tuned adapters",
    "Each request names the adapter it wants, and",
    "The engine keeps the key and value cache in",
    "Arr, matey! The pirate adapter speaks like",
    "Shall I compare thee to a summer's day?",
    "Rough winds do shake the darling buds of May,",
    "A scheduler admits new requests between steps.",
    "The weather was cold, so we stayed inside.",
    "She opened the door and looked at the garden.",
    "My favourite number is seven, and yours is",
    "Please send me the report before Friday.",
    "The train to the city leaves at nine.",
    "He wrote a long letter to his brother.",
    "Water boils at one hundred degrees.",
    "The cat sat on the warm window sill.",
    "We found a small island far out at sea.",
    "Thank you for the lovely dinner last night.",
    "The server batches requests on one GPU.",
    "In the morning the market is full of people.",
    "They hunted for treasure on a distant island.",
    "Memory is never wasted on padding, because",
    "I am fine, thank you. And how are you?",
    "The children played in the park until dark.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10",
    "A good book is a friend that never leaves.",
    "The ship hoisted its sails at dawn.",
    "Summer's lease hath all too short a date.",
    "Our team meets every Monday at ten.",
    "The river runs quietly through the valley.",
    "Thou art more lovely and more temperate.",
)


@dataclass(slots=True)
class PromptRun:
    """What one prompt gave on one model."""

    logprobs: torch.Tensor  # [prompt_len, vocab] float32: next-token log-distribution per position
    greedy: list[int]  # the greedy continuation


@dataclass(slots=True)
class Drift:
    """One method against the reference, over every prompt."""

    mean_kl: float  # nats, mean over all prompt positions of all prompts
    top1_agreement: float  # over the same positions
    greedy_agreement: float  # mean over prompts of the share of equal greedy tokens
    positions: int


class PrefillLogits:
    """Keeps the logits of a model's first ``compute_logits`` call after each ``reset()``.

    With prompt logprobs asked for, a lone request's prefill computes the logits of every prompt
    position (the scored rows, then the sampled last one) in one call: the full distributions the
    engine only reduces to the chosen tokens' logprobs.
    """

    def __init__(self, compute_logits: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.compute_logits = compute_logits
        self.first: torch.Tensor | None = None

    def reset(self) -> None:
        self.first = None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.compute_logits(hidden)
        if self.first is None:
            self.first = logits.float().log_softmax(-1).cpu()  # [rows, vocab]
        return logits


def served_runs(
    model_dir: Path,
    prompts: Sequence[list[int]],
    new_tokens: int,
    *,
    quantize: str | None = None,
    dtype: str = "float32",
) -> list[PromptRun]:
    """Serve ``model_dir`` on CPU as ``--quantize`` would and run each prompt alone through it."""
    longest = max(len(p) for p in prompts) + new_tokens
    engine: LoadedEngine = load_engine(
        EngineConfig(
            model_id=str(model_dir),
            device="cpu",
            dtype=dtype,
            quantize=quantize,
            limits=Limits(max_input_length=longest, max_total_tokens=longest + 16),
            max_batch_total_tokens=4 * longest,
            structured_output=None,
        )
    )
    model = engine.core.runner.model
    recorder = PrefillLogits(model.compute_logits)
    model.compute_logits = recorder  # type: ignore[method-assign]
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True, decoder_input_details=True)
    runs = []
    for i, ids in enumerate(prompts):
        recorder.reset()
        events: list[dict[str, Any]] = []
        engine.core.submit(Request(f"p{i}", list(ids), params, time.monotonic()), events.append)
        while not events or events[-1]["type"] not in ("end", "error"):
            engine.core.step()
        if events[-1]["type"] == "error":
            raise RuntimeError(f"prompt {i}: {events[-1]['error']}")
        # One row per prompt position: the prompt was prefilled whole, in one step.
        assert recorder.first is not None
        assert recorder.first.shape[0] == len(ids)
        greedy = [int(e["token"]["id"]) for e in events if e["type"] == "token"]
        runs.append(PromptRun(recorder.first, greedy))
    return runs


def drift(reference: Sequence[PromptRun], other: Sequence[PromptRun]) -> Drift:
    """KL(reference || other), top-1 and greedy agreement over the same prompts."""
    ref = torch.cat([r.logprobs for r in reference])  # [positions, vocab]
    oth = torch.cat([o.logprobs for o in other])
    kl = (ref.exp() * (ref - oth)).sum(-1)  # [positions]
    top1 = (ref.argmax(-1) == oth.argmax(-1)).float()
    greedy = [
        sum(a == b for a, b in zip(r.greedy, o.greedy, strict=True)) / len(r.greedy)
        for r, o in zip(reference, other, strict=True)
    ]
    return Drift(
        mean_kl=float(kl.mean()),
        top1_agreement=float(top1.mean()),
        greedy_agreement=sum(greedy) / len(greedy),
        positions=ref.shape[0],
    )


def mean_entropy(runs: Sequence[PromptRun]) -> float:
    """Mean entropy (nats) of the next-token distributions: how peaked the reference is."""
    lp = torch.cat([r.logprobs for r in runs])
    return float(-(lp.exp() * lp).sum(-1).mean())


def fitting_group(cfg: ModelConfig, requested: int) -> int:
    """``requested`` if it divides every projection's input size, else the largest power of two
    that splits each into at least two groups (with one group per row act-order would permute
    nothing, and GPTQ with act-order would be plain GPTQ)."""
    sizes = (cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.intermediate_size)
    if all(k % requested == 0 for k in sizes):
        return requested
    group = 1 << int(math.log2(min(requested, min(sizes) // 2)))
    while any(k % group for k in sizes):
        group //= 2
    return group


def measure(
    model_dir: Path,
    methods: Sequence[str],
    prompts: Sequence[list[int]],
    group: int,
    new_tokens: int,
    work: Path,
) -> tuple[list[PromptRun], dict[str, Drift]]:
    """The float32 reference runs and each method's drift from them."""
    reference = served_runs(model_dir, prompts, new_tokens)
    results = {}
    for method in methods:
        if method == "bf16":
            runs = served_runs(model_dir, prompts, new_tokens, dtype="bfloat16")
        elif method in ("gptq", "gptq-act", "awq"):
            fmt = method.removesuffix("-act")
            qdir = quantize_checkpoint(
                model_dir, work / method, fmt, group, act_order=method == "gptq-act"
            )
            runs = served_runs(qdir, prompts, new_tokens)
        else:
            runs = served_runs(model_dir, prompts, new_tokens, quantize=method)
        results[method] = drift(reference, runs)
    return reference, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-id", default="demo", help="demo, a local checkpoint dir or a hub id")
    ap.add_argument("--methods", default=",".join(QUANT_METHODS))
    ap.add_argument("--group-size", type=int, default=128, help="GPTQ/AWQ group (if it fits)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="the first N prompts")
    args = ap.parse_args()
    methods = quant_methods(ap, args.methods)

    model_dir = resolve_model_dir(args.model_id)
    cfg = ModelConfig.from_dir(model_dir)
    group = fitting_group(cfg, args.group_size)
    if group != args.group_size:
        emit(
            event="group_size",
            requested=args.group_size,
            used=group,
            reason=f"{args.group_size} does not divide the projections' input sizes "
            f"(hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}): "
            "the largest power of two giving every one at least two groups",
        )
    from transformers import AutoTokenizer

    tok: Any = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = [tok.encode(p) for p in PROMPTS[: args.prompts]]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        reference, results = measure(
            model_dir, methods, prompts, group, args.new_tokens, Path(work)
        )
    emit(
        event="reference",
        model=args.model_id,
        prompts=len(prompts),
        positions=sum(len(p) for p in prompts),
        mean_entropy=round(mean_entropy(reference), 3),
        uniform_entropy=round(math.log(cfg.vocab_size), 3),
        torch=torch.__version__,
        s=round(time.perf_counter() - t, 1),
    )
    for method, d in results.items():
        emit(
            event="drift",
            method=method,
            group_size=group if method in ("gptq", "gptq-act", "awq") else None,
            mean_kl=round(d.mean_kl, 6),
            top1_agreement=round(d.top1_agreement, 4),
            greedy_agreement=round(d.greedy_agreement, 4),
            positions=d.positions,
        )
    print()
    print(
        f"reference: {args.model_id} in float32, {len(prompts)} prompts, "
        f"{sum(map(len, prompts))} positions, mean entropy {mean_entropy(reference):.2f} nats "
        f"(uniform: {math.log(cfg.vocab_size):.2f})"
    )
    print(
        f"| method | mean KL vs fp32 (nats) | top-1 agreement | greedy {args.new_tokens} agreement |"
    )
    print("| --- | ---: | ---: | ---: |")
    for method, d in results.items():
        name = f"{method} (group {group})" if method in ("gptq", "gptq-act", "awq") else method
        print(
            f"| {name} | {d.mean_kl:.3g} | {100 * d.top1_agreement:.1f}% "
            f"| {100 * d.greedy_agreement:.1f}% |"
        )


if __name__ == "__main__":
    main()
