"""Quantized base matmuls that replace a ``LoraLinear``'s 16-bit weight (LoRA stays 16-bit on top),
and under fp8 the LM head's (``DecoderModel.lm_head_quant``).

Each is a module ``quant(x, bias) -> x W^T + bias`` holding its weight as buffers, so the model
moves and CUDA-graphs as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorax_engine.quant.formats import W4Weight
from lorax_kernels.fp8_gemv import FP8, GEMV_MAX_ROWS, fp8_gemv, fp8_scale, quantize_rows
from lorax_kernels.fp8_gemv.reference import MIN_ABSMAX
from lorax_kernels.w4a16 import w4a16_matmul


class W4Linear(nn.Module):
    """A GPTQ/AWQ 4-bit weight served through ``lorax_kernels.w4a16`` (Triton on CUDA)."""

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    perm: torch.Tensor | None

    def __init__(self, w: W4Weight, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.in_features, self.out_features = w.in_features, w.out_features
        self.group_size = w.group_size
        self.register_buffer("qweight", w.qweight.to(device, torch.int32).contiguous())
        # Zero points are small integers (0..16), exact in every float dtype.
        self.register_buffer("scales", w.scales.to(device, dtype).contiguous())
        self.register_buffer("zeros", w.zeros.to(device, dtype).contiguous())
        # Act-order: the input column each (group-sorted) weight row multiplies.
        perm = None if w.perm is None else w.perm.to(device, torch.int32).contiguous()
        self.register_buffer("perm", perm)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = w4a16_matmul(x, self.qweight, self.scales, self.zeros, self.perm, self.group_size)
        return y if bias is None else y + bias  # [T, out]


class Fp8Linear(nn.Module):
    """A weight quantized at load to float8 e4m3 with one float32 scale per output channel.

    On CUDA, decode batches (up to ``GEMV_MAX_ROWS`` tokens) read the fp8 weight through a Triton
    GEMV (weight-only: activations stay 16-bit; one launch). Larger batches with bf16 activations
    and 16-aligned shapes run on fp8 tensor cores (``torch._scaled_mm``, row-wise scales) after
    one fused launch quantizes the activations per token. Elsewhere the weight is dequantized to
    the activation dtype (the CPU path the tests check).
    """

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().float()  # [out, in]
        self.out_features, self.in_features = w.shape
        scale = fp8_scale(w.abs().amax(dim=1).clamp(min=MIN_ABSMAX))  # [out]
        self.register_buffer("qweight", (w / scale[:, None]).to(FP8))
        self.register_buffer("scale", scale)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight this layer computes with, ``[out, in]`` in ``dtype``."""
        return (self.qweight.float() * self.scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.is_cuda and x.shape[0] <= GEMV_MAX_ROWS:
            return fp8_gemv(x, self.qweight, self.scale, bias)  # [T, out]
        if self._tensor_core_ok(x):
            # Per-token scales keep one outlier token from crushing the others' precision.
            xq, x_scale = quantize_rows(x)  # [T, in] e4m3, [T, 1] float32
            return torch._scaled_mm(  # pyright: ignore[reportPrivateImportUsage]
                xq,
                self.qweight.t(),  # column-major [in, out], as _scaled_mm wants
                scale_a=x_scale,
                scale_b=self.scale.view(1, -1),  # [1, out]
                bias=bias,
                out_dtype=x.dtype,
            )
        return F.linear(x, self.dequantized(x.dtype), bias)

    def _tensor_core_ok(self, x: torch.Tensor) -> bool:
        return (
            x.is_cuda
            and x.dtype == torch.bfloat16
            and self.in_features % 16 == 0
            and self.out_features % 16 == 0
            and torch.cuda.get_device_capability(x.device) >= (8, 9)
        )
