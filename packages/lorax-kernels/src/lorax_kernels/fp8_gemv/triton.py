"""Triton fp8 weight-only GEMV / skinny GEMM for decode (M <= 16): ``x @ (qweight * scale)^T``;
the same kernel without a scale serves 16-bit weights (``lorax_kernels.dense_gemv``).

Decode reads the whole weight for a handful of tokens, so the kernel is bound by weight bytes:
each program streams a ``[BLOCK_N, BLOCK_K]`` tile of fp8 rows (K contiguous, 16-byte loads),
converts it in registers and multiplies it with x (tiny, re-read from L2 by every program).
Two inner products: ``DOT`` pads the rows to a 16-row ``tl.dot`` on the tensor cores; without it
each row is a broadcast multiply and a sum over K on the CUDA cores (less work for 1-2 rows).

Small N gives too few column tiles to fill the GPU, so K is split across programs until about
``waves`` programs per SM stream the weight. Each program writes an fp32 partial; the last program
of a column tile to arrive (an atomic counter) sums the partials in split order, applies the
per-channel scale and bias, and writes y. The order is fixed, so the result does not depend on
which program finishes last; that program re-arms the counter, so the op is CUDA-graph safe.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)), constexpr parameters and
# tl.static_range are not typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false
# pyright: reportGeneralTypeIssues=false

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lorax_kernels.device import SPLIT_COUNTERS, split_counters, split_k
from lorax_kernels.fp8_gemv import GEMV_MAX_ROWS
from lorax_kernels.pdl import launch_options, pdl_entry
from lorax_kernels.split_k_sum import last_split_total


@dataclass(slots=True, frozen=True)
class Fp8GemvConfig:
    """One tiling of the GEMV: ``[block_n, block_k]`` weight tiles, ``warps`` per program,
    ``stages`` of software pipelining, K split until ``waves`` programs per SM, ``dot``: tensor
    cores (16-row tiles) rather than CUDA-core reductions."""

    block_n: int
    block_k: int
    warps: int
    stages: int
    waves: int
    dot: bool

    def __post_init__(self) -> None:
        for name in ("block_n", "block_k", "warps"):
            v = getattr(self, name)
            if v <= 0 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if self.dot and (self.block_n < 16 or self.block_k < 16):
            raise ValueError("tl.dot tiles need block_n and block_k >= 16")
        if self.stages < 1 or self.waves < 1:
            raise ValueError("stages and waves must be >= 1")


# Measured on the H200 (bench_quant_gemv.py --sweep-only, summed over the Llama-3-8B
# projections). 1-2 rows, session 4: CUDA-core rows on 16 x 512 tiles (one 512-byte row per
# warp-wide load, 16 B per thread), K split to 8 programs per SM with 4 stages in flight: 70.9 µs
# against 76.7 µs for 4 programs per SM and 3 stages, which left qkv and o at 44-52% of copy
# bandwidth. Run 7: rows of at most 4096 inputs (qkv, o, gate_up) read faster as 8 x 1024 tiles
# at 4 programs per SM and 2 stages (9.5 / 7.4 / 31.5 µs against 11.2 / 8.0 / 32.6): twice the
# bytes per program per step, where a short row splits into few steps; down's 14336-long rows
# stay on 16 x 512 (18.4 against 20.7 µs). More rows: tensor cores on 32 x 256 tiles at 8
# programs per SM (100.1 µs at 4 rows; 64 x 256: 102.4 µs).
DEFAULT_FEW_ROWS = Fp8GemvConfig(block_n=16, block_k=512, warps=4, stages=4, waves=8, dot=False)
DEFAULT_FEW_ROWS_SHORT_K = Fp8GemvConfig(
    block_n=8, block_k=1024, warps=4, stages=2, waves=4, dot=False
)
SHORT_K_MAX = 4096
DEFAULT_MANY_ROWS = Fp8GemvConfig(block_n=32, block_k=256, warps=4, stages=4, waves=8, dot=True)
# 16-bit weights, 1-2 rows (the same sweep's bf16 table, run 5: 118.8 µs a layer against cuBLAS's
# 120.0; 8 programs per SM and 4 stages: 125.6).
DEFAULT_DENSE_FEW_ROWS = Fp8GemvConfig(
    block_n=16, block_k=512, warps=4, stages=3, waves=4, dot=False
)
FEW_ROWS_MAX = 2


def default_config(m: int, k: int, dense: bool = False) -> Fp8GemvConfig:
    """The tiling ``fp8_gemv`` uses for ``m`` rows of ``k`` inputs, of fp8 weights or of 16-bit
    ones (``dense``)."""
    if m > FEW_ROWS_MAX:
        return DEFAULT_MANY_ROWS
    if dense:
        return DEFAULT_DENSE_FEW_ROWS
    return DEFAULT_FEW_ROWS_SHORT_K if k <= SHORT_K_MAX else DEFAULT_FEW_ROWS


@triton.jit
def _fp8_gemv_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    b_ptr,
    y_ptr,
    part_ptr,
    count_ptr,
    M,
    N,
    K,
    k_per_split,
    num_splits,
    stride_xm,
    stride_wn,
    stride_ym,
    HAS_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT: tl.constexpr,
    IS_FP32: tl.constexpr,
    PDL: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    m_mask = rm < M
    n_mask = rn < N
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn  # [BLOCK_N, 1]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    pdl_entry(PDL)  # before x (the previous kernel's output) or y (maybe its input) is touched
    for k0 in range(k_begin, k_end, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_mask = rk < K
        w = tl.load(w_rows + rk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        if DOT:
            x = tl.load(
                x_ptr + rm[:, None] * stride_xm + rk[None, :],
                mask=m_mask[:, None] & k_mask[None, :],
                other=0.0,
            )  # [BLOCK_M, BLOCK_K]
            if IS_FP32:
                acc += tl.dot(x, tl.trans(w.to(tl.float32)), input_precision="ieee")
            else:
                # fp8 -> 16-bit is exact, so the tensor cores see the stored weight.
                acc += tl.dot(x, tl.trans(w.to(x.dtype)))  # [BLOCK_M, BLOCK_N]
        else:
            wf = w.to(tl.float32)  # [BLOCK_N, BLOCK_K]
            for i in tl.static_range(BLOCK_M):
                row_ok = tl.full((BLOCK_K,), i, tl.int32) < M  # rows past M (BLOCK_M pads)
                xi = tl.load(x_ptr + i * stride_xm + rk, mask=k_mask & row_ok, other=0.0)
                row = tl.sum(wf * xi.to(tl.float32)[None, :], axis=1)  # [BLOCK_N]
                acc += tl.where(rm[:, None] == i, row[None, :], 0.0)
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K:
        # [num_splits, M, N] fp32 partials; the last program of this column tile sums them.
        part = part_ptr + rm[:, None] * N + rn[None, :]
        last, total = last_split_total(
            acc, part, M * N, split, num_splits, count_ptr + pid_n, out_mask
        )
        if last:
            _store_out(
                total, s_ptr, b_ptr, y_ptr, rm, rn, n_mask, out_mask, stride_ym, HAS_SCALE, HAS_BIAS
            )
    else:
        _store_out(
            acc, s_ptr, b_ptr, y_ptr, rm, rn, n_mask, out_mask, stride_ym, HAS_SCALE, HAS_BIAS
        )


@triton.jit
def _store_out(acc, s_ptr, b_ptr, y_ptr, rm, rn, n_mask, out_mask, stride_ym, HAS_SCALE, HAS_BIAS):
    y = acc
    if HAS_SCALE:
        y = y * tl.load(s_ptr + rn, mask=n_mask, other=0.0)[None, :]  # per-channel weight scale
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty), out_mask)


def fp8_gemv(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    config: Fp8GemvConfig | None = None,
    pdl: bool | None = None,
) -> torch.Tensor:
    """Triton version of ``reference.fp8_linear_ref`` for ``M <= GEMV_MAX_ROWS`` (validated
    arguments); without ``scale``, of ``x @ qweight^T + bias`` for 16-bit weights. ``config``
    overrides ``default_config`` (the benchmark's sweep). ``pdl``: launch with programmatic
    dependent launch (``lorax_kernels.pdl``: Hopper or later) or not; None: as
    ``pdl.set_enabled`` says."""
    m, k = x.shape
    n = qweight.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    if m > GEMV_MAX_ROWS:
        raise ValueError(f"fp8_gemv serves up to {GEMV_MAX_ROWS} rows, got {m}")
    if x.stride(1) != 1:
        x = x.contiguous()
    cfg = config or default_config(m, k, dense=scale is None)
    if pdl is None:
        pdl, launch = launch_options(x.device)
    else:
        launch = {"launch_pdl": True} if pdl else {}
    block_m = 16 if cfg.dot else triton.next_power_of_2(m)
    tiles_n = triton.cdiv(n, cfg.block_n)
    if tiles_n > SPLIT_COUNTERS:
        raise ValueError(f"{n} output features need more than {SPLIT_COUNTERS} column tiles")
    split, k_per_split = split_k(k, cfg.block_k, tiles_n, cfg.waves, x.device)
    parts = torch.empty(split * m * n if split > 1 else 0, device=x.device, dtype=torch.float32)
    _fp8_gemv_kernel[(tiles_n, split)](
        x,
        qweight,
        scale,
        bias if bias is not None else scale,  # never read without HAS_BIAS
        y,
        parts,
        split_counters(x.device),
        m,
        n,
        k,
        k_per_split,
        split,
        x.stride(0),
        qweight.stride(0),
        y.stride(0),
        HAS_SCALE=scale is not None,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        SPLIT_K=split > 1,
        DOT=cfg.dot,
        IS_FP32=x.dtype == torch.float32,
        PDL=pdl,
        num_warps=cfg.warps,
        num_stages=cfg.stages,
        **launch,
    )
    return y
