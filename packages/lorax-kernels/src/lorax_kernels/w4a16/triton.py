"""Triton w4a16 GEMM: ``x @ W`` with W dequantized from 4-bit in registers, tile by tile.

One program computes a ``[BLOCK_M, BLOCK_N]`` tile of the output. Per ``BLOCK_K`` step it loads
the packed words of those input rows (each word is read by the 8 rows it holds; they hit the same
cache line), shifts out each row's nibble, looks up the row's group through ``g_idx`` (so GPTQ's
act-order costs nothing extra), and dequantizes before ``tl.dot``. The weight thus crosses memory
once at 4 bits, which is what makes decode (small M, memory bound) faster than 16-bit weights.
The same kernel serves decode (M = 1, the tile rows past M are masked) and prefill.

Small batches (M <= 16, decode) have too few output tiles to keep the GPU busy, so they also split
K (GEMV-style): each program reduces one range of input rows into an fp32 partial, and the last
program of a column tile to arrive (an atomic counter) sums the partials in split order and writes
the output. The sum order is fixed, so results do not depend on which program finishes last.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorax_kernels.device import num_sms

# Up to this many rows (decode batches) the K dimension is split across programs.
GEMV_MAX_ROWS = 16


@triton.jit
def _w4a16_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    z_ptr,
    g_ptr,
    y_ptr,
    part_ptr,
    count_ptr,
    M,
    N,
    K,
    k_per_split,
    stride_xm,
    stride_qk,
    stride_sg,
    stride_ym,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,
    IS_FP32: tl.constexpr,
):
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    m_mask = rm < M
    n_mask = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = split * k_per_split
    for k0 in range(k_begin, tl.minimum(k_begin + k_per_split, K), BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_mask = rk < K
        x = tl.load(
            x_ptr + rm[:, None] * stride_xm + rk[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        kn_mask = k_mask[:, None] & n_mask[None, :]
        words = tl.load(
            qw_ptr + (rk // 8)[:, None] * stride_qk + rn[None, :], mask=kn_mask, other=0
        )
        q = (words >> ((rk % 8) * 4)[:, None]) & 0xF  # [BLOCK_K, BLOCK_N]
        g = tl.load(g_ptr + rk, mask=k_mask, other=0)  # [BLOCK_K]
        s = tl.load(s_ptr + g[:, None] * stride_sg + rn[None, :], mask=kn_mask, other=0.0)
        z = tl.load(z_ptr + g[:, None] * stride_sg + rn[None, :], mask=kn_mask, other=0.0)
        w = (q.to(tl.float32) - z.to(tl.float32)) * s.to(tl.float32)  # [BLOCK_K, BLOCK_N]
        if IS_FP32:
            acc += tl.dot(x, w, input_precision="ieee")
        else:
            # 16-bit activations: round the weight to their dtype and use the tensor cores.
            acc += tl.dot(x, w.to(x.dtype))
    out_mask = m_mask[:, None] & n_mask[None, :]
    y_ptrs = y_ptr + rm[:, None] * stride_ym + rn[None, :]
    if SPLIT == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)
    else:
        # [SPLIT, M, N] fp32 partials (this path runs with one row tile, so rm < M indexes them).
        part = part_ptr + rm[:, None] * N + rn[None, :]
        tl.store(part + split * M * N, acc, mask=out_mask)
        tl.debug_barrier()  # every thread's partial is stored before the release below
        if tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel") == SPLIT - 1:
            tl.debug_barrier()
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for i in range(SPLIT):  # fixed order; .cg reads L2, where the other SMs wrote
                total += tl.load(part + i * M * N, mask=out_mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=out_mask)


def w4a16_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    g_idx: torch.Tensor,
) -> torch.Tensor:
    """Triton version of ``reference.w4a16_matmul_ref`` (same arguments, already validated)."""
    m, k = x.shape
    n = qweight.shape[1]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    if x.stride(1) != 1:
        x = x.contiguous()
    if m <= GEMV_MAX_ROWS:
        # Decode: one 16-row tile (tl.dot's minimum); K split until ~4 programs per SM stream the
        # weight, each over whole BLOCK_K steps. 64 x 64 weight tiles over 8 warps compile to 128
        # registers (sm_90) without spills; 128-row K tiles spill.
        block_m, block_n, block_k, warps = 16, 64, 64, 8
        tiles_n = triton.cdiv(n, block_n)
        steps = triton.cdiv(k, block_k)
        split = max(1, min(steps, 4 * num_sms(x.device) // tiles_n))
        k_per_split = triton.cdiv(steps, split) * block_k
        split = triton.cdiv(k, k_per_split)
    else:
        # Prefill: square-ish tiles, whole K per program.
        block_m, block_n, block_k, warps = (32 if m <= 32 else 64), 64, 32, 4
        split, k_per_split = 1, k
    # [split, M, N] fp32 partials and one arrival counter per column tile (split > 1 only).
    parts = torch.empty(split * m * n if split > 1 else 0, device=x.device, dtype=torch.float32)
    counts = torch.zeros(
        triton.cdiv(n, block_n) if split > 1 else 0, device=x.device, dtype=torch.int32
    )
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split)
    _w4a16_kernel[grid](
        x,
        qweight,
        scales,
        zeros,
        g_idx,
        y,
        parts,
        counts,
        m,
        n,
        k,
        k_per_split,
        x.stride(0),
        qweight.stride(0),
        scales.stride(0),
        y.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        SPLIT=split,
        IS_FP32=x.dtype == torch.float32,
        num_warps=warps,
    )
    return y
