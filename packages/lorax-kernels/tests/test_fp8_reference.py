"""The fp8 ops' references and their custom ops on CPU (where they are the references)."""

from __future__ import annotations

import pytest
import torch

from lorax_kernels.fp8_gemv import FP8, FP8_MAX, fp8_gemv, quantize_rows


def test_quantize_rows_scales_each_token_to_the_fp8_range() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [300.0, 1.0, -1.0]])
    xq, x_scale = quantize_rows(x)
    assert xq.dtype == FP8
    torch.testing.assert_close(x_scale[:, 0], torch.tensor([2.0, 1e-12, 300.0]) / FP8_MAX)
    assert xq.float().abs().amax(dim=1).tolist() == [FP8_MAX, 0.0, FP8_MAX]
    # e4m3 keeps 3 mantissa bits: every value within half a step (2^-4 relative) of x.
    back = xq.float() * x_scale
    assert ((back - x).abs() <= x.abs() / 16 + 1e-6).all()


def test_fp8_gemv_on_cpu_is_the_dequantized_matmul_and_validates() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 24, generator=gen)
    scale = w.abs().amax(dim=1) / FP8_MAX
    qweight = (w / scale[:, None]).to(FP8)
    x, bias = torch.randn(3, 24, generator=gen), torch.randn(5, generator=gen)
    y = fp8_gemv(x, qweight, scale, bias)
    torch.testing.assert_close(y, x @ (qweight.float() * scale[:, None]).T + bias)
    with pytest.raises(ValueError, match="does not match"):
        fp8_gemv(x[:, :16], qweight, scale)
    with pytest.raises(ValueError, match="up to 16 rows"):
        fp8_gemv(torch.randn(17, 24), qweight, scale)
    with pytest.raises(ValueError, match="scale must be float32"):
        fp8_gemv(x, qweight, scale.half())
