"""Triton w4a16 GEMM against the fp32 dequantize reference.

Runs on CUDA at real shapes, or on CPU under ``TRITON_INTERPRET=1`` at small irregular shapes
(started by test_w4a16_interpreter.py in a subprocess: the variable must precede Triton's import).
"""

from __future__ import annotations

import os

import pytest
import torch

from lorax_kernels.w4a16 import pack_rows
from lorax_kernels.w4a16.reference import w4a16_matmul_ref

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="Triton needs CUDA or TRITON_INTERPRET=1"
)
# (atol, rtol) against the fp32 reference on the same inputs. fp16 rounds the dequantized weight
# to fp16 before the dot, as the GPU path does.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 1e-2), torch.bfloat16: (1e-1, 3e-2)}
# Triton 3.9's interpreter computes tl.dot on bf16 wrongly (numpy has no bf16): GPU only.
DTYPES = [d for d in TOL if not (INTERPRET and d == torch.bfloat16)]


def _case(m: int, k: int, n: int, group: int, act_order: bool, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    num_groups = -(-k // group)
    q = torch.randint(0, 16, (k, n), generator=gen, dtype=torch.int32)
    g_idx = (torch.arange(k) // group).to(torch.int32)
    if act_order:  # GPTQ's desc_act: groups follow a permutation of the input rows
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    scales = (torch.rand(num_groups, n, generator=gen) + 0.5) / (8 * k**0.5)
    zeros = torch.randint(0, 16, (num_groups, n), generator=gen).float()
    x = torch.randn(m, k, generator=gen)

    def dev(t: torch.Tensor) -> torch.Tensor:
        return t.to(DEVICE, dtype if t.is_floating_point() else t.dtype)

    return dev(x), pack_rows(q).to(DEVICE), dev(scales), dev(zeros), g_idx.to(DEVICE)


def _check(m: int, k: int, n: int, group: int, act_order: bool, dtype: torch.dtype) -> None:
    from lorax_kernels.w4a16.triton import w4a16_matmul

    x, qweight, scales, zeros, g_idx = _case(m, k, n, group, act_order, dtype, m + k + n)
    y = w4a16_matmul(x, qweight, scales, zeros, g_idx)
    ref = w4a16_matmul_ref(x.float(), qweight, scales.float(), zeros.float(), g_idx)
    assert y.dtype == dtype
    assert y.shape == (m, n)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(y.float(), ref, atol=atol, rtol=rtol)


SMALL = [
    # (M, K, N, group size, act-order): M = 1 is decode; K, N not multiples of the tiles
    (1, 64, 40, 32, False),
    (3, 72, 24, 8, True),
    (17, 48, 72, 48, False),  # a group spanning tiles, K not a power of two
    (40, 96, 16, 96, True),  # one group (group_size -1), act-order permutation
    (2, 1024, 40, 128, True),  # decode GEMV: K split in 16, the last program sums the partials
    (16, 328, 24, 8, False),  # split in 6, the last range short; 16 rows, the GEMV limit
]
LARGE = [
    (1, 4096, 4096, 128, False),
    (16, 4096, 4096, 128, True),
    (3, 14336, 4096, 128, False),
    (64, 4096, 14336, 128, True),
    (300, 14336, 4096, 128, False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "n", "group", "act_order"), SMALL)
def test_w4a16_small(m: int, k: int, n: int, group: int, act_order: bool, dtype) -> None:
    _check(m, k, n, group, act_order, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "n", "group", "act_order"), LARGE)
def test_w4a16_real_shapes(m: int, k: int, n: int, group: int, act_order: bool, dtype) -> None:
    _check(m, k, n, group, act_order, dtype)


def test_w4a16_decode_split_is_deterministic() -> None:
    """The split-K partials are summed in a fixed order: repeated calls agree bit for bit."""
    from lorax_kernels.w4a16.triton import w4a16_matmul

    dtype = torch.bfloat16 if CUDA else torch.float16
    k, n = (14336, 4096) if CUDA else (512, 24)
    x, qweight, scales, zeros, g_idx = _case(4, k, n, 128, True, dtype, 1)
    first = w4a16_matmul(x, qweight, scales, zeros, g_idx)
    for _ in range(3):
        assert torch.equal(w4a16_matmul(x, qweight, scales, zeros, g_idx), first)


def test_w4a16_empty_batch() -> None:
    from lorax_kernels.w4a16.triton import w4a16_matmul

    x, qweight, scales, zeros, g_idx = _case(1, 16, 8, 8, False, torch.float32, 0)
    assert w4a16_matmul(x[:0], qweight, scales, zeros, g_idx).shape == (0, 8)
