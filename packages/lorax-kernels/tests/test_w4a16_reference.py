"""The w4a16 reference: packing round-trips, dequantization by hand, and the custom op on CPU."""

from __future__ import annotations

import pytest
import torch

from lorax_kernels.w4a16 import dequantize_w4, pack_rows, unpack_rows, w4a16_matmul


def test_pack_unpack_round_trip_uses_gptq_bit_order() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (24, 5), generator=gen, dtype=torch.int32)
    packed = pack_rows(q)  # [3, 5]
    assert packed.dtype == torch.int32
    assert packed.shape == (3, 5)
    assert torch.equal(unpack_rows(packed), q)
    # Row 8 * i + j sits in bits 4j..4j+3 of word i (row 15 = word 1, top nibble, the sign bit).
    word = int(packed[1, 2]) & 0xFFFFFFFF
    assert (word >> 28) & 0xF == int(q[15, 2])
    assert word & 0xF == int(q[8, 2])


def test_dequantize_matches_the_formula_elementwise() -> None:
    gen = torch.Generator().manual_seed(1)
    k, n = 24, 3
    q = torch.randint(0, 16, (k, n), generator=gen, dtype=torch.int32)
    scales = torch.rand(3, n, generator=gen) + 0.1
    zeros = torch.randint(0, 16, (3, n), generator=gen).float()
    w = dequantize_w4(pack_rows(q), scales, zeros, 8)
    for r in range(k):
        for c in range(n):
            g = r // 8
            expect = (float(q[r, c]) - float(zeros[g, c])) * float(scales[g, c])
            assert w[r, c].item() == pytest.approx(expect, rel=1e-6)


def test_custom_op_on_cpu_is_the_reference_and_validates() -> None:
    gen = torch.Generator().manual_seed(2)
    k, n, m = 32, 7, 5
    q = torch.randint(0, 16, (k, n), generator=gen, dtype=torch.int32)
    scales = torch.rand(4, n, generator=gen)
    zeros = torch.full((4, n), 8.0)
    perm = torch.randperm(k, generator=gen).to(torch.int32)
    x = torch.randn(m, k, generator=gen)
    w = dequantize_w4(pack_rows(q), scales, zeros, 8)
    torch.testing.assert_close(w4a16_matmul(x, pack_rows(q), scales, zeros, None, 8), x @ w)
    # Row k of the weight multiplies x's column perm[k].
    y = w4a16_matmul(x, pack_rows(q), scales, zeros, perm, 8)
    torch.testing.assert_close(y, x[:, perm.long()] @ w)
    with pytest.raises(ValueError, match="perm"):
        w4a16_matmul(x, pack_rows(q), scales, zeros, perm.long(), 8)
    with pytest.raises(ValueError, match="does not match"):
        w4a16_matmul(x[:, :16], pack_rows(q), scales, zeros, None, 8)
    with pytest.raises(ValueError, match="expected"):
        w4a16_matmul(x, pack_rows(q), scales, zeros, None, 16)
    with pytest.raises(ValueError, match="multiple of 8"):
        w4a16_matmul(x, pack_rows(q), scales, zeros, None, 12)
