"""Triton w4a16 GEMM for a few rows (decode batches up to 32) on the tensor cores: ``x[:, perm] @ W``.

A decode batch makes few multiply-adds per weight. On the CUDA cores each weight also costs its
unpacking into a float (the kernel the one-row case replaced spent 5.4 sm_90 instructions a
weight and read the weights at 25-40% of copy bandwidth), and ``tl.dot`` pads the rows to 16
and converts layouts through shared memory (20% of copy bandwidth at 2-16 rows). Here the
weights are the A operand of ``mma.sync m16n8k16`` (16 output columns x 16 inputs) and x is B:
B's eight columns are eight rows of x, so one program serves eight rows (a *token group*) for the
price of one, and unpacking is about one instruction per weight pair.

Lane ``(g, t)`` of a warp (``g = lane // 4``, ``t = lane % 4``, the mma's fragment coordinates)
loads, per 32-input block and 32-column strip, the packed words of word row ``t`` (inputs
``8 t .. 8 t + 7``) for columns ``4 g .. 4 g + 3``: one 16-byte load; the warp's loads cover
four 128-byte rows. The contraction order inside an mma is free, so the lane's eight nibbles are
laid out as its fragment slots directly:

- ``(w >> 4 s) & 0x000F000F | 0x43004300`` is the bf16 pair ``(128 + q_s, 128 + q_{s+4})`` (fp16:
  ``0x64006400``, 1024 + q), exact, one LOP3 (and a shift) per pair; s = 0, 1 fill the first
  mma's slots, s = 2, 3 the second's. Columns ``4 g, 4 g + 1`` are tile rows ``g, g + 8`` of
  one mma, ``4 g + 2, 4 g + 3`` of another.
- B takes x in the same order: lane ``(g, t)`` loads ``x[r][8 t .. 8 t + 7]`` of the group's row
  ``r = g`` (B's column g; every lane row 0 when there is one row) and pairs ``x[8 t + s]`` with
  ``x[8 t + s + 4]``, one PRMT per pair (one row gathers x through act-order's ``perm`` here;
  more rows are gathered once, before the launch).
- The offset is removed once per group: ``sum (q - z) x = D - (OFFSET + z) X`` with D the mma
  sum of ``(OFFSET + q) x`` and X the group's sum of x per row, itself an mma of ones with B.

A lane ends a group with D of its four columns for rows ``2 t`` and ``2 t + 1`` of the token
group (the mma's accumulator slots), scales them and writes them. K is split across programs
until ``waves`` programs per SM stream the weight; the last program of a column tile and token
group to arrive sums the fp32 partials in a fixed order. The token groups of one column tile are
neighbours in the launch order, so the weight they share comes from DRAM about once: past 32
rows they read it from L2 too often, and ``tl.dot`` tiles serve (``w4a16.triton``).

Launched with PDL (``lorax_kernels.pdl``), a program reads its first epilogue's words before it
waits for the kernel ahead: weights, which no kernel in flight writes. Waiting first thing made a
chain of a layer's four projections slower than plain launches (H200: 54.2 against 50.5 µs);
with the words under way it is faster (50.4-51.6 against 52.5-54.4).

Triton's interpreter cannot run inline PTX: there (CI) each 32-input block's D and X are computed
with tensor arithmetic instead, the same sums in another order, so the tests check everything
around the two mma blocks, which the GPU tests check.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false
# pyright: reportGeneralTypeIssues=false

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lorax_kernels.device import SPLIT_COUNTERS, split_counters, split_k
from lorax_kernels.pdl import launch_options, pdl_entry
from lorax_kernels.split_k_sum import arrived_last

INPUT_BLOCK = 32  # inputs per block: the lanes' word rows t = 0..3 of eight inputs each
# Most inputs between two scale-and-zero epilogues: long groups (up to one over all of K) are
# taken in steps of this many, which is also the unit K is split in.
EPILOGUE_INPUTS = 128
TOKEN_GROUP = 8  # rows of x per program: the mma's B columns
# Registers a thread may use: 32 one-warp programs per SM (one row's default: 32 waves) resident in
# the 64K-register file. At one row ptxas would take 66, and only 28 fit.
MAX_REGISTERS = 64
# Partials the last program of a split loads per round trip (16 a lane at one warp).
SUM_VALUES = tl.constexpr(512)
# Most rows the kernel serves (H200, a Llama-3-8B layer's four projections, µs: at 32 rows 169
# against 186 for the tl.dot tiles, at 64 rows 286 against 230).
FEW_ROWS_MAX = 32


def _b_pairs(x0: int) -> list[str]:
    """PTX: B's two k16 fragments (b0, b1 | b2, b3) from ``x[8 t .. 8 t + 7]`` in operands
    ``$x0 .. $x0+3``, pairs in the nibbles' order: (x0, x4), (x1, x5) | (x2, x6), (x3, x7)."""
    return [
        f"prmt.b32 b0, ${x0}, ${x0 + 2}, 0x5410;",
        f"prmt.b32 b1, ${x0}, ${x0 + 2}, 0x7632;",
        f"prmt.b32 b2, ${x0 + 1}, ${x0 + 3}, 0x5410;",
        f"prmt.b32 b3, ${x0 + 1}, ${x0 + 3}, 0x7632;",
    ]


def _mma_block(kind: str, magic: int) -> str:
    """PTX: one lane's 32-input block. Outputs $0..$3: D of the lane's four columns for row 2t,
    $4..$7 for row 2t + 1; inputs $8..$11 the four words, $12..$15 x as pairs, $16..$19 and
    $20..$23 D so far (rows 2t, 2t + 1)."""
    lines = [
        "{",
        ".reg .b32 b0, b1, b2, b3, u, p<16>;",
        ".reg .f32 e<4>, f<4>;",
        *_b_pairs(12),
    ]
    # p[4 s + c]: word c's nibbles s and s + 4 as the pair (OFFSET + q_s, OFFSET + q_{s+4}).
    for s in range(4):
        for c in range(4):
            src = f"${8 + c}"
            if s:
                lines.append(f"shr.u32 u, {src}, {4 * s};")
                src = "u"
            lines.append(f"lop3.b32 p{4 * s + c}, {src}, 0x000F000F, {magic:#x}, 0xEA;")
    mma = f"mma.sync.aligned.m16n8k16.row.col.f32.{kind}.{kind}.f32"
    # Tile rows g and g + 8 are columns 4g + 2h and 4g + 2h + 1; D's slots are (tile row g, B
    # column 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
    for h, acc in ((0, "e"), (1, "f")):
        c0, c1 = 2 * h, 2 * h + 1
        lines.append(
            f"{mma} {{{acc}0, {acc}1, {acc}2, {acc}3}}, {{p{c0}, p{c1}, p{4 + c0}, p{4 + c1}}}, "
            f"{{b0, b1}}, {{${16 + c0}, ${20 + c0}, ${16 + c1}, ${20 + c1}}};"
        )
        lines.append(
            f"{mma} {{${c0}, ${4 + c0}, ${c1}, ${4 + c1}}}, {{p{8 + c0}, p{8 + c1}, "
            f"p{12 + c0}, p{12 + c1}}}, {{b2, b3}}, {{{acc}0, {acc}1, {acc}2, {acc}3}};"
        )
    lines.append("}")
    return "\n".join(lines)


def _x_sum_block(kind: str, one: int) -> str:
    """PTX: the block's sums of x rows 2t and 2t + 1 added to $12 and $16, into $0..$3 and
    $4..$7 (each four alike); $8..$11 x as above."""
    mma = f"mma.sync.aligned.m16n8k16.row.col.f32.{kind}.{kind}.f32"
    return "\n".join(
        [
            "{",
            ".reg .b32 b0, b1, b2, b3, one;",
            ".reg .f32 e<4>;",
            f"mov.b32 one, {one:#x};",
            *_b_pairs(8),
            f"{mma} {{e0, e1, e2, e3}}, {{one, one, one, one}}, {{b0, b1}}, "
            "{$12, $16, $12, $16};",
            f"{mma} {{$0, $4, e2, e3}}, {{one, one, one, one}}, {{b2, b3}}, {{e0, e1, e2, e3}};",
            "mov.b32 $1, $0;",
            "mov.b32 $2, $0;",
            "mov.b32 $3, $0;",
            "mov.b32 $5, $4;",
            "mov.b32 $6, $4;",
            "mov.b32 $7, $4;",
            "}",
        ]
    )


_MMA_OPERANDS = tl.constexpr(",".join(["=f"] * 8 + ["r"] * 8 + ["f"] * 8))
_X_SUM_OPERANDS = tl.constexpr(",".join(["=f"] * 8 + ["r"] * 4 + ["f"] * 8))
_BF16_MMA = tl.constexpr(_mma_block("bf16", 0x43004300))
_F16_MMA = tl.constexpr(_mma_block("f16", 0x64006400))
_BF16_X_SUM = tl.constexpr(_x_sum_block("bf16", 0x3F803F80))
_F16_X_SUM = tl.constexpr(_x_sum_block("f16", 0x3C003C00))


@dataclass(slots=True, frozen=True)
class FewRowsConfig:
    """The kernel's tiling: ``warps`` per program, each streaming one 32-column strip (with two
    strips a warp, Triton 3.6 gave act-order's gathered x a layout other than the words', and the
    mma blocks the wrong lanes); K split until about ``waves`` programs per SM and token group."""

    warps: int
    waves: int

    def __post_init__(self) -> None:
        if self.warps <= 0 or self.warps & (self.warps - 1):
            raise ValueError(f"warps must be a power of two, got {self.warps}")
        if self.waves < 1:
            raise ValueError("waves must be >= 1")


def few_rows_fits(m: int, k: int, n: int, group_size: int, dtype: torch.dtype) -> bool:
    """Whether the kernel serves ``m`` rows of this weight: up to ``FEW_ROWS_MAX``, bf16 / fp16
    x, K and the group size whole 32-input blocks, N a multiple of 16 (rows of packed words
    16-byte aligned: Triton then loads them four words a lane, the layout the mma blocks take)."""
    return (
        1 <= m <= FEW_ROWS_MAX
        and dtype in (torch.bfloat16, torch.float16)
        and k % INPUT_BLOCK == 0
        and group_size % INPUT_BLOCK == 0
        and n % 16 == 0
    )


@triton.jit
def _emulated_block(
    x_ptr, perm_ptr, qw_ptr, stride_qk, rn, n_mask, k0, row_lo, row_hi, M, stride_xm,
    HAS_PERM: tl.constexpr, OFFSET: tl.constexpr,
):  # fmt: skip
    """The interpreter's D and X of one 32-input block for rows ``row_lo`` (2t of the token group)
    and ``row_hi`` (2t + 1), each ``[ROWS, 4]``: what the two mma blocks compute, by definition."""
    d_lo = tl.zeros(rn.shape, dtype=tl.float32)
    d_hi = tl.zeros(rn.shape, dtype=tl.float32)
    x_lo = tl.zeros(rn.shape, dtype=tl.float32)
    x_hi = tl.zeros(rn.shape, dtype=tl.float32)
    for word_row in tl.static_range(4):
        words = tl.load(qw_ptr + (k0 // 8 + word_row) * stride_qk + rn, mask=n_mask, other=0)
        for j in tl.static_range(8):
            kj = k0 + 8 * word_row + j + 0 * rn  # [ROWS, 4]
            if HAS_PERM:
                kj = tl.load(perm_ptr + kj)
            xj_lo = tl.load(x_ptr + row_lo * stride_xm + kj, mask=row_lo < M, other=0.0)
            xj_hi = tl.load(x_ptr + row_hi * stride_xm + kj, mask=row_hi < M, other=0.0)
            q = OFFSET + ((words >> (4 * j)) & 0xF).to(tl.float32)
            d_lo += q * xj_lo.to(tl.float32)
            d_hi += q * xj_hi.to(tl.float32)
            x_lo += xj_lo.to(tl.float32)
            x_hi += xj_hi.to(tl.float32)
    return d_lo, d_hi, x_lo, x_hi


@triton.jit
def _mma_blocks(words, xr, d_lo, d_hi, x_lo, x_hi, IS_FP16: tl.constexpr):
    """D and X of one 32-input block added to ``d_lo, d_hi`` and ``x_lo, x_hi`` (rows 2t and
    2t + 1 of the token group; the two PTX blocks above)."""
    if IS_FP16:
        d_lo, d_hi = tl.inline_asm_elementwise(
            _F16_MMA, _MMA_OPERANDS, [words, xr, d_lo, d_hi], (tl.float32, tl.float32), True, 4
        )
        x_lo, x_hi = tl.inline_asm_elementwise(
            _F16_X_SUM, _X_SUM_OPERANDS, [xr, x_lo, x_hi], (tl.float32, tl.float32), True, 4
        )
    else:
        d_lo, d_hi = tl.inline_asm_elementwise(
            _BF16_MMA, _MMA_OPERANDS, [words, xr, d_lo, d_hi], (tl.float32, tl.float32), True, 4
        )
        x_lo, x_hi = tl.inline_asm_elementwise(
            _BF16_X_SUM, _X_SUM_OPERANDS, [xr, x_lo, x_hi], (tl.float32, tl.float32), True, 4
        )
    return d_lo, d_hi, x_lo, x_hi


@triton.jit
def _w4a16_few_rows_kernel(
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
    stride_xm,
    stride_x_pairs,
    stride_ym,
    stride_qk,
    stride_sg,
    GROUP_SIZE: tl.constexpr,
    STRIPS: tl.constexpr,  # 32-column strips: one per warp
    EPILOGUE: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_PERM: tl.constexpr,
    ONE_ROW: tl.constexpr,
    IS_FP16: tl.constexpr,
    OFFSET: tl.constexpr,
    EMULATE: tl.constexpr,
    PDL: tl.constexpr,
):
    # Tensors are [lane rows, c]: row R is lane R % 32 of warp R // 32 (the warp's strip) and
    # holds c = 0..3 (one 16-byte load). The only non-contiguous dimension is the rows, so
    # Triton lays lanes out along them whatever its tie-breaking between dimensions (a 4D
    # [strip, g, t, c] form got lanes in g + 8 t order from Triton 3.6); the asm relies on it.
    ROWS: tl.constexpr = 32 * STRIPS  # also the program's columns: 4 a lane, over 4 lanes t
    token_group = tl.program_id(0)  # fastest: the groups sharing a weight tile run together
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    lane_row = tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
    c = tl.arange(0, 4)[None, :]  # [1, 4]
    t = lane_row % 4  # the lane's word row and x octet
    g = (lane_row % 32) // 4
    # [ROWS, 4]: columns 4 g .. 4 g + 3 of the lane's strip (32 s + 4 g = 4 (R // 4)).
    rn = pid_n * ROWS + 4 * (lane_row // 4) + c
    n_mask = rn < N
    lane_pair = 4 * t + c  # the lane's x pair c: inputs 8 t + 2 c and 8 t + 2 c + 1
    # B's column g is row g of the token group; one row is every column (the lanes of each t
    # then hold alike sums, and those with t = 0 write).
    b_row = 0 * lane_pair if ONE_ROW else token_group * 8 + g + 0 * c  # [ROWS, 4]
    b_mask = b_row < M
    row_lo = token_group * 8 + 2 * t  # [ROWS, 1]: the rows of the lane's D slots
    row_hi = row_lo + 1
    x_pairs = x_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
    y_lo = tl.zeros((ROWS, 4), dtype=tl.float32)
    y_hi = tl.zeros((ROWS, 4), dtype=tl.float32)
    k_begin = split * k_per_split
    for e0 in range(k_begin, tl.minimum(k_begin + k_per_split, K), EPILOGUE):
        if not EMULATE:
            # The epilogue's packed words (up to four blocks) first: the first epilogue's are read
            # before the PDL wait (weights: no kernel in flight writes them), so they stream
            # while the kernel ahead finishes.
            words0 = tl.load(qw_ptr + (e0 // 8 + t) * stride_qk + rn, mask=n_mask, other=0)
            words1 = words0
            words2 = words0
            words3 = words0
            if EPILOGUE >= 64:
                words1 = tl.load(qw_ptr + (e0 // 8 + 4 + t) * stride_qk + rn, mask=n_mask, other=0)
            if EPILOGUE == 128:
                words2 = tl.load(qw_ptr + (e0 // 8 + 8 + t) * stride_qk + rn, mask=n_mask, other=0)
                words3 = tl.load(qw_ptr + (e0 // 8 + 12 + t) * stride_qk + rn, mask=n_mask, other=0)
        # The group's scales and zeros with the words: loaded after the mma blocks (where they
        # are used), they were a second DRAM round trip per epilogue.
        gs = (e0 // GROUP_SIZE) * stride_sg + rn
        s = tl.load(s_ptr + gs, mask=n_mask, other=0.0)  # 16-bit until used: fewer registers
        z = tl.load(z_ptr + gs, mask=n_mask, other=0.0)
        if e0 == k_begin:
            pdl_entry(PDL)  # before x (the previous kernel's output), the counters or y
        d_lo = tl.zeros((ROWS, 4), dtype=tl.float32)
        d_hi = tl.zeros((ROWS, 4), dtype=tl.float32)
        x_lo = tl.zeros((ROWS, 4), dtype=tl.float32)
        x_hi = tl.zeros((ROWS, 4), dtype=tl.float32)
        for b in tl.static_range(EPILOGUE // 32):
            k0 = e0 + 32 * b
            if EMULATE:
                d_lo_b, d_hi_b, x_lo_b, x_hi_b = _emulated_block(
                    x_ptr, perm_ptr, qw_ptr, stride_qk, rn, n_mask, k0,
                    0 * row_lo if ONE_ROW else row_lo, 0 * row_lo if ONE_ROW else row_hi,
                    M, stride_xm, HAS_PERM, OFFSET,
                )  # fmt: skip
                d_lo += d_lo_b
                d_hi += d_hi_b
                x_lo += x_lo_b
                x_hi += x_hi_b
            else:
                words = words0
                if b == 1:
                    words = words1
                if b == 2:
                    words = words2
                if b == 3:
                    words = words3
                if HAS_PERM:
                    x_row = x_ptr + b_row * stride_xm
                    lo = tl.load(x_row + tl.load(perm_ptr + k0 + 2 * lane_pair), b_mask, 0.0)
                    hi = tl.load(x_row + tl.load(perm_ptr + k0 + 2 * lane_pair + 1), b_mask, 0.0)
                    lo = lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
                    xr = lo | (hi.to(tl.int16, bitcast=True).to(tl.int32) << 16)
                else:
                    # x[row][8 t .. 8 t + 7] in pairs
                    xr = tl.load(
                        x_pairs + b_row * stride_x_pairs + k0 // 2 + lane_pair, mask=b_mask, other=0
                    )
                d_lo, d_hi, x_lo, x_hi = _mma_blocks(words, xr, d_lo, d_hi, x_lo, x_hi, IS_FP16)
        s = s.to(tl.float32)
        z = OFFSET + z.to(tl.float32)
        y_lo += s * (d_lo - z * x_lo)
        if not ONE_ROW:
            y_hi += s * (d_hi - z * x_hi)
    lo_mask = n_mask & (row_lo < M)  # one row: t = 0 only
    hi_mask = n_mask & (row_hi < M)
    y_lo_ptrs = y_ptr + row_lo * stride_ym + rn
    if not SPLIT_K:
        tl.store(y_lo_ptrs, y_lo.to(y_ptr.dtype.element_ty), mask=lo_mask)
        tl.store(y_lo_ptrs + stride_ym, y_hi.to(y_ptr.dtype.element_ty), mask=hi_mask)
    else:
        # partials [num_splits, M, N]
        split_stride = M * N
        part_lo = part_ptr + row_lo * N + rn
        tl.store(part_lo + split * split_stride, y_lo, mask=lo_mask)
        tl.store(part_lo + N + split * split_stride, y_hi, mask=hi_mask)
        counter = count_ptr + token_group * tl.num_programs(1) + pid_n
        if arrived_last(counter, num_splits):
            tl.debug_barrier()
            # The group's partials as [splits, (row, column)] tiles of SUM_VALUES, all of a
            # tile's loads in flight at once: summing them a split at a time (4 in flight after
            # the compiler's unrolling) was 8 round trips to L2 at 32 splits, on the kernel's
            # critical path. The reduction order is fixed, so the bits do not depend on which
            # program arrived last.
            SUM_COLS: tl.constexpr = ROWS if ONE_ROW else 8 * ROWS
            # (at least one split: 4 warps of 8 rows hold 1024 values)
            SUM_SPLITS: tl.constexpr = (SUM_VALUES + SUM_COLS - 1) // SUM_COLS
            flat = tl.arange(0, SUM_COLS)
            sum_row = token_group * 8 + flat // ROWS
            sum_col = pid_n * ROWS + flat % ROWS
            sum_mask = (sum_row < M) & (sum_col < N)
            splits = tl.arange(0, SUM_SPLITS)[:, None]  # [SUM_SPLITS, 1]
            parts = part_ptr + splits * split_stride + (sum_row * N + sum_col)[None, :]
            tile = tl.zeros((SUM_SPLITS, SUM_COLS), dtype=tl.float32)
            for i0 in range(0, num_splits, SUM_SPLITS):  # .cg: L2, where the other SMs wrote
                in_range = sum_mask[None, :] & (i0 + splits < num_splits)
                tile += tl.load(
                    parts + i0 * split_stride, mask=in_range, other=0.0, cache_modifier=".cg"
                )
            tl.atomic_xchg(counter, 0)  # re-armed for the next launch
            total = tl.sum(tile, axis=0)  # [SUM_COLS]
            y_tile = y_ptr + sum_row * stride_ym + sum_col
            tl.store(y_tile, total.to(y_ptr.dtype.element_ty), mask=sum_mask)


def w4a16_few_rows(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    perm: torch.Tensor | None,
    group_size: int,
    config: FewRowsConfig,
) -> torch.Tensor:
    """``x[:, perm] @ W`` for x ``[M, K]`` (validated arguments, as ``w4a16.w4a16_matmul``) where
    ``few_rows_fits``."""
    m, k = x.shape
    n = qweight.shape[1]
    if not few_rows_fits(m, k, n, group_size, x.dtype):
        raise ValueError(
            f"the few-rows kernel takes 1 to {FEW_ROWS_MAX} rows of bf16/fp16, K and group size "
            f"multiples of {INPUT_BLOCK} and N of 16; got {m} rows of {x.dtype}, K {k}, N {n}, "
            f"group {group_size}"
        )
    if perm is not None and m > 1:
        # Gathered in the kernel, act-order's x cost 2.7x the plain kernel's time at 8 rows
        # (H200, a Llama-3-8B layer's four projections: 194 against 72 µs); one gather of the
        # whole activation first is a single small launch (94 µs). One row gathers in-kernel
        # (81 µs against 85 with the launch).
        x, perm = x.index_select(1, perm), None
    if x.data_ptr() % 16 or x.stride(0) % 8:
        # x is read in 16-byte octets; unaligned, Triton would load it in a layout of its own.
        x = x.clone(memory_format=torch.contiguous_format)
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    epilogue = math.gcd(group_size, EPILOGUE_INPUTS)  # 32, 64 or 128: whole blocks of one group
    tiles_n = triton.cdiv(n, 32 * config.warps)
    token_groups = triton.cdiv(m, TOKEN_GROUP)
    split, k_per_split = split_k(k, epilogue, tiles_n, config.waves, x.device)
    if split > 1 and tiles_n * token_groups > SPLIT_COUNTERS:
        raise ValueError(f"{n} output features need more than {SPLIT_COUNTERS} column tiles")
    parts = torch.empty(split * m * n if split > 1 else 0, device=x.device, dtype=torch.float32)
    pdl, launch = launch_options(x.device)
    _w4a16_few_rows_kernel[(token_groups, tiles_n, split)](
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
        x.stride(0),
        x.stride(0) // 2,  # in int32 pairs, so Triton sees the rows 16-byte aligned
        y.stride(0),
        qweight.stride(0),
        scales.stride(0),
        GROUP_SIZE=group_size,
        STRIPS=config.warps,
        EPILOGUE=epilogue,
        SPLIT_K=split > 1,
        HAS_PERM=perm is not None,
        ONE_ROW=m == 1,
        IS_FP16=x.dtype == torch.float16,
        # The magic exponents' values: 1024 + q is exact in fp16, 128 + q in bf16.
        OFFSET=1024.0 if x.dtype == torch.float16 else 128.0,
        EMULATE=os.environ.get("TRITON_INTERPRET") == "1",
        PDL=pdl,
        num_warps=config.warps,
        num_stages=1,
        maxnreg=MAX_REGISTERS,
        **launch,
    )
    return y
