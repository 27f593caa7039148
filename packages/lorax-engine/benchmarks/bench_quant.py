"""Quantized base models (issue #10): decode tokens/s at batch 1 and 64 for bf16, fp8, GPTQ and AWQ
(w4a16) and bitsandbytes (LLM.int8, NF4, FP4) on a random-weight Llama-3-8B shape, each with and
without rank-16 LoRA adapters on top (one distinct adapter per request), plus the weight bytes.
Prints JSON lines.

    PYTHONPATH=packages/lorax-kernels/src:packages/lorax-engine/src \
        python3 packages/lorax-engine/benchmarks/bench_quant.py [--methods bf16,fp8,gptq,awq] \
        [--lora-dtype auto|fp8] [--tiny]

One bf16 model is made on the GPU; every method then swaps the projections' base matmul the way
the loader does for ``--quantize``: fp8 through ``Fp8Linear`` (quantized at load; the LM head too,
by the loader's ``fp8_lm_head_``), GPTQ and AWQ by
rounding the same bf16 weights to 4 bits (group 128, the grid of ``quant.quantizer.quantize_rtn``,
vectorised on the GPU), packing them in the checkpoint format and converting them with the
loader's own ``gptq_to_w4`` / ``awq_to_w4`` into ``W4Linear``. ``gptq-act`` adds act-order
(a permuted ``g_idx``). The bitsandbytes methods go through ``quant.bnb_linear`` as the loader's
(skipped, with a line saying so, when the package is not installed). Drift: the mean KL(bf16 || method) of the first output token's
distribution over the same prompts, and how often the greedy first tokens agree with bf16's.
``--tiny`` runs a small model on the CPU (script check).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
from bench_common import (
    QUANT_METHODS,
    BatchResult,
    device_and_dtype,
    emit,
    model_shape,
    quant_methods,
    random_lora,
    random_prompts,
    run_batch,
)
from bench_engine import NullTokenizer, add_no_pdl, apply_no_pdl, copy_bandwidth

from lorax_engine.config import LORA_DTYPES
from lorax_engine.core.block_manager import BlockManager
from lorax_engine.core.engine_core import EngineCore
from lorax_engine.core.kv_cache import allocate_kv_cache
from lorax_engine.core.model_runner import ModelRunner
from lorax_engine.core.scheduler import Scheduler, SchedulerConfig
from lorax_engine.lora import LoraSlots, side_stream
from lorax_engine.models.decoder import DecoderModel, LoraLinear
from lorax_engine.models.loader import build_model, init_random_
from lorax_engine.quant.formats import AWQ_ORDER, W4Weight, awq_to_w4, gptq_to_w4, pack_cols
from lorax_engine.quant.linear import Fp8Linear, W4Linear
from lorax_engine.quant.load import fp8_lm_head_
from lorax_engine.quant.spec import QuantSpec
from lorax_kernels.w4a16 import pack_rows

# The engine's --quantize methods, the unquantized bf16 baseline and GPTQ with act-order.


def rtn_w4(
    weight: torch.Tensor, group: int, perm: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``quantize_rtn``'s asymmetric 4-bit grid, all groups at once on the weight's device.

    weight ``[N, K]``; ``perm``: act-order (input row ``perm[i]`` falls in group ``i // group``).
    Returns q ``[K, N]`` int32, scales ``[G, N]`` fp16, zeros ``[G, N]`` int32 in 1..15, g_idx.
    """
    w = weight.detach().float().T  # [K, N]
    k, n = w.shape
    if perm is not None:
        w = w[perm]  # rows in quantization order
    grouped = w.reshape(k // group, group, n)  # [G, group, N]
    lo = grouped.amin(dim=1).clamp(max=0)  # [G, N]; the grid always holds 0
    hi = grouped.amax(dim=1).clamp(min=0)
    scales = ((hi - lo) / 15).clamp(min=1e-6).half()
    s = scales.float()[:, None, :]
    zeros = torch.round(-lo / scales.float()).clamp(1, 15).to(torch.int32)  # [G, N]
    q = (torch.round(grouped / s) + zeros[:, None, :]).clamp(0, 15).to(torch.int32).reshape(k, n)
    g_idx = (torch.arange(k, device=w.device) // group).to(torch.int32)
    if perm is not None:
        q_orig = torch.empty_like(q)
        q_orig[perm] = q
        q = q_orig
        g_orig = torch.empty_like(g_idx)
        g_orig[perm] = g_idx
        g_idx = g_orig
    return q, scales, zeros, g_idx


def to_w4(name: str, weight: torch.Tensor, method: str, group: int, seed: int) -> W4Weight:
    """Round ``weight`` to 4 bits, pack it as a GPTQ or AWQ checkpoint would, and convert it back
    with the loader's own format code (so the measured layout is the one ``--quantize`` serves)."""
    perm = None
    if method == "gptq-act":
        gen = torch.Generator(device=weight.device).manual_seed(seed)
        perm = torch.randperm(weight.shape[1], generator=gen, device=weight.device)
    q, scales, zeros, g_idx = rtn_w4(weight, group, perm)
    if method == "awq":
        tensors = {
            "qweight": pack_cols(q, AWQ_ORDER),
            "qzeros": pack_cols(zeros, AWQ_ORDER),
            "scales": scales,
        }
        return awq_to_w4(name, tensors, QuantSpec("awq", bits=4, group_size=group))
    tensors = {
        "qweight": pack_rows(q),
        "qzeros": pack_cols(zeros - 1),  # GPTQ v1 stores zero - 1
        "scales": scales,
        "g_idx": g_idx,
    }
    spec = QuantSpec(
        "gptq", bits=4, group_size=group, desc_act=perm is not None, zeros_minus_one=True
    )
    return gptq_to_w4(name, tensors, spec)


def quantize_(
    model: DecoderModel,
    originals: dict[str, torch.Tensor],
    method: str,
    dtype: torch.dtype,
    group: int,
) -> None:
    """Give every projection (and, for fp8, the LM head) its base matmul for ``method`` (from the
    kept bf16 weights; the head's under ``"lm_head"``)."""
    model.lm_head = torch.nn.Parameter(originals["lm_head"], requires_grad=False)
    model.lm_head_quant = None
    if method == "fp8":
        fp8_lm_head_(model)
    for i, (name, module) in enumerate(projections(model)):
        w = originals[name]
        if method == "bf16":
            module.weight, module.quant = torch.nn.Parameter(w, requires_grad=False), None
            continue
        module.weight = None
        if method == "fp8":
            module.quant = Fp8Linear(w)
        elif method.startswith("bitsandbytes"):
            from lorax_engine.quant.bnb_linear import bnb_linear

            module.quant = bnb_linear(method, w)
        else:
            module.quant = W4Linear(to_w4(name, w, method, group, seed=i), dtype, w.device)


class FirstTokenLogprobs:
    """Keeps each prompt's first-token log-distribution (the logits of its prefill's last
    position) while installed on a core's runner; ``close()`` removes it."""

    def __init__(self, core: EngineCore, prompts: Sequence[list[int]]) -> None:
        self.runner = core.runner
        self.execute = core.runner.execute
        self.index = {tuple(p): i for i, p in enumerate(prompts)}
        self.logprobs: dict[int, torch.Tensor] = {}  # prompt index -> [vocab] float32
        self.runner.execute = self  # type: ignore[method-assign]

    def __call__(self, chunks: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        out = self.execute(chunks, *args, **kwargs)
        sampling = [c.request for c in chunks if c.samples]  # the rows of sample_logits
        for j, req in enumerate(sampling):
            i = self.index.get(tuple(req.prompt_token_ids))
            if i is not None and req.num_output_tokens == 0:
                self.logprobs[i] = out.sample_logits[j].float().log_softmax(-1)
        return out

    def close(self) -> None:
        del self.runner.execute  # the class's method again


def mean_kl(reference: dict[int, torch.Tensor], other: dict[int, torch.Tensor]) -> float:
    """Mean over prompts of KL(reference || other), in nats."""
    kls = [
        float((ref.exp() * (ref - other[i])).sum()) for i, ref in reference.items() if i in other
    ]
    return sum(kls) / len(kls)


def projections(model: DecoderModel) -> list[tuple[str, LoraLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]


def weight_bytes(model: DecoderModel) -> tuple[int, int]:
    """(bytes a decode step reads: everything but the embedding table, all weight bytes)."""
    total = embed = 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if "rotary" in name:
            continue
        nbytes = t.numel() * t.element_size()
        total += nbytes
        if name.startswith("embed"):
            embed += nbytes
    return total - embed, total


def head_bytes(model: DecoderModel) -> int:
    """Bytes of the LM head as served: fp8's quantized copy, else the 16-bit head."""
    if model.lm_head_quant is not None:
        return sum(t.numel() * t.element_size() for t in model.lm_head_quant.buffers())
    head = model.embed.weight if model.lm_head is None else model.lm_head
    return head.numel() * head.element_size()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(QUANT_METHODS))
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--input", type=int, default=512)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument(
        "--lora-dtype",
        choices=LORA_DTYPES,
        default="auto",
        help="the adapters' slot tables: the model's dtype, or fp8 (as lorax-engine serve's flag)",
    )
    ap.add_argument(
        "--lora-side-stream",
        choices=["on", "off", "both"],
        default="on",
        help="the decode LoRA shrink on a side stream beside the base GEMM (the engine's"
        " default), serial after it (off), or both in turn for an A/B in one process",
    )
    ap.add_argument("--group-size", type=int, default=128, help="4-bit group (tiny: 32)")
    ap.add_argument("--tiny", action="store_true", help="small model on the CPU (script check)")
    add_no_pdl(ap)
    args = ap.parse_args()
    pdl_on = apply_no_pdl(args)
    methods = quant_methods(ap, args.methods)
    side_stream_modes = {"on": [True], "off": [False], "both": [True, False]}[args.lora_side_stream]
    batches = [int(b) for b in args.batches.split(",")]
    cfg = model_shape(args.tiny)
    dev, dtype = device_and_dtype(args.tiny)
    group = min(args.group_size, 32) if args.tiny else args.group_size
    torch.manual_seed(0)
    bw = copy_bandwidth() if dev.type == "cuda" else None
    emit(event="copy_bw_TBps", value=round(bw / 1e12, 3) if bw else None)
    emit(event="pdl", enabled=pdl_on)

    t = time.perf_counter()
    max_b = max(batches)
    total = args.input + args.output
    model = build_model(cfg, dtype, dev, max_positions=total + 64)
    init_random_(model, seed=0)
    originals = {n: m.weight.data for n, m in projections(model) if m.weight is not None}
    assert model.lm_head is not None  # both shapes have an untied head
    originals["lm_head"] = model.lm_head.data
    spec = model.lora_spec()
    table_dtype = torch.float8_e4m3fn if args.lora_dtype == "fp8" else dtype
    slots = LoraSlots.allocate(spec, max_b, args.lora_rank, table_dtype, dev)
    for s in range(max_b):  # one distinct adapter per request of the largest batch
        slots.write_(s, random_lora(spec, args.lora_rank, seed=s, dtype=dtype, device=dev))
    bs = 16
    blocks = max_b * (-(-total // bs)) + 16
    kv = allocate_kv_cache(cfg, blocks, bs, dtype, dev)
    emit(
        event="setup",
        s=round(time.perf_counter() - t, 1),
        slot_table_gb=round(slots.nbytes / 1e9, 2),
        lora_dtype=args.lora_dtype,
    )

    prompts = {b: random_prompts(b, args.input, cfg.vocab_size, seed=b) for b in batches}
    reference: dict[int, list[int]] = {}  # bf16's greedy first tokens per batch
    ref_logprobs: dict[int, dict[int, torch.Tensor]] = {}  # and their distributions
    for method in methods:
        t = time.perf_counter()
        quantize_(model, originals, method, dtype, group)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        step_bytes, all_bytes = weight_bytes(model)
        for on_side_stream in side_stream_modes:
            side_stream.set_enabled(on_side_stream)  # before the graphs are captured
            runner = ModelRunner(
                model,
                kv,
                block_size=bs,
                max_num_seqs=max_b,
                max_num_tokens=8192,
                max_blocks_per_seq=-(-total // bs),
                lora_slots=slots,
                use_cuda_graphs=dev.type == "cuda",
            )
            runner.capture_graphs()
            sched = Scheduler(SchedulerConfig(8192, max_b), BlockManager(blocks, bs))
            core = EngineCore(sched, runner, NullTokenizer(), frozenset())
            emit(
                event="method",
                method=method,
                setup_s=round(time.perf_counter() - t, 1),
                weight_bytes=all_bytes,
                head_bytes=head_bytes(model),
                weight_gb=round(all_bytes / 1e9, 3),
                step_weight_gb=round(step_bytes / 1e9, 3),
            )
            for b in batches:
                warm = random_prompts(b, 16, cfg.vocab_size, seed=99)
                for lora in (False, True):
                    slot_of = (lambda i: i) if lora else None
                    run_batch(core, warm, 3, adapter_slot=slot_of)  # prefill shapes, LoRA graphs
                    recorder = FirstTokenLogprobs(core, prompts[b])
                    r: BatchResult = run_batch(core, prompts[b], args.output, adapter_slot=slot_of)
                    recorder.close()
                    firsts = [o[0] for o in r.outputs]
                    if method == "bf16" and not lora:
                        reference[b] = firsts
                        ref_logprobs[b] = recorder.logprobs
                    match = kl = None
                    if b in reference and not lora:
                        same = sum(x == y for x, y in zip(firsts, reference[b], strict=True))
                        match = round(same / b, 3)
                        kl = mean_kl(ref_logprobs[b], recorder.logprobs)
                    # Roofline: the step's weight bytes plus its KV bytes at the mean context.
                    ctx = args.input + args.output / 2
                    kv_bytes = b * ctx * cfg.num_layers * 2 * cfg.kv_size * kv[0][0].element_size()
                    roof_ms = (step_bytes + kv_bytes) / bw * 1000 if bw else None
                    summary = r.summary()
                    emit(
                        event="quant",
                        method=method,
                        lora=f"{b} distinct rank-{args.lora_rank}" if lora else None,
                        lora_side_stream=on_side_stream if lora else None,
                        input=args.input,
                        output=args.output,
                        first_token_match_vs_bf16=match,
                        mean_kl_vs_bf16=kl,
                        roofline_ms=round(roof_ms, 3) if roof_ms else None,
                        pct_roofline=round(100 * roof_ms / r.decode_ms_p50, 1) if roof_ms else None,
                        **summary,
                    )
            del core, runner, sched
            t = time.perf_counter()  # the next mode's setup: its runner and graphs


if __name__ == "__main__":
    main()
