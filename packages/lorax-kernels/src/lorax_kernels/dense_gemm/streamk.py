"""Triton stream-K GEMM for decode batches of a few hundred rows: ``y = x @ W^T + b``.

At 256 rows a Llama-3-8B projection is compute-bound, and cuBLAS tiles its output into a number
of tiles that does not divide over the SMs: gate_up's 28,672 x 256 output is 224 tiles of
256 x 128 on 132 SMs, 1.7 waves, so the second wave leaves 40 SMs idle (H200, run 5: the
step's GEMMs at ~620 TFLOP/s against ~790 for a large square product).

This kernel runs one program per SM (a persistent grid). The first whole waves of output tiles
go one tile per program (data-parallel); the K steps of the tiles left over are then dealt
evenly to every program, so one program may finish the end of one tile and start another
(stream-K). A tile whose K range is whole in one program is stored by it; a tile shared by
several programs is summed by the last of them to arrive: each stores its fp32 partial, counts
itself in on the tile's atomic counter, and the last one adds the partials in program order
(the same sum whichever program finishes last), applies the bias and writes y, then re-arms the
counter for the next launch (CUDA-graph safe, no memset).

Partials: each program has two slots, one for a tile it enters mid-way (its first) and one for
a tile it leaves mid-way (its last); every other tile it touches is whole.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false
# pyright: reportGeneralTypeIssues=false

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from lorax_kernels.device import SPLIT_COUNTERS, num_sms, split_counters
from lorax_kernels.pdl import launch_options, pdl_entry


@dataclass(slots=True, frozen=True)
class StreamKConfig:
    """One tiling: ``[block_m, block_n]`` output tiles stepped ``block_k`` inputs at a time on
    the tensor cores, ``warps`` per program, ``stages`` of software pipelining; ``tma``: the
    tiles come through Hopper's tensor memory accelerator (one bulk copy a tile, edges zero
    filled) rather than per-thread asynchronous copies."""

    block_m: int
    block_n: int
    block_k: int
    warps: int
    stages: int
    tma: bool = False

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k", "warps"):
            v = getattr(self, name)
            if v <= 0 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if min(self.block_m, self.block_n, self.block_k) < 16:
            raise ValueError("tl.dot tiles need block_m, block_n and block_k >= 16")
        if self.stages < 1:
            raise ValueError("stages must be >= 1")


DEFAULT_CONFIG = StreamKConfig(block_m=128, block_n=256, block_k=64, warps=8, stages=3)


@triton.jit
def _owner(j, per_prog, extra):
    """The program whose stream-K range holds step ``j``: the first ``extra`` programs take
    ``per_prog + 1`` steps, the others ``per_prog``."""
    big = extra * (per_prog + 1)
    return tl.where(j < big, j // (per_prog + 1), extra + (j - big) // tl.maximum(per_prog, 1))


@triton.jit
def _mma_steps(
    x_ptr,
    w_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    tm,
    tn,
    k_lo,
    k_hi,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    TMA: tl.constexpr,
):
    """``[BLOCK_M, BLOCK_N]`` fp32 sum of x's rows of tile ``tm`` times W's rows of tile ``tn``
    over K steps ``[k_lo, k_hi)``. Rows past M or N are clamped onto the last one (valid loads,
    never stored) so that only K needs a mask."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if TMA:  # x_ptr and w_ptr are tensor descriptors of [BLOCK_M | BLOCK_N, BLOCK_K] blocks
        for k in range(k_lo, k_hi):
            a = x_ptr.load([tm * BLOCK_M, k * BLOCK_K])  # [BLOCK_M, BLOCK_K]
            b = w_ptr.load([tn * BLOCK_N, k * BLOCK_K])  # [BLOCK_N, BLOCK_K]
            acc = tl.dot(a, tl.trans(b), acc)
    else:
        rm = tl.minimum(tm * BLOCK_M + tl.arange(0, BLOCK_M), M - 1)  # [BLOCK_M]
        rn = tl.minimum(tn * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)  # [BLOCK_N]
        rk = tl.arange(0, BLOCK_K)  # [BLOCK_K]
        x_tile = x_ptr + rm.to(tl.int64)[:, None] * stride_xm + (k_lo * BLOCK_K + rk)[None, :]
        w_tile = w_ptr + rn.to(tl.int64)[:, None] * stride_wn + (k_lo * BLOCK_K + rk)[None, :]
        for k in range(k_lo, k_hi):
            if EVEN_K:
                a = tl.load(x_tile)  # [BLOCK_M, BLOCK_K]
                b = tl.load(w_tile)  # [BLOCK_N, BLOCK_K]
            else:
                k_ok = (k * BLOCK_K + rk) < K
                a = tl.load(x_tile, mask=k_ok[None, :], other=0.0)
                b = tl.load(w_tile, mask=k_ok[None, :], other=0.0)
            acc = tl.dot(a, tl.trans(b), acc)
            x_tile += BLOCK_K
            w_tile += BLOCK_K
    return acc


@triton.jit
def _store_tile(acc, b_ptr, y_ptr, M, N, stride_ym, tm, tn, HAS_BIAS, BLOCK_M, BLOCK_N):
    rm = tm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tn * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(rm < M)[:, None] & n_ok[None, :])


@triton.jit
def _streamk_gemm_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    part_ptr,
    count_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    tiles_m,
    dp_tiles,
    per_prog,
    extra,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    TMA: tl.constexpr,
    PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    steps = tl.cdiv(K, BLOCK_K)  # K steps per tile
    pdl_entry(PDL)  # before x (the previous kernel's output) or y (maybe its input) is touched
    # Data-parallel waves. Tile t is (t % tiles_m, t // tiles_m): the programs running at once
    # share W's row tiles, so each is read from memory about once.
    for t in range(pid, dp_tiles, programs):
        tm = t % tiles_m
        tn = t // tiles_m
        acc = _mma_steps(
            x_ptr, w_ptr, M, N, K, stride_xm, stride_wn, tm, tn, 0, steps,
            BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, TMA,
        )  # fmt: skip
        _store_tile(acc, b_ptr, y_ptr, M, N, stride_ym, tm, tn, HAS_BIAS, BLOCK_M, BLOCK_N)
    # Stream-K: this program's share of the leftover tiles' K steps, [begin, end).
    begin = pid * per_prog + tl.minimum(pid, extra)
    end = begin + per_prog + (pid < extra).to(tl.int32)
    tile_offsets = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    j = begin
    while j < end:
        s = j // steps  # leftover tile index
        k_lo = j - s * steps
        k_hi = tl.minimum(steps, k_lo + end - j)
        t = dp_tiles + s
        tm = t % tiles_m
        tn = t // tiles_m
        acc = _mma_steps(
            x_ptr, w_ptr, M, N, K, stride_xm, stride_wn, tm, tn, k_lo, k_hi,
            BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, TMA,
        )  # fmt: skip
        if k_lo == 0 and k_hi == steps:
            _store_tile(acc, b_ptr, y_ptr, M, N, stride_ym, tm, tn, HAS_BIAS, BLOCK_M, BLOCK_N)
        else:
            # Slot 0: the tile this program entered mid-way; slot 1: the one it leaves mid-way.
            slot = tl.where(k_lo > 0, 0, 1)
            tl.store(part_ptr + (pid * 2 + slot) * BLOCK_M * BLOCK_N + tile_offsets, acc)
            tl.debug_barrier()  # every thread's partial is stored before the release below
            first_step = s * steps
            first = _owner(first_step, per_prog, extra)
            last = _owner(first_step + steps - 1, per_prog, extra)
            if tl.atomic_add(count_ptr + s, 1, sem="acq_rel") == last - first:
                tl.debug_barrier()
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for p in range(first, last + 1):  # program order: a fixed sum
                    p_begin = p * per_prog + tl.minimum(p, extra)
                    p_slot = tl.where(p_begin > first_step, 0, 1)
                    p_part = part_ptr + (p * 2 + p_slot) * BLOCK_M * BLOCK_N + tile_offsets
                    acc += tl.load(p_part, cache_modifier=".cg")  # .cg: L2, where they wrote
                tl.atomic_xchg(count_ptr + s, 0)  # re-armed for the next launch
                _store_tile(acc, b_ptr, y_ptr, M, N, stride_ym, tm, tn, HAS_BIAS, BLOCK_M, BLOCK_N)
        j += k_hi - k_lo


def streamk_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    config: StreamKConfig | None = None,
    programs: int | None = None,
) -> torch.Tensor:
    """Triton version of ``dense_linear_ref`` (validated arguments: ``[M, K] @ [N, K]^T``, 16-bit
    or fp32, both row-major). ``config``: the tiling (``DEFAULT_CONFIG``); ``programs``: the
    persistent grid (the device's SM count), which the tests shrink to exercise shared tiles."""
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    if x.stride(1) != 1:
        x = x.contiguous()
    cfg = config or DEFAULT_CONFIG
    programs = programs or num_sms(x.device)
    pdl, launch = launch_options(x.device)
    tiles_m, tiles_n = triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n)
    tiles = tiles_m * tiles_n
    # Whole waves one tile a program; the rest (fewer tiles than programs) is stream-K.
    dp_tiles = tiles - tiles % programs
    sk_tiles = tiles - dp_tiles
    if sk_tiles > SPLIT_COUNTERS:
        raise ValueError(f"{sk_tiles} stream-K tiles need more than {SPLIT_COUNTERS} counters")
    sk_steps = sk_tiles * triton.cdiv(k, cfg.block_k)
    per_prog, extra = divmod(sk_steps, programs)
    parts = torch.empty(
        programs * 2 * cfg.block_m * cfg.block_n if sk_tiles else 0,
        device=x.device,
        dtype=torch.float32,
    )
    # TMA needs 16-byte aligned rows; the interpreter and older GPUs take the pointer path.
    tma = (
        cfg.tma
        and x.is_cuda
        and torch.cuda.get_device_capability(x.device)[0] >= 9
        and all(
            t.data_ptr() % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0 for t in (x, weight)
        )
    )
    a: torch.Tensor | TensorDescriptor = x
    b: torch.Tensor | TensorDescriptor = weight
    if tma:
        a = TensorDescriptor.from_tensor(x, [cfg.block_m, cfg.block_k])
        b = TensorDescriptor.from_tensor(weight, [cfg.block_n, cfg.block_k])
    _streamk_gemm_kernel[(programs,)](
        a,
        b,
        bias if bias is not None else y,  # never read without HAS_BIAS
        y,
        parts,
        split_counters(x.device),
        m,
        n,
        k,
        x.stride(0),
        weight.stride(0),
        y.stride(0),
        tiles_m,
        dp_tiles,
        per_prog,
        extra,
        HAS_BIAS=bias is not None,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        EVEN_K=k % cfg.block_k == 0,
        TMA=tma,
        PDL=pdl,
        num_warps=cfg.warps,
        num_stages=cfg.stages,
        **launch,
    )
    return y
