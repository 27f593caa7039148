"""Triton fp8 GEMV (and the same kernel on 16-bit weights, ``dense_gemv``) and per-token
activation quantization against their fp32 references.

Runs on CUDA at Llama-3-8B shapes, or on CPU under ``TRITON_INTERPRET=1`` at small odd shapes
(started by test_interpreter.py in a subprocess: the variable must precede Triton's import).
"""

from __future__ import annotations

import pytest
import torch
from triton_env import CUDA, DEVICE, INTERPRET, NEEDS_TRITON

from lorax_kernels.dense_gemv.reference import dense_linear_ref
from lorax_kernels.fp8_gemv.reference import FP8, FP8_MAX, fp8_linear_ref, quantize_rows_ref

pytestmark = NEEDS_TRITON
# ||y - ref|| / ||ref|| bound against the fp32 reference on the same fp8 weight: the only
# rounding is x's to its dtype (already in the inputs) and y's to it (~2^-8 for bf16).
REL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}
# Triton's interpreter handles bf16 wrongly (numpy has no bf16): GPU only.
DTYPES = [d for d in REL if not (INTERPRET and d == torch.bfloat16)]


def _weight(n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(n, k, generator=gen) / k**0.5  # [N, K]
    scale = w.abs().amax(dim=1) / FP8_MAX
    return (w / scale[:, None]).to(FP8).to(DEVICE), scale.to(DEVICE)


def _check_gemv(m: int, k: int, n: int, dtype: torch.dtype, bias: bool, config=None) -> None:
    from lorax_kernels.fp8_gemv.triton import fp8_gemv

    gen = torch.Generator().manual_seed(m * 7 + k + n)
    qweight, scale = _weight(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(DEVICE, dtype)
    b = torch.randn(n, generator=gen).to(DEVICE, dtype) if bias else None
    y = fp8_gemv(x, qweight, scale, b, config)
    ref = fp8_linear_ref(x.float(), qweight, scale, None if b is None else b.float())
    assert y.dtype == dtype
    assert y.shape == (m, n)
    assert torch.isfinite(y).all()
    err = (y.float() - ref).norm() / ref.norm()
    assert err < REL[dtype], f"relative error {err:.2e}"


def _configs():
    from lorax_kernels.fp8_gemv.triton import Fp8GemvConfig

    # Small tiles so the small shapes below split K, leave partial tiles, and take both paths.
    return [
        Fp8GemvConfig(block_n=16, block_k=32, warps=2, stages=1, waves=1, dot=False),
        Fp8GemvConfig(block_n=16, block_k=32, warps=2, stages=2, waves=1, dot=True),
        None,  # the defaults (for 16-bit weights at M <= 2, the dense one-row tiling)
    ]


SMALL = [
    # (M, K, N, bias): K and N not multiples of the tiles; M up to the GEMV limit
    (1, 72, 40, False),
    (2, 200, 24, True),
    (3, 48, 17, False),
    (16, 136, 33, True),
]


@pytest.mark.parametrize("config", range(3), ids=["reduce", "dot", "default"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "n", "bias"), SMALL)
def test_fp8_gemv_small(m: int, k: int, n: int, bias: bool, dtype, config: int) -> None:
    _check_gemv(m, k, n, dtype, bias, _configs()[config])


LLAMA3_8B = {
    "qkv": (4096, 6144),
    "o": (4096, 4096),
    "gate_up": (4096, 28672),
    "down": (14336, 4096),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("proj", list(LLAMA3_8B))
def test_fp8_gemv_real_shapes(proj: str, m: int, dtype) -> None:
    k, n = LLAMA3_8B[proj]
    _check_gemv(m, k, n, dtype, bias=proj == "qkv")


def _check_dense(m: int, k: int, n: int, dtype: torch.dtype, bias: bool, config=None) -> None:
    """The kernel without a scale (``dense_gemv``), on weights of x's dtype."""
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


@pytest.mark.parametrize("config", range(3), ids=["reduce", "dot", "default"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "n", "bias"), [(1, 72, 40, False), (2, 200, 24, True)])
def test_dense_gemv_small(m: int, k: int, n: int, bias: bool, dtype, config: int) -> None:
    _check_dense(m, k, n, dtype, bias, _configs()[config])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("proj", list(LLAMA3_8B))
def test_dense_gemv_real_shapes(proj: str, m: int, dtype) -> None:
    k, n = LLAMA3_8B[proj]
    _check_dense(m, k, n, dtype, bias=proj == "qkv")


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


def test_fp8_gemv_split_is_deterministic_and_rearms_its_counters() -> None:
    """Partials are summed in a fixed order (repeated calls agree bit for bit), and every launch
    leaves the shared arrival counters at 0 for the next one."""
    from lorax_kernels.device import split_counters
    from lorax_kernels.fp8_gemv.triton import Fp8GemvConfig, fp8_gemv

    gen = torch.Generator().manual_seed(3)
    k, n = (14336, 4096) if CUDA else (512, 24)
    cfg = Fp8GemvConfig(block_n=16, block_k=32, warps=2, stages=1, waves=4, dot=False)
    qweight, scale = _weight(n, k, gen)
    x = torch.randn(2, k, generator=gen).to(DEVICE, torch.float16)
    first = fp8_gemv(x, qweight, scale, None, None if CUDA else cfg)
    for _ in range(3):
        assert torch.equal(fp8_gemv(x, qweight, scale, None, None if CUDA else cfg), first)
    assert not split_counters(x.device).any()


def test_fp8_gemv_empty_batch() -> None:
    from lorax_kernels.fp8_gemv.triton import fp8_gemv

    qweight, scale = _weight(8, 16, torch.Generator().manual_seed(0))
    x = torch.zeros(0, 16, device=DEVICE)
    assert fp8_gemv(x, qweight, scale, None).shape == (0, 8)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k"), [(1, 40), (5, 3000), (3, 4096)])
def test_quantize_rows(m: int, k: int, dtype: torch.dtype) -> None:
    from lorax_kernels.fp8_gemv.act_quant import quantize_rows

    gen = torch.Generator().manual_seed(m + k)
    x = (torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen) * 10).to(dtype)
    x[0, k // 2] = 300.0  # an outlier token
    if m > 1:
        x[1] = 0.0  # an all-zero token: finite scale, zeros out
    x = x.to(DEVICE)
    xq, x_scale = quantize_rows(x)
    ref_q, ref_scale = quantize_rows_ref(x)
    assert xq.dtype == FP8
    assert x_scale.shape == (m, 1)
    torch.testing.assert_close(x_scale, ref_scale, rtol=0, atol=0)
    same = xq.view(torch.uint8) == ref_q.view(torch.uint8)
    if not CUDA:
        # The interpreter's float -> e4m3 cast rounds ties away from zero, drops a rounding
        # carry into the exponent (126.9 becomes 64, not 128) and truncates subnormals: those
        # values may differ there.
        exact = x.float() / ref_scale
        tie = (xq.float() - exact).abs() == (ref_q.float() - exact).abs()
        mantissa, _ = torch.frexp(ref_q.float())
        same |= tie | (mantissa.abs() == 0.5) | (exact.abs() < 2**-6)
    assert same.all()


@pytest.mark.gpu
def test_public_fp8_ops_replay_in_a_cuda_graph() -> None:
    """The public ops dispatch to Triton, capture into a graph (the GEMV twice: its counters
    re-arm in-graph) and replay new inputs bit for bit as eager calls compute them."""
    from lorax_kernels.fp8_gemv import fp8_gemv, quantize_rows

    gen = torch.Generator().manual_seed(4)
    k, n = 4096, 6144
    qweight, scale = _weight(n, k, gen)
    bias = torch.randn(n, generator=gen).to(DEVICE, torch.bfloat16)
    x = torch.zeros(4, k, device=DEVICE, dtype=torch.bfloat16)
    x_big = torch.zeros(64, k, device=DEVICE, dtype=torch.bfloat16)

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fp8_gemv(x, qweight, scale, bias)
        xq, x_scale = quantize_rows(x_big)
        return fp8_gemv(x, qweight, scale, bias), xq, x_scale

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles, allocates the counters) off the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, xq, x_scale = step()
    for seed in (1, 2, 3):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        x.normal_(generator=g)
        x_big.normal_(generator=g)
        graph.replay()
        torch.cuda.synchronize()
        y_eager = fp8_gemv(x, qweight, scale, bias)
        xq_eager, x_scale_eager = quantize_rows(x_big)
        assert torch.equal(y, y_eager)
        assert torch.equal(xq.view(torch.uint8), xq_eager.view(torch.uint8))
        assert torch.equal(x_scale, x_scale_eager)
        ref = fp8_linear_ref(x.float(), qweight, scale, bias.float())
        assert (y.float() - ref).norm() / ref.norm() < REL[torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("weight_dtype", [FP8, torch.bfloat16], ids=str)
def test_pdl_chain_waits_for_each_previous_output(weight_dtype) -> None:
    """GEMVs launched with PDL, each reading the previous one's output (with a plain PyTorch add
    between some of them), captured in a CUDA graph: every output is bit-identical to the same
    chain launched plainly, so no kernel read its input early."""
    from lorax_kernels.fp8_gemv.triton import fp8_gemv
    from lorax_kernels.pdl import pdl_supported

    if not pdl_supported(torch.device(DEVICE)):
        pytest.skip("programmatic dependent launch needs a Hopper or later GPU")
    gen = torch.Generator().manual_seed(5)
    weights: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for _ in range(6):
        q, s = _weight(4096, 4096, gen)
        if weight_dtype == FP8:
            weights.append((q, s))
        else:
            weights.append(((q.float() * s[:, None]).to(weight_dtype), None))
    x = torch.zeros(1, 4096, device=DEVICE, dtype=torch.bfloat16)

    def chain(pdl: bool) -> list[torch.Tensor]:
        outs, h = [], x
        for i, (w, s) in enumerate(weights):
            h = fp8_gemv(h, w, s, None, pdl=pdl)
            if i % 2:
                h = h + x  # a kernel launched without PDL inside the chain
            outs.append(h)
        return outs

    chain(True)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = chain(True)
    for seed in (1, 2):
        x.normal_(generator=torch.Generator(device=DEVICE).manual_seed(seed))
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(captured, chain(False), strict=True):
            assert torch.equal(got, want)
