"""Triton stream-K GEMM (``lorax_kernels.dense_gemm.streamk``) against the fp32 reference.

Runs on CUDA at real shapes, or on CPU under ``TRITON_INTERPRET=1`` at small irregular shapes
(test_interpreter.py starts it in a subprocess). Small grids (``programs``) force each schedule:
data-parallel waves only, stream-K only, both, and tiles shared by three or more programs.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from triton_env import CUDA, DEVICE, INTERPRET, NEEDS_TRITON

from lorax_kernels.dense_gemm.streamk import DEFAULT_CONFIG, StreamKConfig, streamk_gemm
from lorax_kernels.dense_gemv.reference import dense_linear_ref
from lorax_kernels.device import split_counters

pytestmark = NEEDS_TRITON
# ‖y - ref‖ / ‖ref‖ against the fp32 reference on the same 16-bit inputs: the kernel sums in
# fp32, so what is left is the output's rounding.
REL_TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
# The interpreter computes tl.dot on bf16 wrongly (numpy has no bf16): GPU only.
DTYPES = [d for d in REL_TOL if not (INTERPRET and d == torch.bfloat16)]
SMALL = StreamKConfig(block_m=16, block_n=32, block_k=16, warps=4, stages=2)
# TMA tilings on the GPU (elsewhere the kernel takes the pointer path for them).
TMAS = [False, True] if CUDA else [False]


def _check(m: int, n: int, k: int, dtype: torch.dtype, bias: bool, **kw) -> torch.Tensor:
    gen = torch.Generator(DEVICE).manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=gen, device=DEVICE).to(dtype)
    w = (torch.randn(n, k, generator=gen, device=DEVICE) / k**0.5).to(dtype)
    b = torch.randn(n, generator=gen, device=DEVICE).to(dtype) if bias else None
    y = streamk_gemm(x, w, b, **kw)
    ref = dense_linear_ref(x, w, b).float()
    err = ((y.float() - ref).norm() / ref.norm()).item()
    assert err < REL_TOL[dtype], f"relative error {err:.2e} at {m}x{n}x{k}"
    assert not split_counters(x.device).any(), "a tile counter was left armed"
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("m", "n", "k", "programs"),
    [
        (32, 64, 64, 4),  # 4 tiles on 4 programs: one data-parallel wave, no stream-K
        (16, 96, 48, 5),  # 3 tiles on 5 programs: stream-K only
        (40, 96, 80, 5),  # 9 tiles: one wave, then 4 tiles' steps dealt to 5 programs
        (33, 70, 40, 3),  # ragged M, N and K (40 is not a multiple of 16)
        (17, 160, 160, 2),  # 10 tiles on 2 programs: 5 waves, nothing left over
        (16, 32, 256, 7),  # one tile of 16 steps over 7 programs: shared by all of them
        (1, 64, 32, 3),  # one row
    ],
)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tma", TMAS)
def test_streamk_small(m: int, n: int, k: int, programs: int, dtype, bias: bool, tma: bool) -> None:
    _check(m, n, k, dtype, bias, config=replace(SMALL, tma=tma), programs=programs)


def test_streamk_is_repeatable() -> None:
    """The last program of a shared tile sums the partials in program order: the same bits
    every launch, whichever program arrives last."""
    a = _check(48, 96, 112, torch.float16, True, config=SMALL, programs=5)
    b = _check(48, 96, 112, torch.float16, True, config=SMALL, programs=5)
    assert torch.equal(a, b)


def test_streamk_empty_batch() -> None:
    x = torch.empty(0, 32, device=DEVICE, dtype=torch.float16)
    w = torch.randn(64, 32, device=DEVICE, dtype=torch.float16)
    assert streamk_gemm(x, w, None, config=SMALL).shape == (0, 64)


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="power of two"):
        StreamKConfig(block_m=48, block_n=64, block_k=32, warps=4, stages=2)
    with pytest.raises(ValueError, match=">= 16"):
        StreamKConfig(block_m=8, block_n=64, block_k=32, warps=4, stages=2)
    with pytest.raises(ValueError, match="stages"):
        StreamKConfig(block_m=16, block_n=64, block_k=32, warps=4, stages=0)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="real shapes need the GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [64, 200, 256])
@pytest.mark.parametrize(("n", "k"), [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)])
@pytest.mark.parametrize("tma", [False, True])
def test_streamk_real_shapes(m: int, n: int, k: int, dtype, tma: bool) -> None:
    """The Llama-3-8B projections (qkv, o, gate_up, down) at decode batch sizes, on the device's
    own grid, with the default tiles loaded both ways."""
    _check(m, n, k, dtype, bias=n == 6144, config=replace(DEFAULT_CONFIG, tma=tma))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="CUDA graphs need the GPU")
def test_streamk_replays_in_a_cuda_graph() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(256, 4096, generator=gen).cuda().bfloat16()
    w = (torch.randn(28672, 4096, generator=gen) / 64).cuda().bfloat16()
    streamk_gemm(x, w, None)  # compiles and allocates the counters outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = streamk_gemm(x, w, None)
    for _ in range(2):
        x.copy_(torch.randn(256, 4096, generator=gen).cuda().bfloat16())
        graph.replay()
        ref = dense_linear_ref(x, w, None).float()
        assert ((y.float() - ref).norm() / ref.norm()).item() < REL_TOL[torch.bfloat16]
