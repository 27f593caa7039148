"""The quantized layers' routes: every path a batch size can take computes the stored weight.

On CPU both layers compute with the dequantized weight; on CUDA (``gpu``) decode batches take the
fp8 GEMV / w4a16 split-K kernels and larger ones fused quant + ``_scaled_mm`` / the GEMM tiles.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorax_engine.quant.formats import dequantize, gptq_to_w4, pack_cols
from lorax_engine.quant.linear import Fp8Linear, W4Linear
from lorax_engine.quant.quantizer import quantize_rtn
from lorax_engine.quant.spec import QuantSpec
from lorax_kernels.w4a16 import pack_rows


def _w4_act_order(n: int, k: int, group: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) / k**0.5
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[torch.randperm(k, generator=gen)] = torch.arange(k, dtype=torch.int32) // group
    q, scales, zeros, g_idx = quantize_rtn(w, group, g_idx)
    tensors = {
        "qweight": pack_rows(q),
        "qzeros": pack_cols(zeros - 1),
        "scales": scales,
        "g_idx": g_idx,
    }
    spec = QuantSpec("gptq", bits=4, group_size=group, desc_act=True, zeros_minus_one=True)
    return gptq_to_w4("l", tensors, spec)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm())


@pytest.mark.parametrize("m", [1, 16, 17, 40])
def test_layers_on_cpu_compute_their_stored_weight(m: int) -> None:
    gen = torch.Generator().manual_seed(m)
    fp8 = Fp8Linear(torch.randn(48, 64, generator=gen))
    x = torch.randn(m, 64, generator=gen)
    bias = torch.randn(48, generator=gen)
    torch.testing.assert_close(fp8(x, bias), x @ fp8.dequantized(torch.float32).T + bias)
    w4 = _w4_act_order(40, 128, 32, seed=m)
    layer = W4Linear(w4, torch.float32, torch.device("cpu"))
    assert layer.perm is not None
    torch.testing.assert_close(layer(x.repeat(1, 2), None), x.repeat(1, 2) @ dequantize(w4).T)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3, 16, 17, 64])
def test_layers_on_cuda_route_by_batch_size(m: int) -> None:
    """Llama-3-8B q|k|v shape in bf16: the GEMV (<= 16 rows) and the tensor-core path (> 16)
    both stay within bf16 / fp8-activation rounding of the stored weight's matmul."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(m)
    fp8 = Fp8Linear(torch.randn(6144, 4096, generator=gen).to(dev)).to(dev)
    x = torch.randn(m, 4096, generator=gen).to(dev, torch.bfloat16)
    bias = torch.randn(6144, generator=gen).to(dev, torch.bfloat16)
    ref = F.linear(x.float(), fp8.dequantized(torch.float32), bias.float())
    # The GEMV keeps x in bf16 (output rounding only); _scaled_mm also rounds x to e4m3.
    assert _rel_err(fp8(x, bias), ref) < (8e-3 if m <= 16 else 5e-2)
    w4 = _w4_act_order(1024, 4096, 128, seed=m)
    layer = W4Linear(w4, torch.bfloat16, dev)
    ref = x.float() @ dequantize(w4).to(dev).T
    assert _rel_err(layer(x, None), ref) < 2e-2
