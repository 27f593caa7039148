"""Quantized base models: ``--quantize fp8|gptq|awq`` (LoRA adapters stay 16-bit on top)."""

from lorax_engine.quant.spec import QUANTIZE_METHODS, QuantSpec, resolve_quant_spec

__all__ = ["QUANTIZE_METHODS", "QuantSpec", "resolve_quant_spec"]
