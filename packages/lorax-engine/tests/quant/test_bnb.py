"""``--quantize bitsandbytes|bitsandbytes-nf4|bitsandbytes-fp4`` on the CPU (bitsandbytes' own CPU ops).

Layers are checked against bitsandbytes' dequantization (tight) and the original weight (loose).
The engine is checked against HF transformers (+ PEFT) on the weights the quantized model
encodes: each projection replaced by its dequantized weight and, for LLM.int8, each base
projection's input rounded through bitsandbytes' per-token int8 quantization the way the engine's
matmul rounds it. fp32, greedy, token for token.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bitsandbytes.functional as bnbf
import pytest
import torch
import torch.nn.functional as F
from engine_testkit import greedy_with_adapters, make_engine, peft_quiet, save_random_lora
from safetensors.torch import load_file, save_file
from torch import nn

from lorax_engine.models.decoder import LoraLinear
from lorax_engine.quant import resolve_quant_spec
from lorax_engine.quant.bnb_linear import FourBitLinear, Int8Linear, bnb_linear
from lorax_engine.quant.quantizer import PROJECTIONS

METHODS = ("bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4")
PROMPTS = [[0, *range(10, 10 + n)] for n in (4, 13)]
NEW = 10
# Relative output error ||y - x W^T|| / ||x W^T|| against the unquantized weight, for a Gaussian
# weight and input: int8 rounds to 1/254 of each row's range, NF4/FP4 to one of 16 levels per 64.
LOOSE = {"bitsandbytes": 0.02, "bitsandbytes-nf4": 0.15, "bitsandbytes-fp4": 0.2}


def _int8_round_trip(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``Int8Linear`` sees it: fp16, then int8 with one absmax scale per token."""
    flat = x.reshape(-1, x.shape[-1]).to(torch.float16)
    q, scale, _ = bnbf.int8_vectorwise_quant(flat)
    return bnbf.int8_vectorwise_dequant(q, scale).reshape(x.shape).to(x.dtype)


def _reference(method: str, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    assert isinstance(layer, Int8Linear | FourBitLinear)
    if method == "bitsandbytes":
        x = _int8_round_trip(x)
    return F.linear(x, layer.dequantized(x.dtype), bias)


@pytest.mark.parametrize("method", METHODS)
def test_layer_matches_its_dequantized_weight(method: str) -> None:
    gen = torch.Generator().manual_seed(0)
    # Off the block size: 96 inputs is 1.5 blocks of 64, so blocks straddle rows.
    w = torch.randn(40, 96, generator=gen) * 0.1  # [out, in]
    x = torch.randn(5, 96, generator=gen)  # [tokens, in]
    bias = torch.randn(40, generator=gen)
    layer = bnb_linear(method, w)
    assert layer.qweight.dtype == (torch.int8 if method == "bitsandbytes" else torch.uint8)
    assert layer.qweight.numel() == (w.numel() if method == "bitsandbytes" else w.numel() // 2)
    y = layer(x, bias)  # [5, 40]
    assert y.shape == (5, 40)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, _reference(method, layer, x, bias), rtol=1e-4, atol=1e-4)
    exact = F.linear(x, w)
    rel = float((y - bias - exact).norm() / exact.norm())
    assert 0 < rel < LOOSE[method]


@pytest.mark.parametrize("method", METHODS)
def test_layer_computes_in_bf16(method: str) -> None:
    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(32, 64, generator=gen) * 0.1).bfloat16()
    x = torch.randn(3, 64, generator=gen).bfloat16()
    layer = bnb_linear(method, w)
    y = layer(x, None)
    assert y.dtype == torch.bfloat16
    ref = _reference(method, layer, x.float(), torch.zeros(32))
    torch.testing.assert_close(y.float(), ref, rtol=0.02, atol=0.02)


def test_missing_package_names_the_extra(
    make_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    monkeypatch.delitem(sys.modules, "lorax_engine.quant.bnb_linear")
    with pytest.raises(ImportError, match=r"pip install 'lorax-engine\[bitsandbytes\]'"):
        make_engine(make_checkpoint("llama"), quantize="bitsandbytes-nf4")


@pytest.mark.parametrize(
    ("flag", "config", "match"),
    [
        ("bitsandbytes", {"quant_method": "gptq", "bits": 4}, "does not match"),
        ("bitsandbytes-nf4", {"quant_method": "awq", "bits": 4}, "does not match"),
        (None, {"quant_method": "bitsandbytes", "load_in_4bit": True}, "quantize it at load"),
        ("bitsandbytes", {"quant_method": "bitsandbytes", "load_in_8bit": True}, "cannot load"),
        ("bitsandbytes-int4", None, "use one of"),
    ],
)
def test_bad_combinations_fail_at_start_up(
    flag: str | None, config: dict[str, Any] | None, match: str
) -> None:
    hf_config = {} if config is None else {"quantization_config": config}
    with pytest.raises(ValueError, match=match):
        resolve_quant_spec(flag, hf_config)
    for method in METHODS:  # and on an unquantized checkpoint every method resolves
        spec = resolve_quant_spec(method, {})
        assert spec is not None
        assert spec.method == method


def test_cli_accepts_the_methods() -> None:
    from lorax_engine.cli import build_parser, config_from_args

    parser = build_parser()
    for method in METHODS:
        args = parser.parse_args(["serve", "--quantize", method])
        assert config_from_args(args).quantize == method


def _dequantized_checkpoint(src: Path, out: Path, method: str) -> Path:
    """``src`` with every projection weight replaced by what ``method`` computes with."""
    out.mkdir()
    weights = load_file(str(src / "model.safetensors"))
    for name, w in weights.items():
        if name.removesuffix(".weight").split(".", 3)[-1] in PROJECTIONS:
            layer = bnb_linear(method, w)
            weights[name] = layer.dequantized(torch.float32)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    return out


def _reference_greedy(
    ref_dir: Path, method: str, prompt: list[int], adapter: Path | None = None
) -> list[int]:
    """HF (+ PEFT) greedy tokens on the dequantized checkpoint; for LLM.int8 every base
    projection (not the LoRA path, which the engine runs on the unrounded input) sees its input
    through the int8 round trip."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(ref_dir), dtype=torch.float32)
    with peft_quiet():
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
        model.eval()
        if method == "bitsandbytes":
            for name, m in model.named_modules():
                if isinstance(m, nn.Linear) and "lora_" not in name and "lm_head" not in name:
                    m.register_forward_pre_hook(lambda _m, args: (_int8_round_trip(args[0]),))
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


@pytest.mark.parametrize("method", METHODS)
def test_engine_with_adapters_matches_the_reference(
    make_checkpoint: Callable[[str], Path], tmp_path: Path, method: str
) -> None:
    """One heterogeneous batch on the quantized base: the base model and two adapters."""
    src = make_checkpoint("llama")
    ref_dir = _dequantized_checkpoint(src, tmp_path / "ref", method)
    root = tmp_path / "adapters"
    save_random_lora(src, root / "pirate", seed=5)
    save_random_lora(src, root / "poet", seed=6)
    engine = make_engine(
        src,
        quantize=method,
        lora_slots=2,
        lora_max_rank=8,
        adapter_source="local",
        local_adapter_roots=[root],
    )
    modules = [m for m in engine.core.runner.model.modules() if isinstance(m, LoraLinear)]
    assert modules
    kind = Int8Linear if method == "bitsandbytes" else FourBitLinear
    assert all(m.weight is None and isinstance(m.quant, kind) for m in modules)
    jobs = [
        ("base0", PROMPTS[0], None),
        ("base1", PROMPTS[1], None),
        ("pirate0", PROMPTS[0], "pirate"),
        ("poet1", PROMPTS[1], "poet"),
    ]
    tokens = greedy_with_adapters(engine, jobs, NEW)
    for rid, prompt, adapter in jobs:
        path = None if adapter is None else root / adapter
        assert tokens[rid] == _reference_greedy(ref_dir, method, prompt, path), rid
    assert tokens["pirate0"] != tokens["base0"]
    assert tokens["poet1"] != tokens["base1"]


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("out_features", "in_features"), [(40, 96), (1024, 4096), (4096, 14336)])
def test_cuda_kernels_match_the_dequantized_weight_and_capture(
    method: str, out_features: int, in_features: int
) -> None:
    """bitsandbytes' CUDA paths (int8 cuBLASLt; 4-bit GEMV at one row, GEMM or dequantize above)
    in bf16, blocks straddling rows included (96 inputs), and replayed from a CUDA graph."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(out_features, in_features, device="cuda", generator=gen).bfloat16() * 0.02
    bias = torch.randn(out_features, device="cuda", generator=gen).bfloat16()
    layer = bnb_linear(method, w)
    for rows in (1, 7, 64):
        x = torch.randn(rows, in_features, device="cuda", generator=gen).bfloat16()
        y = layer(x, bias)  # [rows, out]
        assert y.dtype == torch.bfloat16
        ref = _reference(method, layer, x.float(), bias.float())
        # bf16 output and bf16 (4-bit) or fp16 (int8) operands: a few bf16 ulps of the row scale.
        atol = 0.02 * float(ref.abs().amax())
        torch.testing.assert_close(y.float(), ref, rtol=0.02, atol=atol)
        out = torch.empty_like(y)
        layer(x, bias)  # warm up outside the graph (cuBLASLt handle)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out.copy_(layer(x, bias))
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(out, layer(x, bias))  # the new input, not the captured one
