"""Quantized base models: ``--quantize fp8|gptq|awq|bitsandbytes|bitsandbytes-nf4|bitsandbytes-fp4``
(LoRA adapters stay 16-bit on top)."""

from lorax_engine.quant.spec import QUANTIZE_METHODS, QuantSpec, resolve_quant_spec

__all__ = ["QUANTIZE_METHODS", "QuantSpec", "resolve_quant_spec"]
