"""The Triton GEMV on 16-bit (and fp32) weights against the fp32 linear.

Runs on CUDA at Llama-3-8B shapes, or on CPU under ``TRITON_INTERPRET=1`` at small odd shapes
(started by test_interpreter.py in a subprocess).
"""

from __future__ import annotations

import pytest
import torch
from triton_env import DEVICE, INTERPRET, NEEDS_TRITON

from lorax_kernels.dense_gemv.reference import dense_linear_ref

pytestmark = NEEDS_TRITON
# ||y - ref|| / ||ref|| bound against the fp32 linear of the same (rounded) inputs: only y's
# rounding to its dtype (~2^-8 for bf16) and the summation order differ.
REL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}
# Triton's interpreter handles bf16 wrongly (numpy has no bf16): GPU only.
DTYPES = [d for d in REL if not (INTERPRET and d == torch.bfloat16)]


def _check(m: int, k: int, n: int, dtype: torch.dtype, bias: bool, config=None) -> None:
    from lorax_kernels.fp8_gemv.triton import fp8_gemv

    gen = torch.Generator().manual_seed(m * 5 + k + n)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(DEVICE, dtype)  # [N, K]
    x = torch.randn(m, k, generator=gen).to(DEVICE, dtype)
    b = torch.randn(n, generator=gen).to(DEVICE, dtype) if bias else None
    y = fp8_gemv(x, w, None, b, config)
    ref = dense_linear_ref(x.float(), w.float(), None if b is None else b.float())
    assert y.dtype == dtype
    assert y.shape == (m, n)
    err = (y.float() - ref).norm() / ref.norm()
    assert err < REL[dtype], f"relative error {err:.2e}"


def _configs():
    from lorax_kernels.fp8_gemv.triton import Fp8GemvConfig

    # Small tiles so the small shapes split K, leave partial tiles, and take both inner products.
    return [
        Fp8GemvConfig(block_n=16, block_k=32, warps=2, stages=1, waves=1, dot=False),
        Fp8GemvConfig(block_n=16, block_k=32, warps=2, stages=2, waves=1, dot=True),
        None,  # the defaults (the dense one-row tiling for M <= 2)
    ]


@pytest.mark.parametrize("config", range(3), ids=["reduce", "dot", "default"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "n", "bias"), [(1, 72, 40, False), (2, 200, 24, True)])
def test_dense_gemv_small(m: int, k: int, n: int, bias: bool, dtype, config: int) -> None:
    _check(m, k, n, dtype, bias, _configs()[config])


LLAMA3_8B = {
    "qkv": (4096, 6144),
    "o": (4096, 4096),
    "gate_up": (4096, 28672),
    "down": (14336, 4096),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("proj", list(LLAMA3_8B))
def test_dense_gemv_real_shapes(proj: str, m: int, dtype) -> None:
    k, n = LLAMA3_8B[proj]
    _check(m, k, n, dtype, bias=proj == "qkv")


@pytest.mark.gpu
def test_public_dense_gemv_replays_in_a_cuda_graph() -> None:
    """The public op dispatches to Triton, captures into a graph (twice: its counters re-arm
    in-graph) and replays new inputs bit for bit as eager calls compute them."""
    from lorax_kernels.dense_gemv import dense_gemv

    gen = torch.Generator().manual_seed(6)
    w = (torch.randn(4096, 4096, generator=gen) / 64).to(DEVICE, torch.bfloat16)
    x = torch.zeros(1, 4096, device=DEVICE, dtype=torch.bfloat16)
    dense_gemv(x, w)  # compiles and allocates the counters off the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dense_gemv(x, w)
        y = dense_gemv(x, w)
    for seed in (1, 2):
        x.normal_(generator=torch.Generator(device=DEVICE).manual_seed(seed))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, dense_gemv(x, w))
