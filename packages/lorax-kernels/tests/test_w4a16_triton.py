"""Triton w4a16 GEMM against the fp32 dequantize reference.

Runs on CUDA at real shapes, or on CPU under ``TRITON_INTERPRET=1`` at small irregular shapes
(started by test_w4a16_interpreter.py in a subprocess: the variable must precede Triton's import).
"""

from __future__ import annotations

import pytest
import torch
from triton_env import CUDA, DEVICE, INTERPRET, NEEDS_TRITON

from lorax_kernels.w4a16 import pack_rows
from lorax_kernels.w4a16.reference import w4a16_matmul_ref

pytestmark = NEEDS_TRITON
# (atol, rtol) against the fp32 reference on the same inputs. fp16 rounds the dequantized weight
# to fp16 before the dot, as the GPU path does.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 1e-2), torch.bfloat16: (1e-1, 3e-2)}
# Triton 3.9's interpreter computes tl.dot on bf16 wrongly (numpy has no bf16): GPU only.
DTYPES = [d for d in TOL if not (INTERPRET and d == torch.bfloat16)]


def _case(m: int, k: int, n: int, group: int, act_order: bool, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    num_groups = -(-k // group)
    q = torch.randint(0, 16, (k, n), generator=gen, dtype=torch.int32)
    perm = None
    if act_order:  # GPTQ's desc_act, sorted by group at load: x's columns in a permuted order
        perm = torch.randperm(k, generator=gen).to(torch.int32).to(DEVICE)
    scales = (torch.rand(num_groups, n, generator=gen) + 0.5) / (8 * k**0.5)
    zeros = torch.randint(0, 16, (num_groups, n), generator=gen).float()
    x = torch.randn(m, k, generator=gen)

    def dev(t: torch.Tensor) -> torch.Tensor:
        return t.to(DEVICE, dtype if t.is_floating_point() else t.dtype)

    return dev(x), pack_rows(q).to(DEVICE), dev(scales), dev(zeros), perm


def _check(
    m: int, k: int, n: int, group: int, act_order: bool, dtype: torch.dtype, config=None
) -> None:
    from lorax_kernels.w4a16.triton import w4a16_matmul

    x, qweight, scales, zeros, perm = _case(m, k, n, group, act_order, dtype, m + k + n)
    y = w4a16_matmul(x, qweight, scales, zeros, perm, group, config)
    ref = w4a16_matmul_ref(x.float(), qweight, scales.float(), zeros.float(), perm, group)
    assert y.dtype == dtype
    assert y.shape == (m, n)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(y.float(), ref, atol=atol, rtol=rtol)


SMALL = [
    # (M, K, N, group size, act-order): M = 1 is decode; K, N not multiples of the tiles
    (1, 64, 40, 32, False),
    (3, 72, 24, 8, True),  # group 8: no 16-row step fits, one scale and zero per row
    (17, 48, 72, 48, False),  # group 48: 16-row steps, K not a power of two; a 32-row tile
    (40, 96, 16, 96, True),  # one group (group_size -1), act-order permutation
    (2, 1024, 40, 128, True),  # decode GEMV: K split, the last program sums the partials
    (16, 328, 24, 8, False),  # split, the last range short; 16 rows, the most gathering x in-tile
    (5, 200, 40, 64, True),  # the last group short (200 = 3 * 64 + 8)
    (1, 240, 24, 24, False),  # group 24: per-row groups with 64-row steps
    (33, 160, 24, 32, True),  # K split over a 64-row tile, one group per 32-row step
    (64, 1024, 40, 128, False),  # split, 64 rows: the most in one split tile
    (70, 160, 24, 32, True),  # prefill tiles: two row tiles, K whole
]
# The few-rows kernel: groups of 32, 64, 128 inputs (an epilogue per group), 96 (three per group)
# and one over all of K, act-order, K split, N not a multiple of its 32-column strips; one row,
# part of a token group, whole groups and a last short one.
FEW_ROWS = [
    (1, 64, 48, 32, False),
    (1, 1024, 48, 128, True),  # K split, the last program sums the partials
    (2, 192, 80, 64, True),
    (3, 96, 16, 96, True),
    (8, 256, 32, 256, False),  # one group, two 128-input epilogues
    (11, 1024, 48, 128, False),  # two token groups, K split
    (32, 160, 16, 32, True),  # the most rows it takes
]
# bf16 runs in the interpreter here: the few-rows kernel has no tl.dot there.
FEW_ROWS_DTYPES = [torch.float16, torch.bfloat16]
LARGE = [
    (1, 4096, 4096, 128, False),
    (16, 4096, 4096, 128, True),
    (3, 14336, 4096, 128, False),
    (64, 4096, 14336, 128, True),
    (300, 14336, 4096, 128, False),
]


def _few_rows(warps: int = 2, waves: int = 4):
    """A tiling of the few-rows kernel; imported here, as Triton must follow TRITON_INTERPRET."""
    from lorax_kernels.w4a16.few_rows import FewRowsConfig

    return FewRowsConfig(warps=warps, waves=waves)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "n", "group", "act_order"), SMALL)
def test_w4a16_small(m: int, k: int, n: int, group: int, act_order: bool, dtype) -> None:
    _check(m, k, n, group, act_order, dtype)


@pytest.mark.parametrize("dtype", FEW_ROWS_DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "n", "group", "act_order"), FEW_ROWS)
def test_w4a16_small_few_rows(m: int, k: int, n: int, group: int, act_order: bool, dtype) -> None:
    _check(m, k, n, group, act_order, dtype, _few_rows())


@pytest.mark.parametrize("few_rows", [False, True])
def test_w4a16_small_tiles_split_more(few_rows: bool) -> None:
    """Small tiles and many waves: several column tiles, each K split many ways."""
    from lorax_kernels.w4a16.triton import W4Config

    cfg = W4Config(block_n=16, block_k=32, warps=2, stages=1, waves=8)
    _check(3, 512, 48, 64, True, torch.float16, _few_rows(1, 8) if few_rows else cfg)


@pytest.mark.parametrize(
    ("m", "k", "n", "group", "dtype", "match"),
    [
        (33, 64, 32, 32, torch.float16, "got 33 rows"),
        (1, 64, 32, 32, torch.float32, "bf16/fp16"),
        (1, 72, 32, 8, torch.float16, "K 72, N 32, group 8"),
        (1, 64, 40, 32, torch.float16, "K 64, N 40, group 32"),
    ],
)
def test_w4a16_few_rows_refuses_what_it_does_not_serve(
    m: int, k: int, n: int, group: int, dtype: torch.dtype, match: str
) -> None:
    """A few-rows tiling asked for on more rows, fp32, 8-input groups or 40 outputs is refused,
    not rerouted; by default those shapes take the tl.dot tiling (test_w4a16_small)."""
    from lorax_kernels.w4a16.triton import w4a16_matmul

    x, qweight, scales, zeros, perm = _case(m, k, n, group, False, dtype, 0)
    with pytest.raises(ValueError, match=match):
        w4a16_matmul(x, qweight, scales, zeros, perm, group, _few_rows())


@pytest.mark.parametrize("m", [1, 3])
def test_w4a16_few_rows_unaligned_x(m: int) -> None:
    """x at an offset that is not 16-byte aligned (a column slice) is served all the same."""
    from lorax_kernels.w4a16.triton import w4a16_matmul

    x, qweight, scales, zeros, perm = _case(m, 64, 32, 32, True, torch.float16, 3)
    wider = torch.zeros(m, 65, device=x.device, dtype=x.dtype)
    wider[:, 1:] = x
    y = w4a16_matmul(wider[:, 1:], qweight, scales, zeros, perm, 32, _few_rows())
    torch.testing.assert_close(y, w4a16_matmul(x, qweight, scales, zeros, perm, 32, _few_rows()))


def test_w4a16_configs_validate() -> None:
    from lorax_kernels.w4a16.few_rows import FewRowsConfig
    from lorax_kernels.w4a16.triton import W4Config

    with pytest.raises(ValueError, match="need block_n >= 16"):
        W4Config(block_n=8, block_k=128, warps=4, stages=3, waves=4)
    with pytest.raises(ValueError, match="warps must be a power of two"):
        FewRowsConfig(warps=3, waves=4)
    with pytest.raises(ValueError, match="waves must be >= 1"):
        FewRowsConfig(warps=2, waves=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "n", "group", "act_order"), LARGE)
def test_w4a16_real_shapes(m: int, k: int, n: int, group: int, act_order: bool, dtype) -> None:
    _check(m, k, n, group, act_order, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FEW_ROWS_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("m", "k", "n", "group", "act_order"),
    [
        (1, 4096, 4096, 128, False),
        (1, 14336, 4096, 128, True),
        (1, 4096, 28672, 128, True),
        (5, 4096, 6144, 32, False),
        (8, 4096, 4096, 4096, True),  # one group over K (GPTQ's group size -1)
        (13, 14336, 4096, 128, True),
        (32, 4096, 28672, 128, False),
    ],
)
def test_w4a16_real_shapes_few_rows(
    m: int, k: int, n: int, group: int, act_order: bool, dtype
) -> None:
    _check(m, k, n, group, act_order, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 10])
@pytest.mark.parametrize(("warps", "waves"), [(1, 16), (2, 16), (8, 4)])
def test_w4a16_few_rows_tilings_at_real_shapes(m: int, warps: int, waves: int) -> None:
    """Every warp count lays the mma lanes out alike, act-order's gathered x included."""
    _check(m, 4096, 6144, 128, True, torch.bfloat16, _few_rows(warps, waves))


@pytest.mark.parametrize("few_rows", [False, True])
def test_w4a16_decode_split_is_deterministic(few_rows: bool) -> None:
    """The split-K partials are summed in a fixed order: repeated calls agree bit for bit."""
    from lorax_kernels.device import split_counters
    from lorax_kernels.w4a16.triton import DEFAULT_DECODE, w4a16_matmul

    config = _few_rows() if few_rows else DEFAULT_DECODE
    dtype = torch.bfloat16 if CUDA else torch.float16
    k, n = (14336, 4096) if CUDA else (512, 32)
    x, qweight, scales, zeros, perm = _case(4, k, n, 128, True, dtype, 1)
    first = w4a16_matmul(x, qweight, scales, zeros, perm, 128, config)
    for _ in range(3):
        assert torch.equal(w4a16_matmul(x, qweight, scales, zeros, perm, 128, config), first)
    assert not split_counters(x.device).any()  # every launch re-armed its counters


def test_w4a16_empty_batch() -> None:
    from lorax_kernels.w4a16.triton import w4a16_matmul

    x, qweight, scales, zeros, perm = _case(1, 16, 8, 8, False, torch.float32, 0)
    assert w4a16_matmul(x[:0], qweight, scales, zeros, perm, 8).shape == (0, 8)


@pytest.mark.gpu
def test_w4a16_replays_in_a_cuda_graph() -> None:
    """The public op captured (decode split twice: its counters re-arm in-graph; prefill once)
    replays new inputs bit for bit as eager calls compute them."""
    from lorax_kernels.w4a16 import w4a16_matmul

    x, qweight, scales, zeros, perm = _case(4, 4096, 6144, 128, True, torch.bfloat16, 5)
    x_big = torch.zeros(96, 4096, device=DEVICE, dtype=torch.bfloat16)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        w4a16_matmul(x, qweight, scales, zeros, perm, 128)
        return (
            w4a16_matmul(x, qweight, scales, zeros, perm, 128),
            w4a16_matmul(x_big, qweight, scales, zeros, None, 128),
        )

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles, allocates the counters) off the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, y_big = step()
    for seed in (1, 2, 3):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        x.normal_(generator=g)
        x_big.normal_(generator=g)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, w4a16_matmul(x, qweight, scales, zeros, perm, 128))
        assert torch.equal(y_big, w4a16_matmul(x_big, qweight, scales, zeros, None, 128))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 40], ids=lambda m: f"{m}rows")
def test_w4a16_pdl_chain_waits_for_each_previous_output(m: int) -> None:
    """w4a16 matmuls launched with PDL (the few-rows kernel at 1 and 8 rows, the split tl.dot
    tiles at 40), each reading the previous one's output (a plain PyTorch add between some of
    them), captured in a CUDA graph: every output is bit-identical to the same chain launched
    plainly, so no kernel read its input, or reused the split counters, early."""
    from lorax_kernels import pdl
    from lorax_kernels.w4a16 import w4a16_matmul

    if not pdl.pdl_supported(torch.device(DEVICE)):
        pytest.skip("programmatic dependent launch needs a Hopper or later GPU")
    weights = [_case(m, 4096, 4096, 128, i % 3 == 2, torch.bfloat16, i)[1:] for i in range(6)]
    x = torch.zeros(m, 4096, device=DEVICE, dtype=torch.bfloat16)

    def chain() -> list[torch.Tensor]:
        outs, h = [], x
        for i, (qweight, scales, zeros, perm) in enumerate(weights):
            h = w4a16_matmul(h, qweight, scales, zeros, perm, 128)
            if i % 2:
                h = h + x  # a kernel launched without PDL inside the chain
            outs.append(h)
        return outs

    assert pdl.enabled()
    chain()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = chain()
    for seed in (1, 2):
        x.normal_(generator=torch.Generator(device=DEVICE).manual_seed(seed))
        graph.replay()
        torch.cuda.synchronize()
        pdl.set_enabled(False)
        try:
            plain = chain()
        finally:
            pdl.set_enabled(True)
        for got, want in zip(captured, plain, strict=True):
            assert torch.equal(got, want)
