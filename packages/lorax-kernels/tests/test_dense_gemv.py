"""``lorax_kernels.dense_gemv`` on the CPU (where it is the reference): the fp32 linear, its
argument checks, and the custom op's registration."""

from __future__ import annotations

import pytest
import torch

from lorax_kernels.dense_gemv import dense_gemv


def test_is_the_linear_in_float32_and_validates() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 24, generator=gen)
    x, bias = torch.randn(2, 24, generator=gen), torch.randn(5, generator=gen)
    torch.testing.assert_close(dense_gemv(x, w, bias), x @ w.T + bias)
    half = dense_gemv(x.half(), w.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(
        half.float(), x.half().float() @ w.half().float().T, rtol=2e-3, atol=2e-3
    )
    with pytest.raises(ValueError, match="does not match"):
        dense_gemv(x[:, :16], w)
    with pytest.raises(ValueError, match="up to 16 rows"):
        dense_gemv(torch.randn(17, 24), w)
    with pytest.raises(ValueError, match="in x's dtype"):
        dense_gemv(x, w.half())
    with pytest.raises(ValueError, match="row-major"):
        dense_gemv(x, torch.randn(24, 5).T)
    with pytest.raises(ValueError, match="bias must be"):
        dense_gemv(x, w, torch.zeros(4))


def test_custom_op_passes_opcheck() -> None:
    x, w, b = torch.randn(2, 24), torch.randn(5, 24), torch.randn(5)
    torch.library.opcheck(torch.ops.lorax_kernels.dense_gemv, (x, w, b))
    torch.library.opcheck(torch.ops.lorax_kernels.dense_gemv, (x, w, None))
