"""Load a model with a quantized base: GPTQ/AWQ checkpoints as 4-bit, or any checkpoint as fp8 or
with bitsandbytes (LLM.int8, NF4, FP4)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from lorax_engine.models.decoder import DecoderModel, LoraLinear
from lorax_engine.models.loader import build_model, iter_checkpoint
from lorax_engine.models.model_config import ModelConfig
from lorax_engine.quant.formats import (
    AWQ_TENSORS,
    GPTQ_TENSORS,
    awq_to_w4,
    fuse_w4,
    gptq_to_w4,
)
from lorax_engine.quant.linear import Fp8Linear, W4Linear
from lorax_engine.quant.spec import AT_LOAD_METHODS, QuantSpec

# Our fused projection -> the HF modules (slices) it concatenates, in order.
FUSED = {
    "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.o": ("self_attn.o_proj",),
    "mlp.gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down": ("mlp.down_proj",),
}


def load_quantized_model(
    path: Path,
    spec: QuantSpec,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    *,
    allow_bin: bool = False,
) -> DecoderModel:
    """Build the model of ``path/config.json`` with every projection's base weight quantized.

    Embeddings and norms stay in ``dtype``. The LM head does too for GPTQ/AWQ (as their
    checkpoints keep it) and bitsandbytes; fp8 serves it in fp8 as well (``fp8_lm_head_``).
    """
    cfg = ModelConfig.from_dir(path)
    if spec.method in AT_LOAD_METHODS:
        quantize = _at_load_quantizer(spec.method)
        model = build_model(cfg, dtype, device, max_positions)
        model.load_hf_weights(iter_checkpoint(path, allow_bin=allow_bin))
        for module in _projections(model):
            assert module.weight is not None
            module.quant = quantize(module.weight)
            module.weight = None  # frees the 16-bit copy
        if spec.method == "fp8":
            # After the projections: their freed 16-bit weights leave room for its float32 temps.
            fp8_lm_head_(model)
        return model
    model = build_model(cfg, dtype, device, max_positions, quantized_projections=True)
    kinds = GPTQ_TENSORS if spec.method == "gptq" else AWQ_TENSORS
    packed: dict[str, dict[str, torch.Tensor]] = {}

    def rest() -> Iterator[tuple[str, torch.Tensor]]:
        # The 16-bit tensors go to the model's own loader; the packed ones are set aside.
        for name, tensor in iter_checkpoint(path, allow_bin=allow_bin):
            prefix, _, kind = name.rpartition(".")
            if kind in kinds:
                packed.setdefault(prefix, {})[kind] = tensor
            else:
                yield name, tensor

    model.load_hf_weights(rest())
    convert = gptq_to_w4 if spec.method == "gptq" else awq_to_w4
    for i, layer in enumerate(model.layers):
        for ours, hf_modules in FUSED.items():
            parts = []
            for hf in hf_modules:
                prefix = f"model.layers.{i}.{hf}"
                tensors = packed.pop(prefix, None)
                if tensors is None or "qweight" not in tensors:
                    raise ValueError(
                        f"{spec.method.upper()} checkpoint has no quantized weight {prefix}.qweight"
                    )
                parts.append(convert(prefix, tensors, spec))
            module = layer.get_submodule(ours)
            assert isinstance(module, LoraLinear)
            w = fuse_w4(f"model.layers.{i}.{ours}", parts)
            if (w.in_features, w.out_features) != (module.in_features, module.out_features):
                raise ValueError(
                    f"model.layers.{i}.{ours}: quantized weight is [{w.in_features} -> "
                    f"{w.out_features}], config.json says [{module.in_features} -> "
                    f"{module.out_features}]"
                )
            module.quant = W4Linear(w, dtype, device)
    if packed:
        raise ValueError(f"unexpected quantized weights in checkpoint: {sorted(packed)[:4]}")
    return model


def fp8_lm_head_(model: DecoderModel) -> None:
    """Give ``model`` an fp8 LM head (``Fp8Linear``: per-vocabulary-row scales), as LoRAX/TGI
    serve the head under fp8: decode reads the whole head every step (1.05 GB in bf16 for
    Llama-3-8B), so halving its bytes shortens the step.

    An untied head's 16-bit weight is freed. Tied embeddings keep the 16-bit table for the lookup
    (exact embeddings) and the head gets an fp8 copy of it: ``vocab x hidden`` bytes more.
    """
    head = model.embed.weight if model.cfg.tie_word_embeddings else model.lm_head
    assert head is not None
    model.lm_head_quant = Fp8Linear(head)
    model.lm_head = None


def _at_load_quantizer(method: str) -> Callable[[torch.Tensor], nn.Module]:
    """What turns a projection's 16-bit weight into its ``quant`` module for ``method``."""
    if method == "fp8":
        return Fp8Linear
    # Imported only here: bitsandbytes is an optional extra, and this import says how to get it.
    from lorax_engine.quant.bnb_linear import bnb_linear

    return functools.partial(bnb_linear, method)


def _projections(model: DecoderModel) -> list[LoraLinear]:
    return [m for m in model.modules() if isinstance(m, LoraLinear)]
