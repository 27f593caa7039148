"""Quantized bases in the engine: greedy tokens equal HF's on the weights the quantized model encodes.

The reference for a GPTQ/AWQ checkpoint is its dequantized float32 checkpoint served by HF
transformers (+ PEFT for adapters); for fp8 it is the checkpoint with every projection replaced by
its fp8 round trip. fp32 on CPU, where the w4a16 op is the dequantize reference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_testkit import (
    Collector,
    greedy_with_adapters,
    hf_greedy,
    make_engine,
    peft_quiet,
    save_random_lora,
)
from safetensors.torch import load_file, save_file

from lorax_engine.core.factory import LoadedEngine
from lorax_engine.models.decoder import LoraLinear
from lorax_engine.params import SamplingParams
from lorax_engine.quant.linear import Fp8Linear, W4Linear
from lorax_engine.quant.quantizer import PROJECTIONS, dequantize_checkpoint, quantize_checkpoint

PROMPTS = [[0, *range(10, 10 + n)] for n in (4, 13)]
NEW = 10


def _engine_greedy(engine: LoadedEngine) -> list[list[int]]:
    col = Collector(engine)
    for i, p in enumerate(PROMPTS):
        col.add(str(i), p, SamplingParams(max_new_tokens=NEW, ignore_eos=True))
    col.run()
    return [col.tokens(str(i)) for i in range(len(PROMPTS))]


@pytest.mark.parametrize(
    ("method", "group", "act_order"),
    [("gptq", 32, True), ("gptq", 128, False), ("awq", 32, False)],
)
def test_w4_checkpoint_matches_its_dequantized_weights(
    make_checkpoint: Callable[[str], Path],
    tmp_path: Path,
    method: str,
    group: int,
    act_order: bool,
) -> None:
    src = make_checkpoint("llama")
    qdir = quantize_checkpoint(src, tmp_path / "q", method, group, act_order=act_order)
    ref_dir = dequantize_checkpoint(qdir, tmp_path / "deq")
    engine = make_engine(qdir)  # detected from quantization_config, no flag
    modules = [m for m in engine.core.runner.model.modules() if isinstance(m, LoraLinear)]
    assert modules
    assert all(m.weight is None and isinstance(m.quant, W4Linear) for m in modules)
    got = _engine_greedy(engine)
    assert got == [hf_greedy(ref_dir, p, NEW) for p in PROMPTS]
    # The quantization is real: the tokens differ from the unquantized model's somewhere.
    assert got != [hf_greedy(src, p, NEW) for p in PROMPTS]


def test_flag_mismatch_fails_at_start_up(
    make_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    qdir = quantize_checkpoint(make_checkpoint("llama"), tmp_path / "q", "gptq", 32)
    with pytest.raises(ValueError, match="--quantize awq does not match"):
        make_engine(qdir, quantize="awq")
    with pytest.raises(ValueError, match="needs a GPTQ checkpoint"):
        make_engine(make_checkpoint("llama"), quantize="gptq")
    with pytest.raises(ValueError, match="quantize must be one of"):
        make_engine(qdir, quantize="int2")


def test_fp8_matches_the_fp8_round_trip(
    make_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    src = make_checkpoint("qwen2")  # q/k/v biases stay 16-bit beside the fp8 weight
    ref_dir = tmp_path / "fp8-ref"
    ref_dir.mkdir()
    weights = load_file(str(src / "model.safetensors"))
    for name, w in weights.items():
        if name.removesuffix(".weight").split(".", 3)[-1] in PROJECTIONS:
            weights[name] = Fp8Linear(w).dequantized(torch.float32)
    save_file(weights, str(ref_dir / "model.safetensors"), metadata={"format": "pt"})
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (ref_dir / f.name).write_bytes(f.read_bytes())
    engine = make_engine(src, quantize="fp8")
    qkv = engine.core.runner.model.get_submodule("layers.0.attn.qkv")
    assert isinstance(qkv, LoraLinear)
    assert isinstance(qkv.quant, Fp8Linear)
    assert qkv.quant.qweight.dtype == torch.float8_e4m3fn
    assert _engine_greedy(engine) == [hf_greedy(ref_dir, p, NEW) for p in PROMPTS]


def _peft_greedy(base: Path, adapter: Path, prompt: list[int]) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    with peft_quiet():
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def test_adapter_on_gptq_base_matches_peft_on_the_dequantized_base(
    make_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    """One heterogeneous batch: base and adapter requests on a GPTQ (act-order) base."""
    src = make_checkpoint("llama")
    qdir = quantize_checkpoint(src, tmp_path / "q", "gptq", 32, act_order=True)
    ref_dir = dequantize_checkpoint(qdir, tmp_path / "deq")
    assert "quantization_config" not in json.loads((ref_dir / "config.json").read_text())
    root = tmp_path / "adapters"
    save_random_lora(ref_dir, root / "pirate", seed=5)
    engine = make_engine(
        qdir,
        quantize="gptq",
        lora_slots=2,
        lora_max_rank=8,
        adapter_source="local",
        local_adapter_roots=[root],
    )
    jobs = [("a0", PROMPTS[0], "pirate"), ("b0", PROMPTS[0], None), ("a1", PROMPTS[1], "pirate")]
    tokens = greedy_with_adapters(engine, jobs, NEW)
    assert tokens["a0"] == _peft_greedy(ref_dir, root / "pirate", PROMPTS[0])
    assert tokens["a1"] == _peft_greedy(ref_dir, root / "pirate", PROMPTS[1])
    assert tokens["b0"] == hf_greedy(ref_dir, PROMPTS[0], NEW)
    assert tokens["a0"] != tokens["b0"]
