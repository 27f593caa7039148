"""Quantized bases in the engine: greedy tokens equal HF's on the weights the quantized model encodes.

The reference for a GPTQ/AWQ checkpoint is its dequantized float32 checkpoint served by HF
transformers (+ PEFT for adapters); for fp8 it is the checkpoint with every projection and the LM
head replaced by their fp8 round trips. fp32 on CPU, where the w4a16 op is the dequantize reference.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_testkit import (
    Collector,
    fp8_rows_round_trip,
    greedy_with_adapters,
    hf_greedy,
    make_engine,
    peft_quiet,
    save_random_lora,
)
from safetensors.torch import load_file, save_file

from lorax_engine.core.factory import LoadedEngine
from lorax_engine.models.decoder import LoraLinear
from lorax_engine.models.loader import load_model
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
    """The reference rounds every projection and the LM head through fp8. qwen2's head is tied:
    the reference unties it, so the embedding stays exact while the head is rounded."""
    src = make_checkpoint("qwen2")  # q/k/v biases stay 16-bit beside the fp8 weight
    ref_dir = tmp_path / "fp8-ref"
    ref_dir.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (ref_dir / f.name).write_bytes(f.read_bytes())
    config = json.loads((src / "config.json").read_text())
    assert config["tie_word_embeddings"]
    (ref_dir / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    weights = load_file(str(src / "model.safetensors"))
    for name, w in weights.items():
        if name.removesuffix(".weight").split(".", 3)[-1] in PROJECTIONS:
            weights[name] = fp8_rows_round_trip(w)
    weights["lm_head.weight"] = fp8_rows_round_trip(weights["model.embed_tokens.weight"])
    save_file(weights, str(ref_dir / "model.safetensors"), metadata={"format": "pt"})
    engine = make_engine(src, quantize="fp8")
    qkv = engine.core.runner.model.get_submodule("layers.0.attn.qkv")
    assert isinstance(qkv, LoraLinear)
    assert isinstance(qkv.quant, Fp8Linear)
    assert qkv.quant.qweight.dtype == torch.float8_e4m3fn
    assert _engine_greedy(engine) == [hf_greedy(ref_dir, p, NEW) for p in PROMPTS]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # untied and tied LM heads
def test_fp8_lm_head(make_checkpoint: Callable[[str], Path], arch: str) -> None:
    """Under fp8 the head is fp8 with per-row scales, its logits are the rounded head's, and the
    embedding lookup still reads the exact table (tied: the head's fp8 copy is a separate one)."""
    src = make_checkpoint(arch)
    ckpt = load_file(str(src / "model.safetensors"))
    embed = ckpt["model.embed_tokens.weight"]  # [vocab, hidden]
    head = ckpt.get("lm_head.weight", embed)
    assert ("lm_head.weight" not in ckpt) == (arch == "qwen2")
    model = load_model(src, torch.float32, torch.device("cpu"), max_positions=64, quantize="fp8")
    assert model.lm_head is None  # untied: the 16-bit head was freed
    quant = model.lm_head_quant
    assert isinstance(quant, Fp8Linear)
    assert quant.qweight.dtype == torch.float8_e4m3fn
    assert tuple(quant.qweight.shape) == tuple(head.shape)
    assert dict(model.named_modules())["lm_head_quant"] is quant  # .to() and graphs see it

    ids = torch.tensor([0, 5, len(embed) - 1])
    assert torch.equal(model.embed(ids), embed[ids])

    hidden = torch.randn(3, embed.shape[1], generator=torch.Generator().manual_seed(0))
    logits = model.compute_logits(hidden)  # [3, vocab]
    torch.testing.assert_close(logits, hidden @ fp8_rows_round_trip(head).T)
    assert not torch.allclose(logits, hidden @ head.T)  # the rounding is real


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fp8_decode_graphs_match_eager(make_checkpoint: Callable[[str], Path], arch: str) -> None:
    """On CUDA the fp8 head sits on the GPU with the model and runs inside the captured decode
    graphs (the fp8 GEMV), giving the eager engine's tokens."""
    path = make_checkpoint(arch)
    kw: dict[str, Any] = {"device": "cuda", "quantize": "fp8", "max_batch_size": 8}
    engine = make_engine(path, **kw)
    head = engine.core.runner.model.lm_head_quant
    assert isinstance(head, Fp8Linear)
    assert head.qweight.is_cuda
    graphs = _engine_greedy(engine)
    # Each engine sizes its KV pool from the free memory: the next one needs this one's back.
    del engine, head
    gc.collect()
    assert graphs == _engine_greedy(make_engine(path, eager=True, **kw))


def test_4bit_base_keeps_a_16_bit_lm_head(
    make_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    qdir = quantize_checkpoint(make_checkpoint("llama"), tmp_path / "q", "gptq", 32)
    model = load_model(qdir, torch.float32, torch.device("cpu"), max_positions=64)
    assert model.lm_head_quant is None
    assert model.lm_head is not None
    assert model.lm_head.dtype == torch.float32


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
