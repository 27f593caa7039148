"""bitsandbytes base matmuls: ``--quantize bitsandbytes`` (LLM.int8) and ``bitsandbytes-nf4|fp4``.

Like ``Fp8Linear``, each module is built at load from a projection's 16-bit weight, replaces it
as ``LoraLinear.quant(x, bias)``, and keeps what it computes with as buffers; LoRA stays 16-bit on
top. Quantization and matmuls are bitsandbytes' own: its CUDA kernels on the GPU, its CPU backend
elsewhere (for 4-bit, its dequantize and a plain matmul). The package is the optional extra
``lorax-engine[bitsandbytes]``; importing this module without it raises an ImportError that says
how to install it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
except ImportError as e:
    raise ImportError(
        "--quantize bitsandbytes|bitsandbytes-nf4|bitsandbytes-fp4 needs the bitsandbytes "
        "package: pip install 'lorax-engine[bitsandbytes]'"
    ) from e

# --quantize method -> bitsandbytes' 4-bit data type.
FOUR_BIT_TYPES = {"bitsandbytes-nf4": "nf4", "bitsandbytes-fp4": "fp4"}
# Weights per absmax scale: bitsandbytes' default, and what LoRAX and transformers use.
BLOCKSIZE = 64


class Int8Linear(nn.Module):
    """LLM.int8 without the outlier decomposition: int8 weights, int8 x int8 matmul.

    The weight has one absmax scale per output row; each step's activations are quantized per
    token (row) the same way, multiplied in int32 by bitsandbytes' cuBLASLt kernel and scaled
    back. This is bitsandbytes' ``Linear8bitLt(threshold=0.0)``. The decomposition (threshold
    6.0 in the paper) is left out on purpose: finding the outlier columns reads a data-dependent
    count back to the host every matmul, which CUDA graphs cannot capture. bitsandbytes' int8
    kernels read fp16 activations, so bf16 ones are cast (values past fp16's 65504 would not
    survive; decoder activations stay far below that).
    """

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scale, _ = bnbf.int8_vectorwise_quant(weight.detach().to(torch.float16))
        self.register_buffer("qweight", q)  # [out, in] int8
        self.register_buffer("scale", scale)  # [out] float32: each row's absmax

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The int8 weight scaled back, ``[out, in]`` in ``dtype``."""
        return bnbf.int8_vectorwise_dequant(self.qweight, self.scale).to(dtype)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        xq, x_scale, _ = bnbf.int8_vectorwise_quant(x.to(torch.float16))  # [T, in] int8, [T]
        ops: Any = torch.ops.bitsandbytes
        return ops.int8_scaled_mm.default(  # [T, out]
            xq, self.qweight, x_scale, self.scale, bias=bias, dtype=x.dtype
        )


class FourBitLinear(nn.Module):
    """A 4-bit NF4 or FP4 weight in blocks of 64 values with one float32 absmax each.

    The weight is quantized in the model dtype, which is also the compute dtype. On CUDA
    ``matmul_4bit`` runs bitsandbytes' fused 4-bit GEMV/GEMM or dequantizes and multiplies, by
    shape. Elsewhere the weight is dequantized and multiplied (the CPU path the tests check). The
    absmax values stay float32 rather than double-quantized to 8 bits: that would save 0.37 bits
    per weight but adds a dequantize launch of the absmax values to every matmul.
    """

    qweight: torch.Tensor
    absmax: torch.Tensor
    code: torch.Tensor

    def __init__(self, weight: torch.Tensor, quant_type: str) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, state = bnbf.quantize_4bit(weight.detach(), blocksize=BLOCKSIZE, quant_type=quant_type)
        self.quant_type = quant_type
        self.dtype = weight.dtype
        # Blocks run over the flattened weight and may straddle rows (in_features % 64 != 0).
        self.register_buffer("qweight", q)  # [out * in / 2, 1] uint8: two weights a byte
        self.register_buffer("absmax", state.absmax)  # [ceil(out * in / 64)] float32
        self.register_buffer("code", state.code)  # [16]: the data type's values
        self._states()

    def _states(self) -> None:
        def state(shape: tuple[int, int]) -> Any:
            return bnbf.QuantState(
                absmax=self.absmax,
                shape=torch.Size(shape),
                code=self.code,
                blocksize=BLOCKSIZE,
                quant_type=self.quant_type,
                dtype=self.dtype,
            )

        self.state = state((self.out_features, self.in_features))
        # bitsandbytes' CPU dequantize (0.50) assumes no block straddles a row of ``shape``: it
        # gets such weights wrong. As one row of out * in values every block lies inside it.
        self.flat_state = state((1, self.out_features * self.in_features))

    def _apply(self, fn: Any, recurse: bool = True) -> FourBitLinear:
        # The states refer to the buffers: moving them must re-point the states.
        super()._apply(fn, recurse)
        self._states()
        return self

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """bitsandbytes' dequantization of the weight, ``[out, in]`` in ``dtype``."""
        w = bnbf.dequantize_4bit(self.qweight, self.flat_state)  # [1, out * in]
        return w.view(self.out_features, self.in_features).to(dtype)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not x.is_cuda:
            return F.linear(x, self.dequantized(x.dtype), bias)
        # The transposed view is bitsandbytes' own convention (Linear4bit passes weight.t()).
        return bnb.matmul_4bit(  # pyright: ignore[reportPrivateImportUsage]
            x, self.qweight.t(), self.state, bias=bias
        )  # [T, out]


def bnb_linear(method: str, weight: torch.Tensor) -> Int8Linear | FourBitLinear:
    """The quantized module for ``--quantize method`` made from ``weight`` ``[out, in]``."""
    if method == "bitsandbytes":
        return Int8Linear(weight)
    return FourBitLinear(weight, FOUR_BIT_TYPES[method])
