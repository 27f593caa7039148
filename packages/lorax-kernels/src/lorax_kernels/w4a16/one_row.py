"""Triton w4a16 GEMV for one row (batch-1 decode) on the tensor cores: ``x[perm] @ W``, W 4-bit.

One row makes one multiply-add per weight. On the CUDA cores each weight also costs its unpacking
into a float: the kernel this one replaced spent 5.4 sm_90 instructions a weight and read the
weights at 25-40% of copy bandwidth. Here the weights are the A operand of ``mma.sync
m16n8k16`` (16 output columns x 16 inputs) and x is B, the same x in all eight of B's columns:
unpacking is about one instruction per weight pair and the multiply-adds are the tensor cores'.

Lane ``(g, t)`` of a warp (``g = lane // 4``, ``t = lane % 4``, the mma's fragment coordinates)
loads, per 32-input block and 32-column strip, the packed words of word row ``t`` (inputs
``8 t .. 8 t + 7``) for columns ``4 g .. 4 g + 3``: one 16-byte load; the warp's loads cover
four 128-byte rows. The contraction order inside an mma is free, so the lane's eight nibbles are
laid out as its fragment slots directly:

- ``(w >> 4 s) & 0x000F000F | 0x43004300`` is the bf16 pair ``(128 + q_s, 128 + q_{s+4})`` (fp16:
  ``0x64006400``, 1024 + q), exact, one LOP3 (and a shift) per pair; s = 0, 1 fill the first
  mma's slots, s = 2, 3 the second's. Columns ``4 g, 4 g + 1`` are tile rows ``g, g + 8`` of
  one mma, ``4 g + 2, 4 g + 3`` of another.
- B takes x in the same order: ``x[8 t + s]`` with ``x[8 t + s + 4]``, one PRMT per pair from
  the lane's own 16-byte load of ``x[8 t .. 8 t + 7]`` (through ``perm`` for act-order).
- The offset is removed once per group: ``sum (q - z) x = D - (OFFSET + z) X`` with D the mma
  sum of ``(OFFSET + q) x`` and X the group's sum of x, itself an mma of ones with the same B.

Every lane ends a group with D of its four columns (the tensor cores sum over the lanes), scales
it, and the lanes with ``t = 0`` write. K is split across programs until ``waves`` programs per
SM stream the weight; the last program of a column tile to arrive sums the fp32 partials in split
order (``split_k_sum``).

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
from lorax_kernels.split_k_sum import last_split_total

INPUT_BLOCK = 32  # inputs per block: the lanes' word rows t = 0..3 of eight inputs each
# Most inputs between two scale-and-zero epilogues: long groups (up to one over all of K) are
# taken in steps of this many, which is also the unit K is split in.
EPILOGUE_INPUTS = 128


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
    """PTX: one lane's 32-input block. Outputs $0..$3: D of the lane's four columns; inputs $4..$7
    the four words, $8..$11 ``x[8 t .. 8 t + 7]`` as pairs, $12..$15 D so far."""
    lines = [
        "{",
        ".reg .b32 b0, b1, b2, b3, u, p<16>;",
        ".reg .f32 e<4>, f<4>;",
        *_b_pairs(8),
    ]
    # p[4 s + c]: word c's nibbles s and s + 4 as the pair (OFFSET + q_s, OFFSET + q_{s+4}).
    for s in range(4):
        for c in range(4):
            src = f"${4 + c}"
            if s:
                lines.append(f"shr.u32 u, {src}, {4 * s};")
                src = "u"
            lines.append(f"lop3.b32 p{4 * s + c}, {src}, 0x000F000F, {magic:#x}, 0xEA;")
    mma = f"mma.sync.aligned.m16n8k16.row.col.f32.{kind}.{kind}.f32"
    # Tile rows g and g + 8 are columns 4g + 2h and 4g + 2h + 1; D's columns are all alike (B's
    # are), so its slots 1 and 3 repeat 0 and 2.
    for h, acc in ((0, "e"), (1, "f")):
        c0, c1 = 2 * h, 2 * h + 1
        lines.append(
            f"{mma} {{{acc}0, {acc}1, {acc}2, {acc}3}}, {{p{c0}, p{c1}, p{4 + c0}, p{4 + c1}}}, "
            f"{{b0, b1}}, {{${12 + c0}, ${12 + c0}, ${12 + c1}, ${12 + c1}}};"
        )
        lines.append(
            f"{mma} {{${c0}, {acc}1, ${c1}, {acc}3}}, {{p{8 + c0}, p{8 + c1}, p{12 + c0}, "
            f"p{12 + c1}}}, {{b2, b3}}, {{{acc}0, {acc}1, {acc}2, {acc}3}};"
        )
    lines.append("}")
    return "\n".join(lines)


def _x_sum_block(kind: str, one: int) -> str:
    """PTX: the block's sum of x added to $8, into $0..$3 (alike); $4..$7 x as above."""
    mma = f"mma.sync.aligned.m16n8k16.row.col.f32.{kind}.{kind}.f32"
    return "\n".join(
        [
            "{",
            ".reg .b32 b0, b1, b2, b3, one;",
            ".reg .f32 e<4>;",
            f"mov.b32 one, {one:#x};",
            *_b_pairs(4),
            f"{mma} {{e0, e1, e2, e3}}, {{one, one, one, one}}, {{b0, b1}}, {{$8, $8, $8, $8}};",
            f"{mma} {{$0, e1, e2, e3}}, {{one, one, one, one}}, {{b2, b3}}, {{e0, e1, e2, e3}};",
            "mov.b32 $1, $0;",
            "mov.b32 $2, $0;",
            "mov.b32 $3, $0;",
            "}",
        ]
    )


_MMA_OPERANDS = tl.constexpr("=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f")
_X_SUM_OPERANDS = tl.constexpr("=f,=f,=f,=f,r,r,r,r,f,f,f,f")
_BF16_MMA = tl.constexpr(_mma_block("bf16", 0x43004300))
_F16_MMA = tl.constexpr(_mma_block("f16", 0x64006400))
_BF16_X_SUM = tl.constexpr(_x_sum_block("bf16", 0x3F803F80))
_F16_X_SUM = tl.constexpr(_x_sum_block("f16", 0x3C003C00))


@dataclass(slots=True, frozen=True)
class OneRowConfig:
    """The one-row kernel's tiling: ``warps`` per program, each streaming one 32-column strip (with
    two strips a warp, Triton 3.6 gave act-order's gathered x a layout other than the words', and
    the mma blocks the wrong lanes); K split until about ``waves`` programs per SM."""

    warps: int
    waves: int

    def __post_init__(self) -> None:
        if self.warps <= 0 or self.warps & (self.warps - 1):
            raise ValueError(f"warps must be a power of two, got {self.warps}")
        if self.waves < 1:
            raise ValueError("waves must be >= 1")


def one_row_fits(k: int, n: int, group_size: int, dtype: torch.dtype) -> bool:
    """Whether the one-row kernel serves this weight: bf16 / fp16 x, K and the group size whole
    32-input blocks, N a multiple of 16 (rows of packed words 16-byte aligned: Triton then loads
    them four words a lane, the layout the mma blocks take)."""
    return (
        dtype in (torch.bfloat16, torch.float16)
        and k % INPUT_BLOCK == 0
        and group_size % INPUT_BLOCK == 0
        and n % 16 == 0
    )


@triton.jit
def _lane_group_sum(v, ROWS: tl.constexpr):
    """``[ROWS, 4]``: each row's sum over the four lanes t of its group g (what an mma sums)."""
    total = tl.sum(tl.reshape(v, (ROWS // 4, 4, 4)), axis=1)  # [ROWS // 4, 4]
    return tl.reshape(tl.broadcast_to(total[:, None, :], (ROWS // 4, 4, 4)), (ROWS, 4))


@triton.jit
def _emulated_block(x_ptr, perm_ptr, words, k0, t, HAS_PERM: tl.constexpr, OFFSET: tl.constexpr):
    """The interpreter's D and X of one 32-input block, both ``[ROWS, 4]``: what the two mma
    blocks compute, by tensor arithmetic."""
    ROWS: tl.constexpr = words.shape[0]
    d = tl.zeros(words.shape, dtype=tl.float32)
    x_sum = tl.zeros(words.shape, dtype=tl.float32)
    for j in tl.static_range(8):
        kj = k0 + 8 * t + j + 0 * words  # [ROWS, 4]: input 8 t + j of each lane
        if HAS_PERM:
            kj = tl.load(perm_ptr + kj)
        xj = tl.load(x_ptr + kj).to(tl.float32)
        qj = ((words >> (4 * j)) & 0xF).to(tl.float32)
        d += (OFFSET + qj) * xj
        x_sum += xj
    return _lane_group_sum(d, ROWS), _lane_group_sum(x_sum, ROWS)


@triton.jit
def _mma_blocks(words, xr, d, x_sum, IS_FP16: tl.constexpr):
    """D and X of one 32-input block added to ``d`` and ``x_sum`` (the two PTX blocks above)."""
    if IS_FP16:
        d = tl.inline_asm_elementwise(_F16_MMA, _MMA_OPERANDS, [words, xr, d], tl.float32, True, 4)
        x_sum = tl.inline_asm_elementwise(
            _F16_X_SUM, _X_SUM_OPERANDS, [xr, x_sum], tl.float32, True, 4
        )
    else:
        d = tl.inline_asm_elementwise(_BF16_MMA, _MMA_OPERANDS, [words, xr, d], tl.float32, True, 4)
        x_sum = tl.inline_asm_elementwise(
            _BF16_X_SUM, _X_SUM_OPERANDS, [xr, x_sum], tl.float32, True, 4
        )
    return d, x_sum


@triton.jit
def _w4a16_one_row_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    z_ptr,
    perm_ptr,
    y_ptr,
    part_ptr,
    count_ptr,
    N,
    K,
    k_per_split,
    num_splits,
    stride_qk,
    stride_sg,
    GROUP_SIZE: tl.constexpr,
    STRIPS: tl.constexpr,  # 32-column strips: one per warp
    EPILOGUE: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_PERM: tl.constexpr,
    IS_FP16: tl.constexpr,
    OFFSET: tl.constexpr,
    EMULATE: tl.constexpr,
):
    # Tensors are [lane rows, c]: row R is lane R % 32 of warp R // 32 (the warp's strip) and
    # holds c = 0..3 (one 16-byte load). The only non-contiguous dimension is the rows, so
    # Triton lays lanes out along them whatever its tie-breaking between dimensions (a 4D
    # [strip, g, t, c] form got lanes in g + 8 t order from Triton 3.6); the asm relies on it.
    ROWS: tl.constexpr = 32 * STRIPS  # also the program's columns: 4 a lane, over 4 lanes t
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    lane_row = tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
    c = tl.arange(0, 4)[None, :]  # [1, 4]
    t = lane_row % 4  # the lane's word row and x octet
    # [ROWS, 4]: columns 4 g .. 4 g + 3 of the lane's strip (32 s + 4 g = 4 (R // 4)).
    rn = pid_n * ROWS + 4 * (lane_row // 4) + c
    n_mask = rn < N
    lane_pair = 4 * t + c  # the lane's x pair c: inputs 8 t + 2 c and 8 t + 2 c + 1
    x_pairs = x_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
    y = tl.zeros((ROWS, 4), dtype=tl.float32)
    k_begin = split * k_per_split
    for e0 in range(k_begin, tl.minimum(k_begin + k_per_split, K), EPILOGUE):
        d = tl.zeros((ROWS, 4), dtype=tl.float32)
        x_sum = tl.zeros((ROWS, 4), dtype=tl.float32)
        for b in tl.static_range(EPILOGUE // 32):
            k0 = e0 + 32 * b
            words = tl.load(qw_ptr + (k0 // 8 + t) * stride_qk + rn, mask=n_mask, other=0)
            if EMULATE:
                d_block, x_block = _emulated_block(x_ptr, perm_ptr, words, k0, t, HAS_PERM, OFFSET)
                d += d_block
                x_sum += x_block
            else:
                if HAS_PERM:
                    lo = tl.load(x_ptr + tl.load(perm_ptr + k0 + 2 * lane_pair))
                    hi = tl.load(x_ptr + tl.load(perm_ptr + k0 + 2 * lane_pair + 1))
                    lo = lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
                    xr = lo | (hi.to(tl.int16, bitcast=True).to(tl.int32) << 16)
                else:
                    xr = tl.load(x_pairs + k0 // 2 + lane_pair)  # x[8 t .. 8 t + 7] in pairs
                d, x_sum = _mma_blocks(words, xr, d, x_sum, IS_FP16)
        gs = (e0 // GROUP_SIZE) * stride_sg + rn
        s = tl.load(s_ptr + gs, mask=n_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + gs, mask=n_mask, other=0.0).to(tl.float32)
        y += s * (d - (OFFSET + z) * x_sum)
    out_mask = n_mask & (t == 0)
    if not SPLIT_K:
        tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=out_mask)
    else:
        last, total = last_split_total(
            y, part_ptr + rn, N, split, num_splits, count_ptr + pid_n, out_mask
        )
        if last:
            tl.store(y_ptr + rn, total.to(y_ptr.dtype.element_ty), mask=out_mask)


def w4a16_one_row(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    perm: torch.Tensor | None,
    group_size: int,
    config: OneRowConfig,
) -> torch.Tensor:
    """``x[:, perm] @ W`` for x ``[1, K]`` (validated arguments, as ``w4a16.w4a16_matmul``) where
    ``one_row_fits``."""
    k = x.shape[1]
    n = qweight.shape[1]
    if x.shape[0] != 1:
        raise ValueError(f"the one-row kernel takes one row, got {x.shape[0]}")
    if not one_row_fits(k, n, group_size, x.dtype):
        raise ValueError(
            f"the one-row kernel takes bf16/fp16, K and group size multiples of {INPUT_BLOCK} and "
            f"N of 16; got {x.dtype}, K {k}, N {n}, group {group_size}"
        )
    if x.data_ptr() % 16:
        # x is read in 16-byte octets; unaligned, Triton would load it in a layout of its own.
        x = x.clone()
    y = torch.empty(1, n, device=x.device, dtype=x.dtype)
    epilogue = math.gcd(group_size, EPILOGUE_INPUTS)  # 32, 64 or 128: whole blocks of one group
    tiles_n = triton.cdiv(n, 32 * config.warps)
    split, k_per_split = split_k(k, epilogue, tiles_n, config.waves, x.device)
    if split > 1 and tiles_n > SPLIT_COUNTERS:
        raise ValueError(f"{n} output features need more than {SPLIT_COUNTERS} column tiles")
    parts = torch.empty(split * n if split > 1 else 0, device=x.device, dtype=torch.float32)
    _w4a16_one_row_kernel[(tiles_n, split)](
        x,
        qweight,
        scales,
        zeros,
        perm if perm is not None else qweight,  # never read without HAS_PERM
        y,
        parts,
        split_counters(x.device),
        n,
        k,
        k_per_split,
        split,
        qweight.stride(0),
        scales.stride(0),
        GROUP_SIZE=group_size,
        STRIPS=config.warps,
        EPILOGUE=epilogue,
        SPLIT_K=split > 1,
        HAS_PERM=perm is not None,
        IS_FP16=x.dtype == torch.float16,
        # The magic exponents' values: 1024 + q is exact in fp16, 128 + q in bf16.
        OFFSET=1024.0 if x.dtype == torch.float16 else 128.0,
        EMULATE=os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=config.warps,
        num_stages=1,
    )
    return y
