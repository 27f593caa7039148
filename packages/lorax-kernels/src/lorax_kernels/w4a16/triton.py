"""Triton w4a16 GEMM: ``x[:, perm] @ W`` with W dequantized from 4-bit in registers, tile by tile.

One program computes a ``[BLOCK_M, BLOCK_N]`` tile of the output. Per ``BLOCK_K`` step it loads
each packed int32 word of those input rows once (``[BLOCK_K / 8, BLOCK_N]``), unpacks the eight
nibbles in registers (a broadcast shift, then a reshape to ``[BLOCK_K, BLOCK_N]``), and multiplies
them with x on the tensor cores. The weight thus crosses memory once at 4 bits, which is what
makes decode (small M, memory bound) faster than 16-bit weights.

Groups are contiguous along K (act-order weights are sorted at load; x's columns are gathered
through ``perm``, a tiny vector), and ``BLOCK_K`` divides the group size, so a step lies in one
group: it loads one scale row and one zero row, dots x with the integer ``q - zero`` (exact in
16 bits) and scales the ``[BLOCK_M, BLOCK_N]`` product. A group size no power-of-two tile
divides (8, 24, 40, ...) falls back to one scale and zero per row of the tile.

Up to 32 rows (decode batches) have a kernel of their own (``w4a16.few_rows``: the weights as
the A operand of ``mma.sync`` with eight rows of x as B, no 16-row padding), for bf16 / fp16 and
groups of whole 32-input blocks; other shapes take the tilings here.

Decode batches (M <= 64) have too few output tiles to keep the GPU busy, so they also split K
(GEMV-style): each program reduces one range of input rows into an fp32 partial, and the last
program of a column tile to arrive (an atomic counter) sums the partials in split order, writes
the output and re-arms the counter (CUDA-graph safe, no memset per call). The sum order is fixed,
so results do not depend on which program finishes last. Without the split, 64 rows of Llama-3-8B's
down projection were 64 programs streaming all of K each: 298 µs, 2.5% of copy bandwidth.
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
from lorax_kernels.pdl import launch_options, pdl_entry
from lorax_kernels.split_k_sum import last_split_total
from lorax_kernels.w4a16.few_rows import FewRowsConfig, few_rows_fits, w4a16_few_rows

# Up to this many rows the K dimension is split across programs, in one tile of rows.
SPLIT_K_MAX_ROWS = 64
# Up to this many rows act-order gathers x through perm inside each tile (more rows gather once).
GEMV_MAX_ROWS = 16


@dataclass(slots=True, frozen=True)
class W4Config:
    """One tiling: ``[block_n]`` output columns per program, K steps of up to ``block_k`` rows (the
    largest power of two <= block_k that divides the group size), ``warps`` per program,
    ``stages`` of software pipelining; decode splits K until ``waves`` programs per SM. Rows are
    padded to 16-row ``tl.dot`` tiles."""

    block_n: int
    block_k: int
    warps: int
    stages: int
    waves: int

    def __post_init__(self) -> None:
        for name in ("block_n", "block_k", "warps"):
            v = getattr(self, name)
            if v <= 0 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        # K steps of whole packed words, searched down to 16 rows by step_rows.
        if self.block_k < 16:
            raise ValueError(f"block_k must be >= 16, got {self.block_k}")
        if self.block_n < 16:
            raise ValueError("tl.dot tiles need block_n >= 16")
        if self.stages < 1 or self.waves < 1:
            raise ValueError("stages and waves must be >= 1")


# Few rows (mma kernel), measured on the H200 (session 15, a chain of 32 Llama-3-8B layers' four
# projections, group 128, PDL launches, µs a layer): one row 1 warp at 32 waves 50.3 (4 warps at
# 8 waves: 53.0; run 13's tl.dot-era 67.6); 2-32 rows 4 warps at 8 waves: 59.6 / 60.7 / 64.4 at
# 2 / 4 / 8 rows against 64.4 / 66.9 / 69.7 for 1 warp at 32, 94.4 at 16 rows and 160.4 at 32
# against 98.2 and 161.3 for 1 warp at 16 (session 14's choice; the tl.dot tiles: 141 and 186).
# Decode tl.dot: a 128-row step of 64 columns is 4 KiB of packed weight, 16 bytes per thread at
# 4 warps, one 128-row group per step at the usual group size. Prefill: square-ish tiles, whole K
# per program.
DEFAULT_ONE_ROW = FewRowsConfig(warps=1, waves=32)
DEFAULT_FEW_ROWS = FewRowsConfig(warps=4, waves=8)
DEFAULT_DECODE = W4Config(block_n=64, block_k=128, warps=4, stages=3, waves=4)
# 17-64 rows (what the few-rows kernel leaves): 64-row K steps, 4 stages. H200, session 14, a
# layer's four projections at 64 rows: 208.5 µs against 231.2 for DEFAULT_DECODE (32: 175 / 188).
DEFAULT_DECODE_MORE = W4Config(block_n=64, block_k=64, warps=4, stages=4, waves=4)
DEFAULT_PREFILL = W4Config(block_n=64, block_k=64, warps=4, stages=2, waves=1)


def default_config(
    m: int, k: int, n: int, group_size: int, dtype: torch.dtype
) -> W4Config | FewRowsConfig:
    """The tiling ``w4a16_matmul`` uses for ``m`` rows of ``dtype``, ``k`` inputs, ``n`` outputs."""
    if few_rows_fits(m, k, n, group_size, dtype):
        return DEFAULT_ONE_ROW if m == 1 else DEFAULT_FEW_ROWS
    if m <= GEMV_MAX_ROWS:
        return DEFAULT_DECODE
    return DEFAULT_DECODE_MORE if m <= SPLIT_K_MAX_ROWS else DEFAULT_PREFILL


@triton.jit
def _w4a16_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    z_ptr,
    perm_ptr,
    y_ptr,
    part_ptr,
    count_ptr,
    M,
    N,
    K,
    k_per_split,
    num_splits,
    group_size,
    stride_xm,
    stride_qk,
    stride_sg,
    stride_ym,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_PERM: tl.constexpr,
    GROUP_PER_STEP: tl.constexpr,
    IS_FP32: tl.constexpr,
    PDL: tl.constexpr,
):
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    m_mask = rm < M
    n_mask = rn < N
    shifts = tl.arange(0, 8) * 4  # [8] nibble j of a word: bits 4j .. 4j + 3
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = split * k_per_split
    pdl_entry(PDL)  # before x (the previous kernel's output), the counters or y are touched
    for k0 in range(k_begin, tl.minimum(k_begin + k_per_split, K), BLOCK_K):
        rw = k0 // 8 + tl.arange(0, BLOCK_K // 8)  # [BLOCK_K / 8] word rows
        words = tl.load(
            qw_ptr + rw[:, None] * stride_qk + rn[None, :],
            mask=(rw < K // 8)[:, None] & n_mask[None, :],
            other=0,
        )  # [BLOCK_K / 8, BLOCK_N]
        q = (words[:, None, :] >> shifts[None, :, None]) & 0xF  # [BLOCK_K / 8, 8, BLOCK_N]
        q = tl.reshape(q, (BLOCK_K, BLOCK_N))  # row 8i + j = nibble j of word row i
        rk = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_mask = rk < K
        if HAS_PERM:
            cols = tl.load(perm_ptr + rk, mask=k_mask, other=0)  # act-order: x's columns
        else:
            cols = rk
        x = tl.load(
            x_ptr + rm[:, None] * stride_xm + cols[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        if GROUP_PER_STEP:
            g = k0 // group_size
            s = tl.load(s_ptr + g * stride_sg + rn, mask=n_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g * stride_sg + rn, mask=n_mask, other=0.0)  # [BLOCK_N]
            if IS_FP32:
                w = q.to(tl.float32) - z[None, :]
                part = tl.dot(x, w, input_precision="ieee")
            else:
                # q - zero is a small integer, exact in x's 16-bit dtype: the tensor cores
                # see the exact weight up to its scale, applied to the fp32 product.
                w = q.to(x.dtype) - z.to(x.dtype)[None, :]  # [BLOCK_K, BLOCK_N]
                part = tl.dot(x, w)
            acc += part * s[None, :]
        else:
            g = rk // group_size  # [BLOCK_K]
            kn_mask = k_mask[:, None] & n_mask[None, :]
            s = tl.load(s_ptr + g[:, None] * stride_sg + rn[None, :], mask=kn_mask, other=0.0)
            z = tl.load(z_ptr + g[:, None] * stride_sg + rn[None, :], mask=kn_mask, other=0.0)
            w = (q.to(tl.float32) - z.to(tl.float32)) * s.to(tl.float32)  # [BLOCK_K, BLOCK_N]
            if IS_FP32:
                acc += tl.dot(x, w, input_precision="ieee")
            else:
                acc += tl.dot(x, w.to(x.dtype))
    out_mask = m_mask[:, None] & n_mask[None, :]
    y_ptrs = y_ptr + rm[:, None] * stride_ym + rn[None, :]
    if not SPLIT_K:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)
    else:
        # [num_splits, M, N] fp32 partials (this path runs with one row tile, so rm < M indexes them).
        part_ptrs = part_ptr + rm[:, None] * N + rn[None, :]
        last, total = last_split_total(
            acc, part_ptrs, M * N, split, num_splits, count_ptr + pid_n, out_mask
        )
        if last:
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=out_mask)


def step_rows(group_size: int, block_k: int) -> int:
    """The K step: the largest power of two <= block_k dividing group_size (one group per step),
    or block_k when none of at least 16 does (per-row groups)."""
    step = block_k
    while step >= 16:
        if group_size % step == 0:
            return step
        step //= 2
    return block_k


def w4a16_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    perm: torch.Tensor | None,
    group_size: int,
    config: W4Config | FewRowsConfig | None = None,
) -> torch.Tensor:
    """Triton version of ``reference.w4a16_matmul_ref`` (same arguments, already validated);
    ``config`` overrides the default tiling (the benchmark's sweep). A ``FewRowsConfig`` runs the
    few-rows kernel, which refuses other shapes rather than silently running another kernel."""
    m, k = x.shape
    n = qweight.shape[1]
    if m == 0:
        return torch.empty(0, n, device=x.device, dtype=x.dtype)
    if x.stride(1) != 1:
        x = x.contiguous()
    cfg = config or default_config(m, k, n, group_size, x.dtype)
    if isinstance(cfg, FewRowsConfig):
        return w4a16_few_rows(x, qweight, scales, zeros, perm, group_size, cfg)
    block_k = step_rows(group_size, cfg.block_k)
    decode = m <= SPLIT_K_MAX_ROWS
    if perm is not None and m > GEMV_MAX_ROWS:
        # Gathering x through perm inside every tile made act-order 7x slower than plain GPTQ at
        # 64 rows on the H200 (bench_quant_gemv); one gather of the whole activation first is a
        # single small launch.
        x, perm = x.index_select(1, perm), None
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    tiles_n = triton.cdiv(n, cfg.block_n)
    if decode:
        # One row tile (16 rows at least: tl.dot's minimum); K split until ~waves programs per
        # SM stream the weight, each over whole BLOCK_K steps.
        block_m = max(16, triton.next_power_of_2(m))
        split, k_per_split = split_k(k, block_k, tiles_n, cfg.waves, x.device)
    else:
        block_m, split, k_per_split = (32 if m <= 32 else 64), 1, k
    if split > 1 and tiles_n > SPLIT_COUNTERS:
        raise ValueError(f"{n} output features need more than {SPLIT_COUNTERS} column tiles")
    parts = torch.empty(split * m * n if split > 1 else 0, device=x.device, dtype=torch.float32)
    pdl, launch = launch_options(x.device)
    _w4a16_kernel[(triton.cdiv(m, block_m), tiles_n, split)](
        x,
        qweight,
        scales,
        zeros,
        perm if perm is not None else qweight,  # never read without HAS_PERM
        y,
        parts,
        split_counters(x.device),
        m,
        n,
        k,
        k_per_split,
        split,
        group_size,
        x.stride(0),
        qweight.stride(0),
        scales.stride(0),
        y.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=block_k,
        SPLIT_K=split > 1,
        HAS_PERM=perm is not None,
        GROUP_PER_STEP=group_size % block_k == 0,
        IS_FP32=x.dtype == torch.float32,
        PDL=pdl,
        num_warps=cfg.warps,
        num_stages=cfg.stages,
        **launch,
    )
    return y
