"""The 16-bit linear of the model's layers and lm_head: cuBLAS, except at one or two rows on a
GPU that launches with PDL.

Where ``lorax_kernels.pdl`` is in force (Hopper and later, by default), every kernel of a decode
step is PDL-launched, which cuBLAS's are not; so one- and two-row products on 16-bit weights go
to ``lorax_kernels.dense_gemv`` (the fp8 GEMV's kernel without a scale), and a batch-1 step is one
chain of our kernels (H200, run 6: 4.43 ms a Llama-3-8B step against 4.65 with cuBLAS and plain
launches). Otherwise, and for more rows or fp32 weights, ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorax_kernels import pdl
from lorax_kernels.dense_gemv import dense_gemv

# Rows the GEMV takes under PDL (its tuned tiling is for one or two).
DENSE_DECODE_MAX_ROWS = 2


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight^T + bias``: ``[T, in] -> [T, out]``."""
    if (
        x.shape[0] <= DENSE_DECODE_MAX_ROWS
        and weight.dtype in (torch.bfloat16, torch.float16)
        and pdl.launch_options(x.device)[0]
    ):
        return dense_gemv(x, weight, bias)
    return F.linear(x, weight, bias)
